"""Stage 1: image-level BYOL pre-training (``orl-fast pretrain``).

BYOL is ORL with the image term alone: the model is :class:`orl_fast.core.models.ORL` with loss
weights (1, 0, 0) (its modules and checkpoint keys are BYOL's: ``online.*``, ``predictor.*``,
``target.*``), fed by Stage 3's sample plans without patches (the two global views), rendered by
the same loaders (DALI on the GPU, torch on the CPU: ``orl.loader``). ``label.mode=opera`` adds
the class head on the two views; ``label.mode=scan`` (with ``pairs``: a Stage 2 output of a
first Stage 1 model) the neighbour term.
"""

from __future__ import annotations

from loaders.orl_samples import SampleBuilder
from orl_fast.core.defaults import Config
from orl_fast.core.models import IMAGE_ONLY, init_backbone_
from orl_fast.training import runs
from orl_fast.training.runs import label_model

STAGE = "stage1"


def prepare(cfg: Config) -> runs.Prepared:
    """Stage 1's start-up checks (the shards, the batch, the initial weights, OUT's checkpoint);
    nothing is written. ``model.init_weights`` is loaded (a resumed run then loads its own
    checkpoint)."""
    cfg.require("data", "out")
    builder = SampleBuilder(cfg, IMAGE_ONLY)
    model = label_model(cfg, builder, IMAGE_ONLY)
    if cfg.model.init_weights:
        init_backbone_(model, cfg.model.init_weights, cfg.model)
    return runs.prepare(cfg, STAGE, builder, model)


def run(cfg: Config, lock_out: bool = True) -> str:
    """Train Stage 1 in this process (alone, or as one torchrun / Ray Train rank); ``lock_out``:
    take OUT's lock (False: the launcher holds it)."""
    return runs.run_stage(cfg, STAGE, prepare, lock_out)

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
from orl_fast.core.distributed import init_runtime, shutdown
from orl_fast.core.models import IMAGE_ONLY
from orl_fast.training.runs import (
    choose_loader,
    label_model,
    seed_everything,
    train,
    write_run_config,
)


def run(cfg: Config) -> str:
    """Train Stage 1 in this process (alone, or as one torchrun / Ray Train rank)."""
    cfg.require("data", "out")
    rt = init_runtime(cfg.train.device)
    try:
        seed_everything(cfg)
        builder = SampleBuilder(cfg, IMAGE_ONLY)
        kind = choose_loader(cfg, rt.device)
        write_run_config(cfg, rt)
        return train(cfg, label_model(cfg, builder, IMAGE_ONLY), builder, rt, "stage1", kind)
    finally:
        shutdown()

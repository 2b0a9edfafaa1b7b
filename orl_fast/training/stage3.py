"""Stage 3: ORL object-level pre-training (``orl-fast train``).

Wiring only: the sample builder (:mod:`loaders.orl_samples`) plans every sample, a loader renders
the plans (DALI on the GPU, :mod:`loaders.dali_loader`; or torch + torchvision on the CPU,
:mod:`loaders.orl_torch`), :class:`orl_fast.core.models.ORL` computes the loss and
:func:`orl_fast.training.engine.fit` trains, checkpoints and resumes, exactly as for Stage 1
(:mod:`orl_fast.training.runs`).
"""

from __future__ import annotations

from loaders.orl_samples import SampleBuilder
from orl_fast.core import checkpoint
from orl_fast.core.config import ConfigError
from orl_fast.core.defaults import Config
from orl_fast.core.models import ORL, init_backbone_
from orl_fast.training import runs
from orl_fast.training.engine import input_paths
from orl_fast.training.runs import check_class_head, label_model

STAGE = "stage3"


def init_from_stage1(model: ORL, path: str) -> None:
    """Online, target and image predictor from a Stage 1 (BYOL) checkpoint (and OPERA's class
    head when it has one); the intra- and inter-RoI predictors keep their fresh initialisation."""
    check_class_head(model, path, "ckpt")
    state = checkpoint.load(path)["model"]
    own = model.state_dict()
    missing = [k for k in own if k.startswith(("online.", "target.")) and k not in state]
    if missing:
        raise ConfigError(f"ckpt: {path} is not a Stage 1 checkpoint of this model "
                          f"(no {missing[0]}, {len(missing)} weights missing)")
    shapes = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if shapes:
        raise ConfigError(f"ckpt: {path} is a Stage 1 checkpoint of another model (size "
                          f"mismatch of {len(shapes)} weights, e.g. {shapes[0]}: "
                          f"{tuple(state[shapes[0]].shape)} there, {tuple(own[shapes[0]].shape)} "
                          "here; model.* must be the Stage 1 run's)")
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


def prepare(cfg: Config) -> runs.Prepared:
    """Stage 3's start-up checks (the shards, the pairs and that they were mined from these
    shards, the Stage 1 checkpoint against the model, the batch, OUT's checkpoint); nothing is
    written. The Stage 1 weights are loaded (a resumed run then loads its own checkpoint)."""
    cfg.require("data", "out")
    if cfg.orl.init == "stage1":
        cfg.require("ckpt")
        if cfg.model.init_weights:
            raise ConfigError("model.init_weights: not with orl.init=stage1 (the Stage 1 "
                              "checkpoint holds the weights)")
    builder = SampleBuilder(cfg)
    model = label_model(cfg, builder, cfg.orl.loss_weights)
    inputs = {}
    if cfg.orl.init == "stage1":
        init_from_stage1(model, cfg.ckpt)
        inputs["ckpt"] = input_paths(cfg.to_dict())["ckpt"]
    elif cfg.model.init_weights:
        init_backbone_(model, cfg.model.init_weights, cfg.model)
    return runs.prepare(cfg, STAGE, builder, model, inputs)


def announce(p: runs.Prepared, kind: str) -> None:
    cfg, b = p.cfg, p.builder
    records = f", {len(b.pairs)} pair records" if b.pairs is not None else ""
    labels = (f", labels {cfg.label.mode} ({b.num_classes} classes)" if b.labels is not None
              else "")
    print(f"[stage3] {len(b)} images{records}, loader {kind}, patches {cfg.orl.patches}, boxes "
          f"{cfg.orl.boxes}, loss weights {cfg.orl.loss_weights}, K {b.knn_k or '-'}, N "
          f"{b.topn_frac or '-'}, init {cfg.orl.init}{labels}")


def run(cfg: Config, lock_out: bool = True) -> str:
    """Train Stage 3 in this process (alone, or as one torchrun / Ray Train rank); ``lock_out``:
    take OUT's lock (False: the launcher holds it)."""
    return runs.run_stage(cfg, STAGE, prepare, lock_out, announce)

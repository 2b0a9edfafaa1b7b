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
from orl_fast.core.distributed import init_runtime, shutdown
from orl_fast.core.models import ORL
from orl_fast.training.runs import (
    check_class_head,
    choose_loader,
    label_model,
    seed_everything,
    train,
    write_run_config,
)


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
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


def run(cfg: Config) -> str:
    """Train Stage 3 in this process (alone, or as one torchrun / Ray Train rank)."""
    cfg.require("data", "out")
    if cfg.orl.init == "stage1":
        cfg.require("ckpt")
    rt = init_runtime(cfg.train.device)
    try:
        seed_everything(cfg)
        builder = SampleBuilder(cfg)
        kind = choose_loader(cfg, rt.device)
        write_run_config(cfg, rt)
        model = label_model(cfg, builder, cfg.orl.loss_weights)
        if cfg.orl.init == "stage1":
            init_from_stage1(model, cfg.ckpt)  # a resumed run then loads its own checkpoint
        if rt.is_main:
            records = f", {len(builder.pairs)} pair records" if builder.pairs is not None else ""
            print(f"[stage3] {len(builder)} images{records}, loader {kind}, patches "
                  f"{cfg.orl.patches}, boxes {cfg.orl.boxes}, loss weights {cfg.orl.loss_weights}, "
                  f"K {builder.knn_k or '-'}, N {builder.topn_frac or '-'}, init {cfg.orl.init}"
                  + (f", labels {cfg.label.mode} ({builder.num_classes} classes)"
                     if builder.labels is not None else ""))
        return train(cfg, model, builder, rt, "stage3", kind)
    finally:
        shutdown()

"""Stage 3: ORL object-level pre-training (``orl-fast train``).

Wiring only: the sample builder (:mod:`loaders.orl_samples`) plans every sample, a loader renders
the plans (DALI on the GPU, :mod:`loaders.dali_loader`; or torch + torchvision on the CPU,
:mod:`loaders.orl_torch`), :class:`orl_fast.models.ORL` computes the loss and
:func:`orl_fast.engine.fit` trains, checkpoints and resumes, exactly as for Stage 1.
"""

from __future__ import annotations

import torch

from loaders.dali_loader import DALIBatches, dali_available, import_dali
from loaders.orl_samples import SampleBuilder
from loaders.orl_torch import ORLDataset
from loaders.sampling import StepBatchSampler
from loaders.torch_loader import make_loader
from orl_fast import checkpoint
from orl_fast.config import Config, ConfigError, load_config
from orl_fast.distributed import Runtime, init_runtime, shutdown
from orl_fast.engine import fit
from orl_fast.models import ORL
from orl_fast.stage1 import require, seed_everything, views_to_device, write_run_config


def choose_loader(cfg: Config, device: torch.device) -> str:
    """The loader for ``orl.loader`` on ``device``: dali, or torch (auto: DALI on a CUDA device
    when it is installed, else torch; dali without DALI installed raises, naming the extra)."""
    if cfg.orl.loader == "dali":
        import_dali()
        return "dali"
    if cfg.orl.loader == "auto" and device.type == "cuda" and dali_available():
        return "dali"
    return "torch"


def make_loader_fn(cfg: Config, builder: SampleBuilder, rt: Runtime, kind: str):
    """``loader_fn(start, stop)`` for :func:`fit`: this rank's batches of those steps."""
    t = cfg.train

    def loader_fn(start: int, stop: int):
        sampler = StepBatchSampler(len(builder), t.batch_size, rt.rank, rt.world_size, t.seed,
                                   start, stop)
        if kind == "dali":
            device_id = rt.device.index if rt.device.type == "cuda" else None
            return DALIBatches(builder, sampler, device_id, num_threads=t.num_workers,
                               py_workers=t.num_workers, prefetch=t.prefetch_factor)
        return make_loader(ORLDataset(builder), sampler, t.num_workers,
                           pin_memory=rt.device.type == "cuda", prefetch_factor=t.prefetch_factor)

    return loader_fn


def frames_to_device(cfg: Config):
    """Batch of uint8 [B, F, 3, H, W] groups -> the model's inputs, one normalised tensor a frame."""
    views = views_to_device(cfg)

    def prepare(batch, device: torch.device) -> tuple[torch.Tensor, ...]:
        return views(tuple(x[:, i] for x in batch for i in range(x.shape[1])), device)

    return prepare


def init_from_stage1(model: ORL, path: str) -> None:
    """Online, target and image predictor from a Stage 1 (BYOL) checkpoint; the intra- and
    inter-RoI predictors keep their fresh initialisation."""
    state = checkpoint.load(path)["model"]
    own = model.state_dict()
    missing = [k for k in own if k.startswith(("online.", "target.")) and k not in state]
    if missing:
        raise ConfigError(f"ckpt: {path} is not a Stage 1 checkpoint of this model "
                          f"(no {missing[0]}, {len(missing)} weights missing)")
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


def run(cfg: Config) -> str:
    require(cfg, "data", "out")
    if cfg.orl.init == "stage1":
        require(cfg, "ckpt")
    if cfg.train.launcher == "ray":
        from orl_fast import ray_train

        return ray_train.run(cfg, "stage3")
    rt = init_runtime(cfg.train.device)
    try:
        seed_everything(cfg)
        builder = SampleBuilder(cfg)
        kind = choose_loader(cfg, rt.device)
        write_run_config(cfg, rt)
        model = ORL(cfg.model, cfg.orl.loss_weights)
        if cfg.orl.init == "stage1":
            init_from_stage1(model, cfg.ckpt)  # a resumed run then loads its own checkpoint
        if rt.is_main:
            records = f", {len(builder.pairs)} pair records" if builder.pairs is not None else ""
            print(f"[stage3] {len(builder)} images{records}, loader {kind}, patches "
                  f"{cfg.orl.patches}, boxes {cfg.orl.boxes}, loss weights {cfg.orl.loss_weights}, "
                  f"init {cfg.orl.init}")
        return fit(cfg, model, len(builder), make_loader_fn(cfg, builder, rt, kind),
                   frames_to_device(cfg), rt, "stage3")
    finally:
        shutdown()


def demo_step(shards: str, mined: str, out: str, stage1_ckpt: str = "",
              overrides: tuple[str, ...] = ()) -> str:
    """A short Stage 3 for ``orl-fast demo`` (after Stage 1 and mining); returns the checkpoint."""
    init = ["orl.init=stage1", f"ckpt={stage1_ckpt}"] if stage1_ckpt else []
    cfg = load_config("small", [
        f"data={shards}", f"pairs={mined}", f"out={out}", *init,
        "aug.crop_size=64", "orl.patch_size=32", "train.batch_size=16", "train.epochs=1",
        "train.num_workers=2", "train.ckpt_every_steps=1000", *overrides,
    ])
    return run(cfg)

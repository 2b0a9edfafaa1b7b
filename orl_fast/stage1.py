"""Stage 1: image-level BYOL pre-training (``orl-fast pretrain``)."""

from __future__ import annotations

import random

import numpy as np
import torch

from loaders.sampling import StepBatchSampler
from loaders.torch_loader import ImageViewsDataset, make_loader
from orl_fast import storage
from orl_fast.augment import TwoViews, normalize
from orl_fast.config import Config, ConfigError
from orl_fast.distributed import Runtime, init_runtime, shutdown
from orl_fast.engine import fit
from orl_fast.models import BYOL


def require(cfg: Config, *fields: str) -> None:
    for f in fields:
        if not getattr(cfg, f):
            raise ConfigError(f"{f}: required (pass {f}=PATH)")


def seed_everything(cfg: Config) -> None:
    torch.manual_seed(cfg.train.seed)
    np.random.seed(cfg.train.seed % 2**32)
    random.seed(cfg.train.seed)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


def write_run_config(cfg: Config, rt: Runtime) -> None:
    if rt.is_main:
        storage.makedirs(cfg.out)
        storage.atomic_write(storage.join(cfg.out, "config.yaml"), cfg.to_yaml().encode())


def views_to_device(cfg: Config):
    """Batch of uint8 views -> normalised float tensors on the device (channels_last on CUDA)."""
    def prepare(batch, device: torch.device) -> tuple[torch.Tensor, ...]:
        cl = cfg.train.channels_last and device.type == "cuda"
        return tuple(normalize(v.to(device, non_blocking=True), cfg.aug.mean, cfg.aug.std, cl)
                     for v in batch)
    return prepare


def run(cfg: Config) -> str:
    require(cfg, "data", "out")
    if cfg.train.launcher == "ray":
        from orl_fast import ray_train

        return ray_train.run(cfg, "stage1")
    rt = init_runtime(cfg.train.device)
    try:
        seed_everything(cfg)
        write_run_config(cfg, rt)
        dataset = ImageViewsDataset(cfg.data, TwoViews(cfg.aug), cfg.train.seed)
        model = BYOL(cfg.model)

        def loader_fn(start: int, stop: int):
            sampler = StepBatchSampler(len(dataset), cfg.train.batch_size, rt.rank, rt.world_size,
                                       cfg.train.seed, start, stop)
            return make_loader(dataset, sampler, cfg.train.num_workers,
                               pin_memory=rt.device.type == "cuda",
                               prefetch_factor=cfg.train.prefetch_factor)

        return fit(cfg, model, len(dataset), loader_fn, views_to_device(cfg), rt, "stage1")
    finally:
        shutdown()

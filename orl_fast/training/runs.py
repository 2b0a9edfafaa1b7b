"""What both stages do around the loop: seeds, the start-up checks and the run's config file, the
loader (DALI or torch) over the sample plans, and batches -> the model's named inputs.

A stage first checks everything it reads (:func:`prepare`: the shards, the pairs, the checkpoints,
the batch against the data set, the checkpoint it would resume and its config) and only then
writes into OUT (``config.yaml``, checkpoints, logs), holding OUT's lock (:func:`writing`).

Stage 1 and Stage 3 share all of it: the same sample plans (:mod:`loaders.orl_samples`), rendered
by the same loaders (:mod:`loaders.dali_loader` on the GPU, :mod:`loaders.orl_torch` on the
CPU), into the same model (:class:`orl_fast.core.models.ORL`; Stage 1 with the image term only),
trained by the same loop (:func:`orl_fast.training.engine.fit`).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from loaders.augment import normalize
from loaders.dali_loader import DALIBatches, dali_available, import_dali
from loaders.orl_samples import SampleBuilder
from loaders.orl_torch import ORLDataset
from loaders.sampling import StepBatchSampler
from loaders.torch_loader import make_loader
from orl_fast.core import checkpoint, storage
from orl_fast.core.config import ConfigError
from orl_fast.core.defaults import Config
from orl_fast.core.distributed import Runtime, init_runtime, shutdown
from orl_fast.core.locks import out_lock
from orl_fast.core.models import ORL
from orl_fast.training.engine import RunSpec, Schedule, fit, resume_state, setup_model

# Which patches of a batch feed which loss term (the crops of loaders.orl_samples).
TERM_CROPS = (("intra", 2), ("inter", 4))


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


@dataclass
class Prepared:
    """A stage whose inputs passed the start-up checks, before anything is written."""

    cfg: Config
    builder: SampleBuilder
    model: nn.Module
    schedule: Schedule
    run: RunSpec
    resume: dict | None  # the checkpoint of OUT to continue (checked), None for a new run


def prepare(cfg: Config, stage: str, builder: SampleBuilder, model: nn.Module,
            inputs: dict | None = None) -> Prepared:
    """The checks of a stage that come before any work: the batch against the data set, and
    OUT's checkpoint (if any) against this run (:func:`~orl_fast.training.engine.resume_state`).
    ``inputs``: more input fields of the run's identity (e.g. Stage 3's ckpt) beside the content
    digests of the shards and pairs ``builder`` opened."""
    digests = {"data": builder.images.digest}
    if builder.pairs is not None:
        digests["pairs"] = builder.pairs.digest
    run = RunSpec.of_stage(cfg, stage, {**digests, **(inputs or {})})
    if storage.exists(checkpoint.ckpt_dir(cfg.out)):
        check_class_head(model, checkpoint.resolve(cfg.out) or "", "out")
    schedule = Schedule(cfg, len(builder))
    return Prepared(cfg, builder, model, schedule, run, resume_state(run, model))


@contextlib.contextmanager
def writing(cfg: Config, rt: Runtime, stage: str, lock: bool = True) -> Iterator[None]:
    """OUT's lock for the block, held by the main rank (``lock=False``: a launcher holds it)."""
    if rt.is_main and lock:
        with out_lock(cfg.out, f"orl-fast {stage}"):
            yield
    else:
        yield


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


def to_inputs(cfg: Config, crops: tuple[int, ...]):
    """``prepare(batch, device)`` for :func:`fit`: a batch of uint8 ``(views [B, 2, ...],
    patches [B, n, ...])`` -> ``{"v1", "v2", "intra": (p, p'), "inter": (p1, p2)}`` (the terms
    the run trains), normalised on the device (channels_last on CUDA). A label-aware mode's
    batch ends with its targets (a dict): OPERA's ``labels`` and SCAN's ``neighbor`` (the third
    view, valid) are added."""
    local = list(crops[2:])

    def prepare(batch, device: torch.device) -> dict:
        cl = cfg.train.channels_last and device.type == "cuda"

        def frame(x: torch.Tensor, i: int) -> torch.Tensor:
            return normalize(x[:, i].to(device, non_blocking=True), cfg.aug.mean, cfg.aug.std, cl)

        inputs = {"v1": frame(batch[0], 0), "v2": frame(batch[0], 1)}
        for term, first in TERM_CROPS:
            if first in local:
                i = local.index(first)
                inputs[term] = (frame(batch[1], i), frame(batch[1], i + 1))
        if isinstance(batch[-1], dict):
            inputs.update(label_inputs(batch[-1], local, device, lambda: frame(batch[0], 2)))
        return inputs

    return prepare


def label_inputs(targets: dict, local: list[int], device: torch.device, scan_view) -> dict:
    """A label-aware batch's targets -> the model's ``labels`` (tags, known and, with box labels,
    ``roi_intra`` / ``roi_inter`` [B, 2]) and SCAN's ``neighbor`` (``scan_view()``, valid [B])."""
    labels = {"tags": targets["tags"].to(device), "known": targets["known"].to(device)}
    if "roi" in targets:
        for term, first in TERM_CROPS:
            if first in local:
                labels[f"roi_{term}"] = targets["roi"][:, first:first + 2].to(device)
    out = {"labels": labels}
    if "scan_valid" in targets:
        out["neighbor"] = (scan_view(), targets["scan_valid"].reshape(-1).to(device, torch.bool))
    return out


def label_model(cfg: Config, builder: SampleBuilder, loss_weights) -> ORL:
    """The model of a stage: ORL with ``loss_weights`` and, in a label-aware mode, the class
    head sized by the label store's vocabulary."""
    return ORL(cfg.model, loss_weights, cfg.label, builder.num_classes)


def check_class_head(model: nn.Module, path: str, field: str) -> None:
    """ConfigError naming ``field`` when the checkpoint ``path`` holds a class head for another
    number of classes than ``model``'s (the label vocabulary changed)."""
    head = getattr(model, "class_head", None)
    if head is None or not path:
        return
    state = checkpoint.load(path)["model"]
    key = f"class_head.{len(head) - 1}.weight"
    if key in state and state[key].shape != head[-1].weight.shape:
        raise ConfigError(f"{field}: {path} has a class head of {state[key].shape[0]} classes, "
                          f"the label store's vocabulary {head[-1].weight.shape[0]}")


def run_stage(cfg: Config, stage: str, prepare: Callable[[Config], Prepared], lock_out: bool,
              announce: Callable[[Prepared, str], None] | None = None) -> str:
    """A training stage in this process (alone, or as one torchrun / Ray Train rank): seeds, the
    loader, OUT's lock (``lock_out``; False: the launcher holds it), ``prepare``'s start-up
    checks, ``announce(prepared, loader)`` on the main rank, then :func:`train`."""
    cfg.require("data", "out")
    rt = init_runtime(cfg.train.device)
    try:
        seed_everything(cfg)
        kind = choose_loader(cfg, rt.device)
        with writing(cfg, rt, stage, lock_out):
            p = prepare(cfg)
            if announce is not None and rt.is_main:
                announce(p, kind)
            return train(p, rt, kind)
    finally:
        shutdown()


def train(p: Prepared, rt: Runtime, kind: str) -> str:
    """Write the run's config, place the model, then :func:`fit` it on the plans of the
    builder rendered by ``kind``."""
    cfg = p.cfg
    write_run_config(cfg, rt)
    model, optimizer = setup_model(cfg, p.model, rt)
    return fit(model, optimizer, p.schedule, make_loader_fn(cfg, p.builder, rt, kind),
               to_inputs(cfg, p.builder.crops), rt, p.run, resume=p.resume)

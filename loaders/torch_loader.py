"""The torch DataLoader over a map-style dataset fed by :class:`loaders.sampling.StepBatchSampler`.

Items are (epoch, position); what a worker makes of one is a pure function of (seed, epoch,
position) (:mod:`loaders.orl_torch` for both training stages, the detection transfer's COCO
dataset), so a batch is the same whichever worker draws it and whether or not the run resumed.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from torch.utils.data import DataLoader, Dataset

from loaders.sampling import StepBatchSampler


def loader_workers(requested: int) -> int:
    """DataLoader worker processes: ``requested``, at most one per CPU core this process may
    run on (more only contend for the cores, and torch warns about them)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min(requested, cores or 1)


def make_loader(dataset: Dataset, sampler: StepBatchSampler, num_workers: int,
                pin_memory: bool, prefetch_factor: int = 4,
                collate_fn: Callable | None = None) -> DataLoader:
    num_workers = loader_workers(num_workers)
    return DataLoader(
        dataset, batch_sampler=sampler, num_workers=num_workers, pin_memory=pin_memory,
        prefetch_factor=prefetch_factor if num_workers > 0 else None,
        persistent_workers=False, collate_fn=collate_fn,
    )

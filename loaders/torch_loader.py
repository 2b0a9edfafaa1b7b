"""CPU data path: a map-style torch Dataset over the shard index, fed by StepBatchSampler.

Workers read each image by byte range (no scanning), decode it with Pillow and apply the
augmentation with a generator seeded by (seed, epoch, position): a sample's views are identical
whichever worker draws them and whether or not the run was resumed.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, get_worker_info

from loaders.sampling import StepBatchSampler, sample_seed
from loaders.shards import ShardIndex

log = logging.getLogger(__name__)

# A sample that fails to decode is replaced by the next position; after this many failures in a
# row the dataset is considered broken.
MAX_CONSECUTIVE_FAILURES = 16


def decode_rgb(data: bytes) -> torch.Tensor:
    """JPEG/PNG bytes -> uint8 CHW RGB tensor."""
    arr = np.array(Image.open(io.BytesIO(data)).convert("RGB"))
    return torch.from_numpy(arr).permute(2, 0, 1)


def seeded(seed: int, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` with the torch RNG seeded; in the main process the caller's RNG is preserved."""
    if get_worker_info() is not None:
        torch.manual_seed(seed)
        return fn()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return fn()


class ImageViewsDataset(Dataset):
    """Items are (epoch, position); returns ``transform(image)`` for the image at ``position``."""

    def __init__(self, root: str, transform: Callable[[torch.Tensor], Any], seed: int):
        self.index = ShardIndex(root)
        self.transform = transform
        self.seed = seed
        self.failures = 0

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: tuple[int, int]) -> Any:
        epoch, pos = item
        for attempt in range(MAX_CONSECUTIVE_FAILURES):
            p = (pos + attempt) % len(self.index)
            try:
                _key, raw = self.index.data_at(p)
                img = decode_rgb(raw)
            except Exception as e:  # noqa: BLE001 - a bad sample must not stop a long run
                self.failures += 1
                log.warning("skipping unreadable image at position %d: %s", p, e)
                continue
            return seeded(sample_seed(self.seed, epoch, pos), lambda img=img: self.transform(img))
        raise RuntimeError(f"{MAX_CONSECUTIVE_FAILURES} unreadable images in a row from {pos}")


def make_loader(dataset: Dataset, sampler: StepBatchSampler, num_workers: int,
                pin_memory: bool, prefetch_factor: int = 4,
                collate_fn: Callable | None = None) -> DataLoader:
    return DataLoader(
        dataset, batch_sampler=sampler, num_workers=num_workers, pin_memory=pin_memory,
        prefetch_factor=prefetch_factor if num_workers > 0 else None,
        persistent_workers=False, collate_fn=collate_fn,
    )

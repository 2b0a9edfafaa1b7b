"""Which images each rank sees at each optimiser step: a pure function of (seed, step).

Every epoch is a pseudo-random permutation of [0, N) computed on the fly by a keyed Feistel
network with cycle walking, so no rank ever materialises an O(N) permutation (10M images cost
nothing), and resuming at step s needs no replay. Global batch b of epoch e is the slice
[b*G, (b+1)*G) of that permutation; rank r takes its contiguous B = G / world part. The
incomplete tail of each epoch is dropped (steps_per_epoch = N // G), so all ranks run the same
number of steps.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

_MASK64 = 0xFFFFFFFFFFFFFFFF


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on uint64 arrays (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint64(30))
        x = x * np.uint64(0xBF58476D1CE4E5B9)
        x = x ^ (x >> np.uint64(27))
        x = x * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def permute(idx: np.ndarray, n: int, seed: int, rounds: int = 4) -> np.ndarray:
    """Image of ``idx`` (values in [0, n)) under a seeded bijection of [0, n)."""
    idx = np.asarray(idx, dtype=np.uint64)
    if n <= 1:
        return idx.astype(np.int64)
    half = max(1, (int(n - 1).bit_length() + 1) // 2)
    low_mask = np.uint64((1 << half) - 1)
    salt = (seed * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    keys = _mix(np.arange(1, rounds + 1, dtype=np.uint64) ^ np.uint64(salt))

    def feistel(x: np.ndarray) -> np.ndarray:
        left, right = x >> np.uint64(half), x & low_mask
        for k in keys:
            left, right = right, left ^ (_mix(right ^ k) & low_mask)
        return (left << np.uint64(half)) | right

    out = feistel(idx)
    outside = out >= np.uint64(n)
    while outside.any():  # cycle walking: the domain is < 4n, so a few passes at most
        out[outside] = feistel(out[outside])
        outside = out >= np.uint64(n)
    return out.astype(np.int64)


def epoch_seed(seed: int, epoch: int) -> int:
    return int(_mix(np.array([(seed * 1_000_003 + epoch) & _MASK64], dtype=np.uint64))[0])


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """Seed for the random augmentation of one sample: same sample, same draw, on any worker."""
    v = _mix(np.array([epoch_seed(seed, epoch) ^ position], dtype=np.uint64))[0]
    return int(v) & 0x7FFFFFFFFFFFFFFF


class StepBatchSampler:
    """Batches of (epoch, position) for optimiser steps [start_step, stop_step) of one rank."""

    def __init__(self, num_images: int, global_batch: int, rank: int, world_size: int,
                 seed: int, start_step: int, stop_step: int):
        if global_batch % world_size:
            raise ValueError(f"global batch {global_batch} not divisible by world size {world_size}")
        self.n = num_images
        self.global_batch = global_batch
        self.local_batch = global_batch // world_size
        self.rank = rank
        self.seed = seed
        self.steps_per_epoch = num_images // global_batch
        if self.steps_per_epoch == 0:
            raise ValueError(f"train.batch_size={global_batch} exceeds the {num_images} images")
        self.start_step = start_step
        self.stop_step = stop_step

    def __len__(self) -> int:
        return max(0, self.stop_step - self.start_step)

    def batch(self, step: int) -> list[tuple[int, int]]:
        epoch, b = divmod(step, self.steps_per_epoch)
        first = b * self.global_batch + self.rank * self.local_batch
        slots = np.arange(first, first + self.local_batch)
        positions = permute(slots, self.n, epoch_seed(self.seed, epoch))
        return [(epoch, int(p)) for p in positions]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start_step, self.stop_step):
            yield self.batch(step)

"""The Stage 2 driver, the shard index and the pair sampler hold O(shards) state, not O(images).

The driver runs on synthetic shard metadata with mocked units (``support.simulate``): the code
that plans, schedules, gates the pairs units and aggregates the records is the real one. Its
peak allocations (tracemalloc: Python objects and numpy arrays) must not grow with the number
of images per shard, and stay under a stated bound at 100k images.
"""

from __future__ import annotations

import functools
import json
import os
import tracemalloc

import numpy as np
from support.simulate import placeholder_files, simulate, synthetic_dataset

from loaders.pairs import open_pairs
from loaders.sampling import StepBatchSampler
from loaders.shards import ShardIndex

BOUND_100K = 3 << 20  # bytes: 30 B per image at 100k images (an image-level list is >= 8 B)


def _peak(fn) -> tuple[object, int]:
    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_driver_memory_does_not_grow_with_images(tmp_path):
    ckpt = tmp_path / "ckpt.pt"
    ckpt.write_bytes(os.urandom(4096))  # the plan hashes the checkpoint's bytes
    warm = synthetic_dataset(str(tmp_path / "warm"), 200, 10)
    simulate(warm, str(tmp_path / "warm-out"), str(ckpt))  # imports, caches

    peaks = {}
    for images in (1_000, 100_000):  # 100 shards either way
        data = synthetic_dataset(str(tmp_path / f"data-{images}"), images, images // 100)
        out = str(tmp_path / f"out-{images}")
        result, peaks[images] = _peak(functools.partial(simulate, data, out, str(ckpt)))
        assert result["shards"] == 100 and result["images"] == result["pairs_records"] == images
        # Every pairs unit ran, after the RoI units of its neighbours' shards.
        index = json.loads((tmp_path / f"out-{images}" / "pairs" / "index.json").read_text())
        assert index["num_images"] == images and index["num_shards"] == 100
    assert peaks[100_000] < BOUND_100K, peaks
    assert abs(peaks[100_000] - peaks[1_000]) < 512 << 10, peaks  # 100x the images: same state


def test_index_and_sampler_state_is_per_shard(tmp_path):
    """ShardIndex (images and pair records) and the step sampler at 1M images."""
    data = synthetic_dataset(str(tmp_path / "data"), 1_000_000, 1000)
    pairs = tmp_path / "mined" / "pairs"
    pairs.mkdir(parents=True)
    (pairs / "index.json").write_text((tmp_path / "data" / "index.json").read_text())
    placeholder_files(str(pairs), [s["name"] for s in json.loads(
        (pairs / "index.json").read_text())["shards"]])

    def build():
        images, records = ShardIndex(data), open_pairs(str(tmp_path / "mined"))
        sampler = StepBatchSampler(len(images), 512, rank=3, world_size=8, seed=0, start_step=0,
                                   stop_step=10)
        first = next(iter(sampler))
        return images, records, sampler, first

    (images, records, _, first), peak = _peak(build)
    assert len(images) == len(records) == 1_000_000
    positions = [pos for epoch, pos in first]
    assert len(positions) == len(set(positions)) == 64 and {e for e, _ in first} == {0}
    assert 0 <= min(positions) < max(positions) < 10**6
    assert peak < 2 << 20, peak  # < 2 B per image: two shard tables, no per-image arrays
    assert np.array_equal(images.starts[:3], [0, 1000, 2000])

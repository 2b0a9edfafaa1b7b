"""Random Stage 2 output (pair shards) for an image shard set: Stage 3 tests and benchmarks without
running the mining stage (test scaffolding, not shipped). Records are plausible, not mined: boxes of random size and place,
neighbours drawn at random, pairs between random boxes.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from loaders.pairs import PAIRS_DIR, PairRecord, write_pair_shards
from loaders.shards import ShardIndex
from orl_fast.core import storage


def write_pairs(mined: str, records: Iterable[PairRecord], shard_size: int = 1000,
                knn_k: int = 10, topn_frac: float = 0.1) -> str:
    """Write records (in increasing key order) as ``MINED/pairs`` shards + index, as if mined with
    ``knn_k`` and ``topn_frac``; returns the dir."""
    records = list(records)
    write_pair_shards(mined, ((shard_id, records[start:start + shard_size]) for shard_id, start
                              in enumerate(range(0, len(records), shard_size))), knn_k, topn_frac)
    return storage.join(mined, PAIRS_DIR)


def random_box(rng: np.random.Generator, width: int, height: int, min_side: int) -> np.ndarray:
    lo = max(1, min(min_side, width, height))
    w = int(rng.integers(lo, max(lo, width // 2) + 1))
    h = int(rng.integers(lo, max(lo, height // 2) + 1))
    return np.array([rng.integers(0, width - w + 1), rng.integers(0, height - h + 1), w, h],
                    dtype=np.int32)


def random_records(images: ShardIndex, seed: int = 0, num_boxes: int = 20, k: int = 10,
                   pairs_per_neighbor: int = 2, min_side: int = 32) -> list[PairRecord]:
    """One record per image of ``images``: ``num_boxes`` kept boxes, ``k`` random neighbours
    (other images) with ``pairs_per_neighbor`` pairs each."""
    rng = np.random.default_rng(seed)
    sizes = []
    for shard_id in range(len(images.shard_names)):
        rows = images.shard_rows(shard_id)
        sizes += [(int(r["key"]), int(r["width"]), int(r["height"])) for r in rows]
    by_key = {key: (w, h) for key, w, h in sizes}
    keys = np.array([s[0] for s in sizes])
    records = []
    for key, width, height in sizes:
        others = keys[keys != key]
        neighbors = rng.choice(others, size=min(k, len(others)), replace=False)
        boxes = np.stack([random_box(rng, width, height, min_side) for _ in range(num_boxes)])
        slots = np.repeat(np.arange(len(neighbors)), pairs_per_neighbor)
        query = boxes[rng.integers(0, num_boxes, len(slots))]
        other = np.stack([random_box(rng, *by_key[int(neighbors[s])], min_side) for s in slots])
        records.append(PairRecord(
            key, width, height, boxes=boxes, neighbors=neighbors,
            neighbor_sims=np.sort(rng.random(len(neighbors)))[::-1],
            pair_neighbor=slots, pair_query_box=query, pair_neighbor_box=other,
            pair_score=rng.random(len(slots))))
    return records

"""Stage 2's driver at any scale without pixels: synthetic shard metadata and mocked units.

What the driver of ``orl-fast mine`` holds and does does not depend on the pixels: it reads the
input ``index.json``, plans, schedules units as their dependencies complete (the
:class:`~mining.pipeline.PairGate` included), reads unit records and writes the pair index and
the summary. This module runs exactly that code on a data set of any size:

- :func:`synthetic_dataset` writes the ``index.json`` of N images in shards (no image bytes, no
  per-shard rows: the driver reads neither);
- :class:`MockExecutor` is an executor (the interface of ``mining.pipeline``) whose units do no
  work: each writes an empty output file and a unit record with the statistics a real unit
  reports (counts, histograms, the shard range of K random neighbours per image), so the
  scheduler, the pair gate, ``finalize`` and the summary run as in a real run.

Used by ``benchmarks/scale_driver.py`` (peak RSS and planning time at 100k-10M images) and by
the test that bounds the driver's memory.
"""

from __future__ import annotations

import collections
import json
import os
import time
from typing import Any

import numpy as np

from loaders.pairs import pair_shard_name
from loaders.shards import INDEX_VERSION, idx_name, shard_name, shard_summary
from mining.manifest import FILES, Plan, make_plan
from mining.summary import SIM_EDGES, count_hist, sim_hist
from orl_fast.core import storage
from orl_fast.core.defaults import MineConfig


def placeholder_files(root: str, names: list[str]) -> None:
    """Empty files of these shard names and their ``.idx.npy``: what the start-up check of an
    index looks for, in tests that read only the index."""
    for name in names:
        for path in (name, idx_name(name)):
            open(os.path.join(root, path), "wb").close()


def synthetic_dataset(root: str, num_images: int, shard_size: int) -> str:
    """``root/index.json`` for ``num_images`` images in shards of ``shard_size`` (the shard
    files empty placeholders: only the index is read); returns root."""
    os.makedirs(root, exist_ok=True)
    shards = []
    for j, first in enumerate(range(0, num_images, shard_size)):
        count = min(shard_size, num_images - first)
        shards.append({"name": shard_name(j), "count": count, "first_key": first,
                       "last_key": first + count - 1, "bytes": count * 160_000})
    with open(os.path.join(root, "index.json"), "w") as f:
        json.dump({"version": INDEX_VERSION, "num_images": num_images,
                   "num_shards": len(shards), "shards": shards}, f)
    placeholder_files(root, [s["name"] for s in shards])
    return root


class MockExecutor:
    """Runs every unit at submission, as ``LocalExecutor`` does, without doing its work."""

    cpu_slots = model_slots = 4

    def __init__(self, plan: Plan, counts: list[int], seed: int = 0):
        self.plan = plan
        self.count = dict(zip(plan.shard_ids, counts))
        self.rng = np.random.default_rng(seed)
        self.results: collections.deque = collections.deque()
        self.handle = 0
        self.unit_seconds = 0.0  # time spent "being the workers" (not the driver's)

    def submit(self, stage: str, arg: Any) -> int:
        t0 = time.perf_counter()
        for sid in arg if stage == "knn" else [arg]:
            self._unit(stage, sid)
        self.unit_seconds += time.perf_counter() - t0
        self.handle += 1
        self.results.append((self.handle, None))
        return self.handle

    def wait(self, pending) -> tuple[int, Any]:
        return self.results.popleft()

    def release_models(self) -> None:
        pass

    def close(self) -> None:
        pass

    def _unit(self, stage: str, sid: int) -> None:
        n, m = self.count[sid], self.plan.mine
        boxes, pairs = 40 * n, 40 * n
        if stage == "embed":
            stats = {"images": n, "embedded": n, "decode_failed": 0, "failed_keys": []}
        elif stage == "proposals":
            stats = {"images": n, "with_boxes": n, "decode_failed": 0, "failed_keys": [],
                     "boxes": boxes, "raw_boxes": 30 * boxes, "fallback_whole_image": 0,
                     "boxes_per_image_hist": count_hist(np.full(n, 40))}
        elif stage == "knn":
            total = sum(self.count.values())
            neighbors = self.rng.integers(0, total, size=(n, m.knn_k))
            shards = np.unique(self.plan.shards_of(neighbors))
            stats = {"queries": n, "k": m.knn_k,
                     "neighbor_sim_hist": sim_hist(self.rng.uniform(0.3, 1.0, n * m.knn_k)),
                     "neighbor_shard_range": [int(shards[0]), int(shards[-1])],
                     "neighbor_shard_count": len(shards)}
        elif stage == "roi":
            stats = {"images": n, "rois": boxes, "decode_failed": 0, "failed_keys": []}
        else:
            first = self.plan.first_keys[self.plan.shard_ids.index(sid)]
            rows = np.zeros(n, dtype=[("key", "<i8"), ("size", "<i8")])
            rows["key"] = np.arange(first, first + n)
            rows["size"] = 2700
            stats = {"records": n, "pairs": pairs, "neighbors_without_pairs": 0,
                     "queries_without_proposals": 0,
                     "pairs_per_record_hist": count_hist(np.full(n, 40)),
                     "score_hist": [0] * (len(SIM_EDGES) - 1),
                     "index": shard_summary(pair_shard_name(sid), rows)}
        stats["bytes"] = 0
        path = self.plan.path(stage, sid)
        with open(path, "wb"):  # the unit's output: empty, only its name matters here
            pass
        with open(self.plan.record_url(stage, sid), "w") as f:
            json.dump({"stage": stage, "shard": sid, "hash": self.plan.hashes[stage],
                       "stats": stats, "seconds": 0.0, "worker": None}, f)


def simulate(data: str, out: str, ckpt: str, mine: MineConfig | None = None) -> dict:
    """Plan, schedule (mocked units) and finalize a mining run of ``data``; seconds per phase.

    ``ckpt`` is any file (the plan hashes its bytes). The driver phases are timed without the
    mocked units' own time."""
    from mining import pipeline

    mine = mine or MineConfig()
    t0 = time.perf_counter()
    plan = make_plan(out, data, ckpt, mine, "cpu")
    for stage in FILES:
        storage.makedirs(plan.dir(stage))
        storage.makedirs(storage.join(out, "units", stage))
    t1 = time.perf_counter()
    counts = [s["count"] for s in storage.read_json(storage.join(data, "index.json"))["shards"]
              if s["count"] > 0]
    ex = MockExecutor(plan, counts)
    sched = pipeline.Scheduler(plan, ex, progress=False)
    sched.run()
    t2 = time.perf_counter()
    summary = pipeline.finalize(plan)
    t3 = time.perf_counter()
    return {"shards": len(plan.shard_ids), "images": summary["images"],
            "plan_s": t1 - t0, "schedule_s": t2 - t1 - ex.unit_seconds,
            "mock_units_s": ex.unit_seconds, "finalize_s": t3 - t2,
            "pairs_records": summary["pairs"]["records"]}

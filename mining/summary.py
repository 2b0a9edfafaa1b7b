"""``summary.json``: counts and histograms of a mining run, aggregated from the unit records.

Units report fixed-bin histograms, so the summary is streamed over the records (one in memory at
a time) and is byte-identical however the run was interrupted and resumed (timings live in
``manifest.json``, not here).
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from mining.manifest import Plan

FAILED_KEYS_CAP = 100  # undecodable keys listed per unit and in the summary (all are counted)
SIM_EDGES = [round(-1 + 0.05 * i, 2) for i in range(41)]          # cosine, 0.05 wide
COUNT_EDGES = [0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]        # last bin: >= 1000


def sim_hist(values: np.ndarray) -> list[int]:
    """Counts of cosine similarities in the 40 bins of SIM_EDGES (values clipped to [-1, 1])."""
    v = np.clip(np.asarray(values, np.float64).ravel(), -1.0, 1.0)
    return np.histogram(v, bins=SIM_EDGES)[0].tolist()


def count_hist(values) -> list[int]:
    """Counts of non-negative integers in the bins [COUNT_EDGES[i], COUNT_EDGES[i+1]), last open."""
    idx = np.searchsorted(COUNT_EDGES, np.asarray(values, np.int64).ravel(), side="right") - 1
    return np.bincount(idx, minlength=len(COUNT_EDGES)).tolist()


def _totals(plan: Plan, stage: str) -> dict:
    """Field-wise totals of a stage's unit stats, streamed over the records: counts are added,
    histograms bin by bin, ``k`` is the largest, ``failed_keys`` the smallest FAILED_KEYS_CAP
    (the driver holds one record at a time: O(1) in the number of shards)."""
    total: dict = collections.defaultdict(int, failed_keys=[])
    for sid in plan.shard_ids:
        for name, v in plan.read_record(stage, sid)["stats"].items():
            if name == "failed_keys":
                total[name] = sorted({*total[name], *v})[:FAILED_KEYS_CAP]
            elif name == "k":
                total[name] = max(total[name], v)
            elif isinstance(v, list) and name.endswith("hist"):
                total[name] = v if name not in total else [a + b for a, b in zip(total[name], v)]
            elif isinstance(v, int) and not isinstance(v, bool):
                total[name] += v
    return total


def _mean(total: int, n: int) -> float:
    return round(total / n, 4) if n else 0.0


def build_summary(plan: Plan) -> dict:
    """Aggregate every unit record of ``plan`` (all units must be done)."""
    s = {stage: _totals(plan, stage) for stage in ("embed", "proposals", "knn", "roi", "pairs")}
    failed = sorted({k for stage in ("embed", "proposals", "roi")
                     for k in s[stage]["failed_keys"]})[:FAILED_KEYS_CAP]
    records, pairs = s["pairs"]["records"], s["pairs"]["pairs"]
    boxes, with_boxes = s["proposals"]["boxes"], s["proposals"]["with_boxes"]
    return {
        "config_hash": plan.config_hash,
        "shards": len(plan.shard_ids),
        "images": s["embed"]["images"],
        "decode_failed": {stage: s[stage]["decode_failed"]
                          for stage in ("embed", "proposals", "roi")},
        "failed_keys": failed,
        "knn": {
            "queries": s["knn"]["queries"],
            "k": s["knn"]["k"],
            "neighbor_sim_hist": {"edges": SIM_EDGES,
                                  "counts": s["knn"]["neighbor_sim_hist"]},
        },
        "proposals": {
            "images": with_boxes,
            "boxes": boxes,
            "boxes_per_image": _mean(boxes, with_boxes),
            "raw_boxes_per_image": _mean(s["proposals"]["raw_boxes"], with_boxes),
            "fallback_whole_image": s["proposals"]["fallback_whole_image"],
            "boxes_per_image_hist": {"edges": COUNT_EDGES,
                                     "counts": s["proposals"]["boxes_per_image_hist"]},
        },
        "roi_embeddings": s["roi"]["rois"],
        "pairs": {
            "records": records,
            "pairs": pairs,
            "pairs_per_record": _mean(pairs, records),
            "neighbors_without_pairs": s["pairs"]["neighbors_without_pairs"],
            "queries_without_proposals": s["pairs"]["queries_without_proposals"],
            "pairs_per_record_hist": {"edges": COUNT_EDGES,
                                      "counts": s["pairs"]["pairs_per_record_hist"]},
            "score_hist": {"edges": SIM_EDGES, "counts": s["pairs"]["score_hist"]},
        },
        "bytes": {stage: s[stage]["bytes"] for stage in
                  ("embed", "knn", "proposals", "roi", "pairs")},
        "bytes_per_image": {"proposals": _mean(s["proposals"]["bytes"], with_boxes),
                            "pairs": _mean(s["pairs"]["bytes"], records)},
    }

"""``summary.json``: counts and histograms of a mining run, aggregated from the unit records.

Units report fixed-bin histograms, so the summary costs O(shards) and is byte-identical however
the run was interrupted and resumed (timings live in ``manifest.json``, not here).
"""

from __future__ import annotations

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


def _sum(stats: list[dict], name: str):
    values = [s[name] for s in stats]
    if values and isinstance(values[0], list):
        return np.sum(values, axis=0).astype(int).tolist()
    return int(sum(values))


def _mean(total: int, n: int) -> float:
    return round(total / n, 4) if n else 0.0


def build_summary(plan: Plan) -> dict:
    """Aggregate every unit record of ``plan`` (all units must be done)."""
    s = {stage: [plan.read_record(stage, sid)["stats"] for sid in plan.shard_ids]
         for stage in ("embed", "proposals", "knn", "roi", "pairs")}
    failed = sorted({k for stage in ("embed", "proposals", "roi") for st in s[stage]
                     for k in st["failed_keys"]})
    records = _sum(s["pairs"], "records")
    boxes = _sum(s["proposals"], "boxes")
    with_boxes = _sum(s["proposals"], "with_boxes")
    pairs = _sum(s["pairs"], "pairs")
    return {
        "config_hash": plan.config_hash,
        "shards": len(plan.shard_ids),
        "images": _sum(s["embed"], "images"),
        "decode_failed": {stage: _sum(s[stage], "decode_failed")
                          for stage in ("embed", "proposals", "roi")},
        "failed_keys": failed[:FAILED_KEYS_CAP],
        "knn": {
            "queries": _sum(s["knn"], "queries"),
            "k": max((st["k"] for st in s["knn"]), default=0),
            "neighbor_sim_hist": {"edges": SIM_EDGES,
                                  "counts": _sum(s["knn"], "neighbor_sim_hist")},
        },
        "proposals": {
            "images": with_boxes,
            "boxes": boxes,
            "boxes_per_image": _mean(boxes, with_boxes),
            "raw_boxes_per_image": _mean(_sum(s["proposals"], "raw_boxes"), with_boxes),
            "fallback_whole_image": _sum(s["proposals"], "fallback_whole_image"),
            "boxes_per_image_hist": {"edges": COUNT_EDGES,
                                     "counts": _sum(s["proposals"], "boxes_per_image_hist")},
        },
        "roi_embeddings": _sum(s["roi"], "rois"),
        "pairs": {
            "records": records,
            "pairs": pairs,
            "pairs_per_record": _mean(pairs, records),
            "neighbors_without_pairs": _sum(s["pairs"], "neighbors_without_pairs"),
            "queries_without_proposals": _sum(s["pairs"], "queries_without_proposals"),
            "pairs_per_record_hist": {"edges": COUNT_EDGES,
                                      "counts": _sum(s["pairs"], "pairs_per_record_hist")},
            "score_hist": {"edges": SIM_EDGES, "counts": _sum(s["pairs"], "score_hist")},
        },
        "bytes": {stage: _sum(s[stage], "bytes") for stage in
                  ("embed", "knn", "proposals", "roi", "pairs")},
        "bytes_per_image": {"proposals": _mean(_sum(s["proposals"], "bytes"), with_boxes),
                            "pairs": _mean(_sum(s["pairs"], "bytes"), records)},
    }

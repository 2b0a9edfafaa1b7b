"""Top-ranked RoI pairs: per (query, neighbour), the top N% of the query's RoIs.

For query image x and neighbour N_k the similarity matrix M_k = cos(RoIs(x), RoIs(N_k)) holds
every (query box, neighbour box) pair; the ``max(1, int(topn_frac x boxes(x)))`` highest entries
are kept (the official ``topk`` over the flattened matrix, so a query box may pair with several
neighbour boxes). Ties keep the lower (query, neighbour) index first.

A pair unit writes ``pairs/pairs-{shard}.tar``: one :class:`loaders.pairs.PairRecord` per
query image of the input shard, read by Stage 3 through ``loaders.pairs.open_pairs``.

SCAN's pair gate (``label.mode=scan`` with ``label.pair_gate`` [reconstructed]): a kept pair
whose two boxes both carry a box label (the class of the labelled box each overlaps most with
IoU >= ``label.box_iou``) and whose labels differ is dropped.
"""

from __future__ import annotations

import time

import numpy as np

from loaders.labels import cached_store
from loaders.pairs import PairRecord, pair_shard_name, write_pair_shards
from loaders.shards import idx_name
from mining.arrays import file_size, load_arrays
from mining.manifest import Plan
from mining.proposals import ProposalStore
from mining.roi_embed import RoiStore
from mining.summary import count_hist, sim_hist
from orl_fast.core import storage


def top_pairs(sim: np.ndarray, frac: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(query rows, neighbour rows, scores) of the top ``max(1, int(frac x rows))`` entries."""
    rows, cols = sim.shape
    if rows == 0 or cols == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty, np.zeros(0, sim.dtype)
    n = min(max(1, int(frac * rows)), rows * cols)
    flat = sim.ravel()
    kth = np.partition(flat, flat.size - n)[flat.size - n]          # the n-th largest value
    cand = np.flatnonzero(flat >= kth)                               # ascending flat index
    order = cand[np.argsort(-flat[cand], kind="stable")[:n]]
    qi, ki = np.divmod(order, cols)
    return qi, ki, flat[order]


def _cat(parts: list[np.ndarray], empty_shape: tuple[int, ...]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(empty_shape)


def pairs_unit(plan: Plan, sid: int) -> dict:
    """Pair records of the query images of input shard ``sid`` (CPU)."""
    t0 = time.time()
    knn = load_arrays(plan.path("knn", sid))
    props, rois = ProposalStore(plan), RoiStore(plan)
    frac = plan.mine.topn_frac
    gate = plan.label_gate if plan.label_gate.get("pairs") else {}
    store = cached_store(gate["store"], gate["store_sha256"]) if gate else None
    stats = {"records": 0, "pairs": 0, "neighbors_without_pairs": 0,
             "queries_without_proposals": 0, **({"pairs_dropped_by_labels": 0} if gate else {})}
    per_record: list[int] = []
    scores: list[np.ndarray] = []

    def records():
        for key, nbrs, nsims in zip(knn["keys"], knn["neighbors"], knn["sims"]):
            q = props.locate(int(key))
            if q is None:  # did not decode for selective search: no record (whole image later)
                stats["queries_without_proposals"] += 1
                continue
            qsid, qstart, qcount, width, height = q
            qboxes = props.boxes(qsid, qstart, qcount)
            qemb = rois.rows(qsid, qstart, qcount)
            valid = nbrs >= 0
            nbrs, nsims = nbrs[valid], nsims[valid]
            slot, qbox, nbox, score = [], [], [], []
            for k, nkey in enumerate(nbrs):
                n = props.locate(int(nkey))
                if n is None:
                    stats["neighbors_without_pairs"] += 1
                    continue
                nsid, nstart, ncount, _, _ = n
                qi, ki, sc = top_pairs(qemb @ rois.rows(nsid, nstart, ncount).T, frac)
                if store is not None:
                    a = store.box_labels(int(key), qboxes[qi], gate["box_iou"])
                    b = store.box_labels(int(nkey), props.boxes(nsid, nstart, ncount)[ki],
                                         gate["box_iou"])
                    agree = (a < 0) | (b < 0) | (a == b)
                    stats["pairs_dropped_by_labels"] += int((~agree).sum())
                    qi, ki, sc = qi[agree], ki[agree], sc[agree]
                slot.append(np.full(len(qi), k))
                qbox.append(qboxes[qi])
                nbox.append(props.boxes(nsid, nstart, ncount)[ki])
                score.append(sc)
            record = PairRecord(
                int(key), width, height, boxes=qboxes, neighbors=nbrs, neighbor_sims=nsims,
                pair_neighbor=_cat(slot, (0,)), pair_query_box=_cat(qbox, (0, 4)),
                pair_neighbor_box=_cat(nbox, (0, 4)), pair_score=_cat(score, (0,)))
            stats["records"] += 1
            stats["pairs"] += len(record.pair_score)
            per_record.append(len(record.pair_score))
            scores.append(record.pair_score)
            yield record

    name = pair_shard_name(sid)
    url = plan.path("pairs", sid)
    idx_url = storage.join(plan.dir("pairs"), idx_name(name))
    [entry] = write_pair_shards(plan.out, [(sid, records())])
    rois.close()
    stats.update({
        "pairs_per_record_hist": count_hist(per_record),
        "score_hist": sim_hist(_cat(scores, (0,))),
        "bytes": file_size(url) + file_size(idx_url),
        "index": entry,
    })
    plan.write_record("pairs", sid, stats, time.time() - t0)
    return stats

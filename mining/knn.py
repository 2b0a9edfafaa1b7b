"""Image kNN: image-level nearest neighbours, K = 10 by cosine, the image itself excluded.

Two backends over the same L2-normalised float32 bank:

- ``torch``: blocked ``mm`` + ``topk`` on the model worker's device (one H100 does COCO's
  118k x 118k in well under a second); the query's own column is masked, so an exact duplicate
  of an image is still its neighbour.
- ``faiss``: any ``index_factory`` string with inner product ("Flat": exact, "IVF4096,Flat":
  approximate, for 10M+ images), on GPU when faiss has one; it searches K + 1 and drops the
  query itself (or the last hit when the query is not among them).

With fewer than K + 1 images every image gets the N - 1 others. The bank is all image
embeddings (N x D float32: 0.1 GB at COCO scale), the only stage that holds a whole-dataset array.

SCAN's label gate (``label.mode=scan`` [reconstructed]): the search asks for candidates x K
neighbours and an image with tags keeps the first K that are its label neighbours
(:func:`loaders.labels.gate_neighbors`; fewer when fewer pass, the rest key -1), an image
without tags its first K.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from loaders.labels import cached_store, gate_neighbors
from mining.arrays import load_arrays, save_arrays
from mining.manifest import Plan
from mining.summary import sim_hist
from orl_fast.core.extras import require

FAISS_TRAIN_MAX = 500_000  # vectors used to train an IVF / PQ faiss index (seeded sample)
SIM_BLOCK_ELEMENTS = 1 << 28  # torch backend: at most 1 GiB of float32 similarities per block


class KnnIndex:
    """Search the K nearest other images of bank rows ``[start, stop)``."""

    def __init__(self, bank: np.ndarray, backend: str = "torch", device: str = "cpu",
                 block: int = 4096, faiss_index: str = "Flat", nprobe: int = 64,
                 threads: int = 1):
        self.n = len(bank)
        self.backend, self.block = backend, block
        bank = np.ascontiguousarray(bank, dtype=np.float32)
        if backend == "torch":
            self.device = torch.device(device)
            self.bank = torch.from_numpy(bank).to(self.device)
        elif backend == "faiss":
            self.queries = bank
            self.index = _faiss_index(bank, faiss_index, nprobe, device, threads)
        else:
            raise ValueError(f"unknown kNN backend {backend!r}")

    def search(self, start: int, stop: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(neighbour rows [n, k'] int64, cosine [n, k'] float32), most similar first;
        k' = min(k, N - 1)."""
        k = min(k, self.n - 1)
        if k <= 0 or stop <= start:
            n = max(stop - start, 0)
            return np.zeros((n, max(k, 0)), np.int64), np.zeros((n, max(k, 0)), np.float32)
        if self.backend == "torch":
            return self._search_torch(start, stop, k)
        return self._search_faiss(start, stop, k)

    @torch.inference_mode()
    def _search_torch(self, start: int, stop: int, k: int):
        idx, sims = [], []
        rows = max(1, min(self.block, SIM_BLOCK_ELEMENTS // self.n))
        for s in range(start, stop, rows):
            e = min(s + rows, stop)
            sim = self.bank[s:e] @ self.bank.T
            sim[torch.arange(e - s, device=sim.device), torch.arange(s, e, device=sim.device)] = (
                -float("inf"))
            v, i = torch.topk(sim, k, dim=1)
            idx.append(i.cpu().numpy())
            sims.append(v.cpu().numpy())
        return np.concatenate(idx).astype(np.int64), np.concatenate(sims).astype(np.float32)

    def _search_faiss(self, start: int, stop: int, k: int):
        idx, sims = [], []
        for s in range(start, stop, self.block):
            e = min(s + self.block, stop)
            d, i = self.index.search(self.queries[s:e], k + 1)
            # Move the query's own hit (if found) to the end, keep the order of the others.
            order = np.argsort(i == np.arange(s, e)[:, None], axis=1, kind="stable")[:, :k]
            idx.append(np.take_along_axis(i, order, 1))
            sims.append(np.take_along_axis(d, order, 1))
        return np.concatenate(idx).astype(np.int64), np.concatenate(sims).astype(np.float32)


def _faiss_index(bank: np.ndarray, spec: str, nprobe: int, device: str, threads: int):
    faiss = require("faiss", "mining", "mine.knn_backend=faiss")

    faiss.omp_set_num_threads(threads)
    index = faiss.index_factory(bank.shape[1], spec, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        rng = np.random.default_rng(0)
        sample = bank if len(bank) <= FAISS_TRAIN_MAX else bank[
            np.sort(rng.choice(len(bank), FAISS_TRAIN_MAX, replace=False))]
        index.train(sample)
    try:
        faiss.extract_index_ivf(index).nprobe = nprobe
    except (RuntimeError, AttributeError):
        pass  # not an IVF index
    if device.startswith("cuda") and hasattr(faiss, "StandardGpuResources") \
            and faiss.get_num_gpus() > 0:
        resources = faiss.StandardGpuResources()
        index = faiss.index_cpu_to_gpu(resources, 0, index)
        index.resources = resources  # keep alive with the index
    index.add(bank)
    return index


def load_bank(plan: Plan) -> tuple[np.ndarray, np.ndarray, dict[int, tuple[int, int]]]:
    """All image embeddings in shard order: (keys [N], bank [N, D] float32, sid -> row range)."""
    keys, embs, ranges, n = [], [], {}, 0
    for sid in plan.shard_ids:
        a = load_arrays(plan.path("embed", sid))
        keys.append(a["keys"])
        embs.append(a["emb"].astype(np.float32))
        ranges[sid] = (n, n + len(a["keys"]))
        n += len(a["keys"])
    bank = np.concatenate(embs) if embs else np.zeros((0, 0), np.float32)
    # Renormalise in float32 (the float16 rows are unit length to ~1e-3).
    bank /= np.maximum(np.linalg.norm(bank, axis=1, keepdims=True), 1e-12)
    return np.concatenate(keys) if keys else np.zeros(0, np.int64), bank, ranges


def _neighbor_shards(plan: Plan, neighbors: np.ndarray) -> dict:
    shards = np.unique(plan.shards_of(neighbors[neighbors >= 0]))
    if not len(shards):
        return {"neighbor_shard_range": None, "neighbor_shard_count": 0}
    return {"neighbor_shard_range": [int(shards[0]), int(shards[-1])],
            "neighbor_shard_count": len(shards)}


def neighbor_shard_range(stats: dict) -> tuple[int, int]:
    """(first, last) input shard holding a neighbour, from a kNN unit record (or (+inf, -inf))."""
    if "neighbor_shards" in stats:  # a record of an earlier version: the set of shards
        shards = stats["neighbor_shards"]
        return (min(shards), max(shards)) if shards else (np.inf, -np.inf)
    r = stats["neighbor_shard_range"]
    return (r[0], r[1]) if r else (np.inf, -np.inf)


def knn_unit(plan: Plan, sids: list[int], device: str, threads: int = 1) -> dict[int, dict]:
    """Neighbours of the images of input shards ``sids``: one ``knn/knn-{sid}.npz`` each."""
    t0 = time.time()
    keys, bank, ranges = load_bank(plan)
    m = plan.mine
    index = KnnIndex(bank, m.knn_backend, device, m.knn_block, m.faiss_index, m.faiss_nprobe,
                     threads)
    gate = plan.label_gate
    store = cached_store(gate["store"], gate["store_sha256"]) if gate else None
    out = {}
    for sid in sids:
        start, stop = ranges[sid]
        idx, sims = index.search(start, stop, m.knn_k * (gate["candidates"] if gate else 1))
        # -1: an approximate faiss index found fewer than k (never with "Flat" or torch).
        neighbors = np.where(idx >= 0, keys[np.maximum(idx, 0)], -1)
        if store is not None:
            neighbors, sims = gate_neighbors(store, keys[start:stop], neighbors, sims, m.knn_k,
                                             gate["jaccard"])
        size = save_arrays(plan.path("knn", sid), keys=keys[start:stop], neighbors=neighbors,
                           sims=sims)
        stats = {"queries": stop - start, "k": int(idx.shape[1]),
                 "neighbor_sim_hist": sim_hist(sims), "bytes": size,
                 # What the pairs unit of this shard reads: scheduled once the RoI embeddings
                 # of the shards in this range are done (a range: O(1) per shard at any scale).
                 **_neighbor_shards(plan, neighbors)}
        plan.write_record("knn", sid, stats, time.time() - t0)
        out[sid] = stats
        t0 = time.time()
    return out

"""kNN (K = 10, cosine, self excluded) time on random unit vectors, 256-d.

(a) torch blocked mm + topk, exact, on the device, N = --n (118,287 = COCO train2017 on GPU);
(b) faiss "Flat" (exact) on CPU for the same N: the baseline of the same run, ratio (b)/(a);
(c) faiss with --faiss-index on CPU at N = --faiss-n (e.g. 1M on 16 cores): "Flat"
    (exact) by default, or an approximate index such as "IVF4000,Flat" with --nprobe; build and
    search timed, recall@10 against exact search on 1,000 sampled queries. (Random vectors have
    no cluster structure: the worst case for IVF recall.)

    python benchmarks/mining_knn.py                                     # here: small N
    python benchmarks/mining_knn.py --n 118287 --faiss-n 1000000        # a GPU machine
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
from bench_common import machine

from mining.knn import KnnIndex


def unit_vectors(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def timed_search(bank: np.ndarray, **kw) -> tuple[float, float, np.ndarray]:
    """(build seconds, search seconds, neighbours) of every row."""
    t0 = time.perf_counter()
    index = KnnIndex(bank, **kw)
    t1 = time.perf_counter()
    idx, _ = index.search(0, len(bank), 10)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return t1 - t0, time.perf_counter() - t1, idx


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    gpu = torch.cuda.is_available()
    ap.add_argument("--device", default="cuda" if gpu else "cpu")
    ap.add_argument("--n", type=int, default=118_287 if gpu else 20_000)
    ap.add_argument("--faiss-n", type=int, default=1_000_000 if gpu else 100_000)
    ap.add_argument("--faiss-index", default="Flat", help='e.g. "IVF4000,Flat"')
    ap.add_argument("--nprobe", type=int, default=32)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    bank = unit_vectors(args.n, args.dim, 0)
    timed_search(bank[:2048], backend="torch", device=args.device)  # warm-up (CUDA context)
    build_t, torch_t, torch_idx = timed_search(bank, backend="torch", device=args.device,
                                               block=8192 if args.device == "cuda" else 2048)
    _, flat_t, flat_idx = timed_search(bank, backend="faiss", threads=args.threads)
    same = float((np.sort(torch_idx, 1) == np.sort(flat_idx, 1)).all(1).mean())

    big = unit_vectors(args.faiss_n, args.dim, 1)
    spec = args.faiss_index
    ivf_build, ivf_t, ivf_idx = timed_search(big, backend="faiss", faiss_index=spec,
                                             nprobe=args.nprobe, threads=args.threads)
    rows = np.random.default_rng(2).choice(args.faiss_n, 1000, replace=False)
    hits = 0
    for chunk in np.array_split(rows, 20):  # exact neighbours of the sampled queries
        sim = big[chunk] @ big.T
        sim[np.arange(len(chunk)), chunk] = -np.inf
        exact = np.argpartition(-sim, 10, axis=1)[:, :10]
        hits += sum(len(set(a) & set(b)) for a, b in zip(exact, ivf_idx[chunk]))
    recall = hits / (10 * len(rows))
    result = {**machine(), "dim": args.dim, "threads": args.threads,
              "torch": {"n": args.n, "device": args.device, "seconds": round(torch_t, 3),
                        "to_device_seconds": round(build_t, 3)},
              "faiss_flat_cpu": {"n": args.n, "seconds": round(flat_t, 3),
                                 "same_neighbours_as_torch": same},
              "ratio_faiss_flat_vs_torch": round(flat_t / torch_t, 2),
              "faiss_ivf_cpu": {"n": args.faiss_n, "index": spec, "nprobe": args.nprobe,
                                "build_seconds": round(ivf_build, 2),
                                "search_seconds": round(ivf_t, 2), "recall_at_10": recall}}
    print(json.dumps(result))
    print(f"\nkNN K=10 on {args.dim}-d unit vectors ({args.threads} CPU threads):")
    print(f"  torch mm+topk on {args.device}, N={args.n:,}: {torch_t:8.2f} s")
    print(f"  faiss Flat on CPU,        N={args.n:,}: {flat_t:8.2f} s  "
          f"(x{flat_t / torch_t:.2f} of torch; same neighbours for {same:.1%} of rows)")
    print(f"  faiss {spec} on CPU, N={args.faiss_n:,}: build {ivf_build:.1f} s, search "
          f"{ivf_t:.1f} s, recall@10 {recall:.3f}")


if __name__ == "__main__":
    main()

"""Selective search images/s vs the number of Ray CPU workers, and the parallel efficiency.

Each worker runs whole proposal units (``mining.proposals.proposals_unit``: read the shard,
decode, selective search in the unit's child process, filter, write), as ``orl-fast mine``
does; the driver keeps at most W units in flight. Efficiency(W) = rate(W) / (W x rate(1)),
with rate(1) measured in the same run; each count is measured --rounds times, interleaved, and
the best kept (a shared machine's other load only slows a measurement). The goal is >= 0.9 at 16
workers.

    python benchmarks/mining_selective_search.py                      # here: 1, 2 workers
    python benchmarks/mining_selective_search.py --workers 1,2,4,8,16 --images 741 --shard-size 8

With --units-per-worker K, W workers run the first K units W times over (weak scaling: every
count takes about as long as one worker on K units, and on the same images, so only the
parallelism differs), so 16 workers are measured in seconds, not in the minutes one worker needs
for all 741 images.
"""

from __future__ import annotations

import argparse
import json

from bench_common import OUT, coco_shards, machine, proposal_rate, random_stage1

from mining.proposals import proposals_unit
from orl_fast.core.defaults import MineConfig
from orl_fast.core.ray_runtime import ray_session


def _start_worker(url: str, mine: MineConfig) -> int:
    """Warm a worker: imports and its selective-search helper process (results discarded)."""
    from mining.proposals import propose_shard_isolated

    return len(propose_shard_isolated(url, mine)["keys"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    ap.add_argument("--images", type=int, default=64, help="coco-mini images (max 741)")
    ap.add_argument("--shard-size", type=int, default=8, help="images per unit")
    ap.add_argument("--ss-max-side", type=int, default=0, help="0: full size (official)")
    ap.add_argument("--min-box-size", type=int, default=96)
    ap.add_argument("--units-per-worker", type=int, default=0,
                    help="weak scaling: W workers run the first K units W times (0: every unit "
                         "once, strong scaling)")
    ap.add_argument("--rounds", type=int, default=2,
                    help="measure every worker count this many times, interleaved; keep the best")
    args = ap.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    available = -(-args.images // args.shard_size)
    if args.units_per_worker > available:
        ap.error(f"--units-per-worker {args.units_per_worker}: --images {args.images} makes "
                 f"only {available} units")
    shards = coco_shards(args.images, args.shard_size)
    ckpt = random_stage1("small", [], "resnet18")
    mine = MineConfig(ss_max_side=args.ss_max_side, min_box_size=args.min_box_size,
                      ray_num_cpus=max(counts))
    import ray

    rates = dict.fromkeys(counts, 0.0)
    with ray_session(num_cpus=max(counts)):
        task = ray.remote(proposals_unit).options(num_cpus=1, name="proposals")
        warm = ray.remote(_start_worker).options(num_cpus=1)
        first = f"{shards}/shard-000000.tar"
        ray.get([warm.remote(first, mine) for _ in range(max(counts))])
        for w in [w for _ in range(args.rounds) for w in counts]:
            weak = {"units": args.units_per_worker, "repeat": w} if args.units_per_worker else {}
            rates[w] = max(rates[w], proposal_rate(ray, task, shards, ckpt, mine,
                                                   OUT / f"ss-bench-{w}", w, **weak))
    base = rates[counts[0]] / counts[0]
    result = {**machine(), "images": args.images, "shard_size": args.shard_size,
              "units_per_worker": args.units_per_worker or "all",
              "ss_max_side": args.ss_max_side,
              "img_s": {w: round(r, 2) for w, r in rates.items()},
              "efficiency": {w: round(r / (w * base), 3) for w, r in rates.items()}}
    print(json.dumps(result))
    print(f"\nselective search (fast, max side {args.ss_max_side or 'full'}), "
          f"{args.images} images, {args.shard_size} per unit:")
    for w, r in rates.items():
        print(f"  {w:3d} workers: {r:8.2f} img/s   speed-up {r / rates[counts[0]]:5.2f}   "
              f"efficiency {r / (w * base):5.3f}")


if __name__ == "__main__":
    main()

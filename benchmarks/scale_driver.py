"""Driver memory and planning time of Stage 2 at 100k, 1M and 10M images (no pixels).

For each size, synthetic shard metadata (``tests/support/simulate.py``, ``synthetic_dataset``: the input
``index.json`` of N images in shards of --shard-size) and a mining run whose units are mocked
(``MockExecutor``: no selective search, no model; each unit writes an empty output and the
record a real unit writes, with the shard range of K = 10 random neighbours per image). The
driver code is the real one: plan, scheduler with its pair gate, finalize (pair index, summary).
Each size runs in a fresh process, which reports

- the driver's peak RSS above the process's RSS before the run (``ru_maxrss``), and its peak
  Python + numpy allocations (tracemalloc), in bytes and bytes per image;
- seconds to plan, to schedule every unit (without the mocked units' own time), to finalize;
- the resident state of the Stage 3 pair sampler's indexes (``ShardIndex`` of the images and of
  the pair records, plus the step sampler) over the same N images.

    python benchmarks/scale_driver.py                          # 100k, 1M, 10M
    python benchmarks/scale_driver.py --images 100000,1000000 --shard-size 1000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # test scaffolding: tests/support (not shipped)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(work: str, images: int) -> dict:
    """One size, in this (fresh) process."""
    from support.simulate import simulate

    from loaders.pairs import open_pairs
    from loaders.sampling import StepBatchSampler
    from loaders.shards import ShardIndex
    from mining import pipeline  # noqa: F401 - imported before the baseline is taken

    data, out = os.path.join(work, "data"), os.path.join(work, "out")
    ckpt = os.path.join(work, "ckpt.pt")
    base = _rss()
    tracemalloc.start()
    t0 = time.perf_counter()
    phases = simulate(data, out, ckpt)
    wall = time.perf_counter() - t0
    py_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base

    tracemalloc.start()
    index, records = ShardIndex(data), open_pairs(out)
    sampler = StepBatchSampler(len(index), 512, 0, 8, 0, 0, 10)
    next(iter(sampler))
    sampler_state = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(index) == len(records) == images
    return {"images": images, "shards": phases["shards"], "wall_s": round(wall, 2),
            **{k: round(v, 3) for k, v in phases.items() if k.endswith("_s")},
            "driver_rss_peak_bytes": rss_peak, "driver_py_peak_bytes": py_peak,
            "sampler_state_bytes": sampler_state}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--images", default="100000,1000000,10000000")
    ap.add_argument("--shard-size", type=int, default=1000, help="ingest.shard_size default")
    ap.add_argument("--work", default=str(ROOT / "benchmarks" / "out" / "scale"))
    ap.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.work, args.child)))
        return

    from bench_common import machine
    from support.simulate import synthetic_dataset

    rows = []
    for n in (int(x) for x in args.images.split(",")):
        work = os.path.join(args.work, str(n))
        shutil.rmtree(work, ignore_errors=True)
        synthetic_dataset(os.path.join(work, "data"), n, args.shard_size)
        with open(os.path.join(work, "ckpt.pt"), "wb") as f:
            f.write(os.urandom(1 << 20))
        done = subprocess.run([sys.executable, __file__, "--work", work, "--child", str(n)],
                              capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        shutil.rmtree(work, ignore_errors=True)
        print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({**machine(), "shard_size": args.shard_size, "rows": rows}))
    print(f"\n{'images':>10} {'shards':>7} {'plan s':>7} {'sched s':>8} {'final s':>8} "
          f"{'RSS peak':>10} {'B/img':>6} {'py peak':>9} {'B/img':>6} {'sampler':>9} {'B/img':>6}")
    for r in rows:
        n = r["images"]
        print(f"{n:>10,} {r['shards']:>7,} {r['plan_s']:>7.2f} {r['schedule_s']:>8.2f} "
              f"{r['finalize_s']:>8.2f} {r['driver_rss_peak_bytes'] / 2**20:>8.1f}Mi "
              f"{r['driver_rss_peak_bytes'] / n:>6.2f} {r['driver_py_peak_bytes'] / 2**20:>7.1f}Mi "
              f"{r['driver_py_peak_bytes'] / n:>6.2f} {r['sampler_state_bytes'] / 2**10:>7.1f}Ki "
              f"{r['sampler_state_bytes'] / n:>6.3f}")


if __name__ == "__main__":
    main()

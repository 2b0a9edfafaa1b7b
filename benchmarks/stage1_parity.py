"""Stage 1 before / after a change of its code: the same run, the same seed, two checkouts.

Each ``run`` trains ``orl-fast pretrain`` (the CLI, so any checkout with that command works) on
coco-mini with the ``small`` config shortened (64 px crops, batch 32, CPU, loss logged at every
step) and keeps its ``metrics.jsonl``; ``compare`` reads two of them and prints a table of the
loss at several steps and the verdict::

    python benchmarks/stage1_parity.py run --repo /path/to/old/checkout --name before
    python benchmarks/stage1_parity.py run --repo . --name after
    python benchmarks/stage1_parity.py compare before after      # + benchmarks/out/parity/*.png
    python benchmarks/stage1_parity.py run --repo /path/to/old/checkout --name before-seed1 --seed 1
    python benchmarks/stage1_parity.py compare before before-seed1  # the run-to-run spread

The two runs draw different random augmentations when the code that draws them changed, so the
curves cannot be equal step by step. The verdict compares them window by window (``--window``
steps): each run's step-to-step noise is the standard deviation of its loss around its own moving
average, the standard error of a window mean is that over sqrt(window), and the curves agree
when every window's difference is within 3 standard errors of the difference of two means.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out" / "parity"
SHARED_DATA = Path(os.environ.get("ORL_FAST_SHARED_DATA", ROOT.parent / "shared" / "data"))
IMAGES = SHARED_DATA / "coco-mini" / "images"
RUN = ["aug.crop_size=64", "train.batch_size=32", "train.epochs=6",
       "train.device=cpu", "train.num_workers=2", "train.log_every_steps=1",
       "train.ckpt_every_steps=1000"]
STEPS = (5, 10, 25, 50, 75, 100, 125, 138)


def _cli(repo: Path, *args: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(repo.resolve()), OMP_NUM_THREADS="2")
    subprocess.run([sys.executable, "-m", "orl_fast", *args], env=env, check=True,
                   cwd=repo.resolve())


def run(repo: Path, name: str, seed: int = 0) -> Path:
    shards = OUT / f"shards-{name}"
    if not (shards / "index.json").exists():
        _cli(repo, "ingest", str(IMAGES), str(shards), "--config", "small", "--quiet")
    out = OUT / name
    if (out / "metrics.jsonl").exists():
        (out / "metrics.jsonl").unlink()
    for old in (out / "checkpoints").glob("*") if (out / "checkpoints").exists() else []:
        old.unlink()
    _cli(repo, "pretrain", "--config", "small", f"data={shards}", f"out={out}", *RUN,
         f"train.seed={seed}")
    (out / "machine.json").write_text(json.dumps({
        "date": datetime.date.today().isoformat(), "machine": platform.platform(),
        "cpus": os.cpu_count(), "repo": str(repo.resolve()), "seed": seed}))
    return out / "metrics.jsonl"


def losses(name: str) -> np.ndarray:
    rows = [json.loads(line) for line in (OUT / name / "metrics.jsonl").read_text().splitlines()]
    return np.array([r["loss"] for r in sorted(rows, key=lambda r: r["step"])])


def noise(loss: np.ndarray, window: int) -> float:
    """Standard deviation of the loss around its centred moving average."""
    smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
    half = window // 2
    return float(np.std(loss[half:half + len(smooth)] - smooth))


def compare(before: str, after: str, window: int) -> bool:
    a, b = losses(before), losses(after)
    n = min(len(a), len(b))
    a, b = a[:n], b[:n]
    sigma = (noise(a, window), noise(b, window))
    se = float(np.hypot(*sigma) / np.sqrt(window))
    print(f"{n} steps; step-to-step noise (std around a {window}-step moving average): "
          f"{before} {sigma[0]:.4f}, {after} {sigma[1]:.4f}; standard error of the "
          f"difference of two {window}-step means: {se:.4f}\n")
    print(f"| step | {before} | {after} |")
    print("|---|---|---|")
    for s in STEPS:
        if s <= n:
            print(f"| {s} | {a[s - 1]:.4f} | {b[s - 1]:.4f} |")
    print(f"\n| steps (window means) | {before} | {after} | difference | in 3 s.e. |")
    print("|---|---|---|---|---|")
    ok = True
    for start in range(0, n - window + 1, window):
        ma, mb = a[start:start + window].mean(), b[start:start + window].mean()
        inside = abs(ma - mb) <= 3 * se
        ok &= bool(inside)
        print(f"| {start + 1}-{start + window} | {ma:.4f} | {mb:.4f} | {mb - ma:+.4f} | "
              f"{'yes' if inside else 'NO'} |")
    print(f"\nverdict: {'the curves agree within their noise' if ok else 'the curves differ'}")
    _plot(a, b, before, after, window)
    return ok


def _plot(a: np.ndarray, b: np.ndarray, before: str, after: str, window: int) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    for loss, name in ((a, before), (b, after)):
        line, = ax.plot(np.arange(1, len(loss) + 1), loss, alpha=0.3)
        smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
        ax.plot(np.arange(window, len(loss) + 1), smooth, color=line.get_color(), label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("Stage 1 loss")
    ax.legend()
    path = OUT / f"stage1-{before}-{after}.png"
    fig.savefig(path, dpi=120, bbox_inches="tight")
    print(f"plot: {path}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run", help="train one checkout, keep its metrics")
    p.add_argument("--repo", type=Path, default=ROOT)
    p.add_argument("--name", required=True)
    p.add_argument("--seed", type=int, default=0,
                   help="train.seed (another seed of one checkout: the run-to-run spread)")
    p = sub.add_parser("compare", help="compare two runs")
    p.add_argument("before")
    p.add_argument("after")
    p.add_argument("--window", type=int, default=10)
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if args.cmd == "run":
        print(run(args.repo, args.name, args.seed))
        return 0
    return 0 if compare(args.before, args.after, args.window) else 1


if __name__ == "__main__":
    raise SystemExit(main())

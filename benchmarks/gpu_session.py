"""Every GPU benchmark and the GPU tests as one command, most important first, within a budget.

Each check runs under its own time cap; a check that does not fit in what is left of
``--budget`` is skipped and listed as such. Each check writes ``NAME.log`` (its whole output)
and ``NAME.json`` (its results) beside ``session.json`` (what ran, for how long, how it ended)
in ``$OUT/gpu-session`` when ``$OUT`` is set, else in ``benchmarks/out/gpu-session``::

    python benchmarks/gpu_session.py run --budget 420        # on a machine with a GPU

The checks read the small data sets from ``../shared/data`` (or ``ORL_FAST_SHARED_DATA``); for a
machine that cannot see them, ``prepare`` copies the ones the checks need into
``benchmarks/out/gpu-data``, which ``run`` then uses. ``--site DIR`` puts extra installed packages
first on the checks' PYTHONPATH. ``run --rehearse`` runs the same checks in their CPU form (small
sizes, no CUDA needed), to try the session's wiring anywhere; ``--only`` picks checks by name.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "benchmarks" / "out" / "gpu-data"  # `prepare`: a copy of the data the checks read
PY = sys.executable
MIN_SECONDS = 60               # a check is not started with less time than this (or its cap) left


@dataclass
class Check:
    """One command of the session: ``argv`` on a GPU, ``rehearsal`` on a CPU."""

    name: str
    issue: int
    seconds: int                      # time cap
    argv: list[str]
    rehearsal: list[str] | None = None  # None: the same argv
    json_file: str | None = None      # what the command writes (``{out}`` in argv: the session
                                      # folder); None: the first JSON line of its output
    needs: tuple[str, ...] = ()       # data sets (folders of the shared data) it reads


def bench(script: str, *args: str) -> list[str]:
    return [PY, str(ROOT / "benchmarks" / script), *args]


CHECKS = [
    Check("machine", 0, 60, [PY, str(Path(__file__).resolve()), "machine"]),
    # the Stage 3 loader: b/a >= 0.95, b/c >= 3 (ResNet-50, bf16, batch 256)
    Check("stage3_loader", 5, 300,
          bench("stage3_loader.py", "--mode", "gpu", "--workers", "8", "--batch", "256",
                "--images", "2048", "--json", "{out}/stage3_loader.json"),
          bench("stage3_loader.py", "--mode", "cpu", "--workers", "2", "--batch", "8",
                "--images", "64", "--steps", "2", "--warmup", "1",
                "--json", "{out}/stage3_loader.json"),
          json_file="stage3_loader.json"),
    # RoI embedding: >= 10,000 RoIs/s, decode and crop included, vs the model alone
    Check("roi_embed", 4, 180, bench("mining_roi_embed.py", "--device", "cuda"),
          bench("mining_roi_embed.py", "--device", "cpu", "--images", "8", "--rounds", "1"),
          needs=("coco-mini",)),
    # the GPU tests: those that skip without CUDA (a rehearsal sees them collected, skipped)
    Check("gpu_tests", 4, 240,
          [PY, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-m", "gpu",
           "tests/test_mining_gpu.py", "tests/test_dali_loader.py", "tests/test_eval_gpu.py"],
          needs=("coco-mini",)),
    # kNN of 118k on the GPU (torch) and 1M with faiss on the 16 cores
    Check("knn", 4, 150,
          bench("mining_knn.py", "--n", "118287", "--faiss-n", "1000000",
                "--faiss-index", "IVF1024,Flat", "--nprobe", "32"),
          bench("mining_knn.py", "--n", "2000", "--faiss-n", "5000", "--faiss-index",
                "IVF16,Flat", "--nprobe", "4")),
    # selective search: parallel efficiency >= 0.9 at 16 Ray CPU workers (weak scaling, 3 units each)
    Check("selective_search", 4, 180,
          bench("mining_selective_search.py", "--workers", "1,2,4,8,16", "--images", "741",
                "--shard-size", "8", "--units-per-worker", "3", "--rounds", "1"),
          bench("mining_selective_search.py", "--workers", "1,2", "--images", "16",
                "--shard-size", "4", "--units-per-worker", "2", "--rounds", "1"),
          needs=("coco-mini",)),
    # Stage 1 BYOL images/s (paper settings on the GPU)
    Check("stage1", 3, 150, bench("stage1_throughput.py"),
          bench("stage1_throughput.py", "--steps", "2", "--warmup", "1", "--rounds", "1"),
          needs=("coco-mini",)),
    # RoI embedding again, if it fell short: the backbone compiled (one shape, padded batches)
    Check("roi_embed_compile", 4, 180, bench("mining_roi_embed.py", "--device", "cuda",
                                             "--compile"),
          bench("mining_roi_embed.py", "--device", "cpu", "--images", "8", "--rounds", "1",
                "--compile"),
          needs=("coco-mini",)),
    # VOC07 evaluation on the GPU
    Check("eval_voc07", 6, 240,
          bench("eval_voc07.py", "--out", "{out}/eval_voc07", "eval.device=cuda"),
          bench("eval_voc07.py", "--tasks", "", "--baseline-images", "4", "--rounds", "1",
                "--out", "{out}/eval_voc07"),
          json_file="eval_voc07/benchmark.json", needs=("voc07",)),
    # Does training learn at GPU scale? The learning protocol in the generated world, one seed
    # (last: longer than the default budget leaves; run it alone with --only learning)
    Check("learning", 12, 540,
          bench("learning.py", "world", "--out", "{out}/learning", "--device", "cuda",
                "--seeds", "0", "--images", "20000", "--e1", "40", "--e3", "20", "--batch", "256",
                "--workers", "12"),
          bench("learning.py", "world", "--out", "{out}/learning", "--seeds", "0", "--images",
                "64", "--e1", "1", "--e3", "1", "--batch", "16", "--workers", "1",
                "--probe-scenes", "40"),
          json_file="learning/results.json"),
]


def environment(site: Path | None) -> dict[str, str]:
    """PYTHONPATH: the installed wheels (``site``, when there) and the checkout; the data."""
    env = dict(os.environ)
    paths = [str(site)] * bool(site and site.is_dir()) + [str(ROOT)]
    env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in [env.get("PYTHONPATH")] if p])
    if DATA.is_dir():
        env["ORL_FAST_SHARED_DATA"] = str(DATA)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def first_json(text: str) -> dict | None:
    """The first line of ``text`` that is a JSON object (what the benchmarks print first)."""
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None


def run_check(check: Check, argv: list[str], out: Path, timeout: float,
              env: dict[str, str]) -> dict:
    """Run one check in its own process group (killed whole on timeout). Its output goes straight
    to NAME.log, so a session cut short still brings back what each check printed."""
    argv = [a.replace("{out}", str(out)) for a in argv]
    log_path = out / f"{check.name}.log"
    t0 = time.monotonic()
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(argv) + "\n")
        log.flush()
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            proc.wait(timeout=timeout)
            status = "passed" if proc.returncode == 0 else "failed"
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):  # (it may end meanwhile)
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            status = "timed out"
    text = log_path.read_text(errors="replace").split("\n", 1)[-1]
    result = {"name": check.name, "issue": check.issue, "status": status,
              "rc": proc.returncode, "seconds": round(time.monotonic() - t0, 1),
              "log": f"{check.name}.log"}
    json_path = out / (check.json_file or f"{check.name}.json")
    found = None if check.json_file else first_json(text)
    if found is not None:
        json_path.write_text(json.dumps(found, indent=2))
    if json_path.exists():
        result["json"] = str(json_path.relative_to(out))
    tail = [x for x in text.strip().splitlines() if x.strip()][-1:]
    result["last_line"] = tail[0][:300] if tail else ""
    return result


def run_session(checks: list[Check], budget: float, out: Path, rehearse: bool,
                site: Path | None = None) -> list[dict]:
    """Checks in order, each capped by its ``seconds`` and by what is left of ``budget``."""
    out.mkdir(parents=True, exist_ok=True)
    env = environment(site)
    shared = Path(env.get("ORL_FAST_SHARED_DATA", ROOT.parent / "shared" / "data"))
    t0, results = time.monotonic(), []
    for check in checks:
        left = budget - (time.monotonic() - t0)
        missing = [d for d in check.needs if not (shared / d).is_dir()]
        argv = check.rehearsal if rehearse and check.rehearsal is not None else check.argv
        if missing:
            result = {"name": check.name, "status": "skipped",
                      "reason": f"no data: {', '.join(missing)} (see `prepare`)"}
        elif left < min(check.seconds, MIN_SECONDS):
            result = {"name": check.name, "status": "skipped",
                      "reason": f"{left:.0f} s of the budget left"}
        else:
            print(f"[{time.monotonic() - t0:6.0f} s] {check.name} (cap {min(check.seconds, left):.0f}"
                  " s) ...", flush=True)
            result = run_check(check, argv, out, min(check.seconds, left), env)
        result.setdefault("issue", check.issue)
        results.append(result)
        print(f"         {check.name}: {result['status']} {result.get('seconds', '')}"
              f" {result.get('reason', result.get('last_line', ''))}", flush=True)
        (out / "session.json").write_text(json.dumps(
            {"budget_s": budget, "rehearsal": rehearse, "checks": results}, indent=2))
    return results


def machine() -> dict:
    """What the checks ran on: GPU, CPUs, versions of what the session imports."""
    import importlib.metadata as md

    import torch

    versions = {}
    for dist in ("torch", "torchvision", "nvidia-dali-cuda130", "ray", "faiss-cpu",
                 "opencv-contrib-python-headless", "webdataset", "numpy"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            versions[dist] = None
    smi = shutil.which("nvidia-smi")
    gpus = (subprocess.run([smi, "-L"], check=False, capture_output=True, text=True).stdout.strip()
            if smi else None)
    return {"gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "nvidia_smi": gpus, "cpus": os.cpu_count(), "python": sys.version.split()[0],
            "versions": versions}


def prepare(voc: bool) -> None:
    """Copy the data sets the checks read into DATA (for a machine without ../shared/data)."""
    shared = Path(os.environ.get("ORL_FAST_SHARED_DATA", ROOT.parent / "shared" / "data"))
    shutil.rmtree(DATA, ignore_errors=True)
    for name in ["coco-mini"] + ["voc07"] * voc:
        shutil.copytree(shared / name, DATA / name)
    print(f"{DATA}: {mib(DATA):.0f} MiB; `run` reads the data from there")


def mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help=f"copy the data the checks read into {DATA}")
    p.add_argument("--voc", action="store_true", help="also voc07 (eval_voc07)")
    r = sub.add_parser("run", help="run the checks (a GPU machine; --rehearse anywhere)")
    r.add_argument("--budget", type=float, default=420, help="seconds for all the checks")
    r.add_argument("--only", default="", help="comma-separated check names")
    r.add_argument("--rehearse", action="store_true", help="the CPU form of every check")
    r.add_argument("--out", help="default $OUT/gpu-session or benchmarks/out/gpu-session")
    r.add_argument("--site", default="",
                   help="a folder of installed packages, first on PYTHONPATH (default: none)")
    sub.add_parser("machine", help="print what this machine is (JSON)")
    args = ap.parse_args()
    if args.command == "prepare":
        prepare(args.voc)
        return 0
    if args.command == "machine":
        print(json.dumps(machine()))
        return 0
    names = [n for n in args.only.split(",") if n]
    unknown = set(names) - {c.name for c in CHECKS}
    if unknown:
        ap.error(f"--only: no check named {', '.join(sorted(unknown))}")
    checks = [c for c in CHECKS if not names or c.name in names]
    base = Path(os.environ["OUT"]) if os.environ.get("OUT") else ROOT / "benchmarks" / "out"
    out = Path(args.out) if args.out else base / "gpu-session"
    results = run_session(checks, args.budget, out, args.rehearse,
                          Path(args.site) if args.site else None)
    print(json.dumps({r["name"]: r["status"] for r in results}))
    return 0 if all(r["status"] in ("passed", "skipped") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

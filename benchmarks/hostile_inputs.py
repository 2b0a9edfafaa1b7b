"""Reliability against hostile input: every case through the real CLI, in a subprocess, with a
timeout; prints the table of benchmarks/RESULTS.md ("Reliability").

Each case runs ``python -m orl_fast ...`` on inputs made on the spot (tests/support/hostile.py:
FIFOs, a link to /dev/zero, cut and fake tars, tars with link and device members, a 13000 x
13000 PNG, a corrupt index, garbage checkpoints, resumes with another config, two ingests into
one directory, kill -9 of ingest, ...) and records: the exit code against the one expected, the
stderr lines (one expected on failure), whether a Python traceback reached the user, whether it
ran into its timeout (a hang), and the case's own data check (nothing of the inputs lost,
nothing written where the step failed, no orphan still writing)::

    python benchmarks/hostile_inputs.py                 # the table, ~5 min on 2 cores
    python benchmarks/hostile_inputs.py --keep DIR      # keep the cases' files in DIR

Goal: 0 crashes, 0 tracebacks shown, 0 hangs, 0 data lost.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from support import hostile
from support.common import SHARED_DATA, TINY_OVERRIDES
from support.loopback import _stat, descendants

TIMEOUT = 180
TINY = ["--config", "small", *TINY_OVERRIDES]


@dataclass
class Outcome:
    rc: int | None            # None: killed at the timeout
    stdout: str
    stderr: str
    seconds: float
    peak_rss_mb: float = 0.0


@dataclass
class Case:
    name: str
    run: Callable[[Path], tuple[Outcome, int, str]]  # -> (outcome, expected rc, data problem)
    row: dict = field(default_factory=dict)


def env() -> dict[str, str]:
    e = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    e.setdefault("OMP_NUM_THREADS", "1")
    e.pop("ORL_FAST_DEBUG", None)
    return e


def cli(*args: str, timeout: float = TIMEOUT, extra_env: dict | None = None) -> Outcome:
    """``python -m orl_fast ARGS`` with a timeout (the whole process group killed at it)."""
    t = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "orl_fast", *args],
                            env={**env(), **(extra_env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        rc = None
    return Outcome(rc, out, err, time.monotonic() - t)


def summary(o: Outcome) -> dict:
    return json.loads(o.stdout.splitlines()[0]) if o.stdout.strip().startswith("{") else {}


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()} if root.exists() else {}


# ----------------------------------------------------------------------------- cases


def cases(shards: Path, run1: Path, tmp: Path) -> list[Case]:
    images = hostile.source_tree(tmp / "tree")
    (tmp / "a_file").write_text("x")
    (tmp / "bad.yaml").write_text("train: [1\n")
    (tmp / "garbage.pt").write_bytes(b"garbage\n")
    broken_index = Path(shutil.copytree(shards, tmp / "broken-index"))
    (broken_index / "index.json").write_text('{"version": 1, "shards": [')
    missing_shard = Path(shutil.copytree(shards, tmp / "missing-shard"))
    (missing_shard / "shard-000001.tar").unlink()
    cli("ingest", str(images), str(tmp / "other"), "--quiet")  # other shards (4 images)

    def fails(name: str, *args: str, out: Path | None = None, expect: int = 2) -> Case:
        """A bad input: exit 2, one line; nothing written at ``out``."""
        def run(_: Path) -> tuple[Outcome, int, str]:
            o = cli(*args)
            return o, expect, (f"{out} written" if out is not None and out.exists() else "")
        return Case(name, run)

    def ingests(name: str, src: Path, written: int, ignored: int, *extra: str) -> Case:
        def run(_: Path) -> tuple[Outcome, int, str]:
            o = cli("ingest", str(src), str(tmp / f"out-{name}"), "--quiet", *extra)
            s = summary(o)
            lost = ("" if s.get("written") == written and s.get("ignored_files") == ignored
                    else f"written {s.get('written')} (want {written}), ignored "
                         f"{s.get('ignored_files')} (want {ignored})")
            return o, 0, lost
        return Case(name, run)

    def resume_refused(name: str, *extra: str) -> Case:
        def run(_: Path) -> tuple[Outcome, int, str]:
            before = tree(run1)
            o = cli("pretrain", *TINY, f"data={shards}", f"out={run1}", "train.max_steps=2", *extra)
            return o, 2, "" if tree(run1) == before else "the run directory changed"
        return Case(name, run)

    out = tmp / "never"
    return [
        fails("ingest: source does not exist", "ingest", "/nonexistent/dir", str(out), out=out),
        fails("pretrain: data does not exist", "pretrain", *TINY, "data=/nonexistent",
              f"out={out}", out=out),
        fails("pretrain: data is a folder of images", "pretrain", *TINY, f"data={images}",
              f"out={out}", out=out),
        fails("ingest: OUT is a file", "ingest", str(images), str(tmp / "a_file")),
        fails("pretrain: corrupt index.json", "pretrain", *TINY, f"data={broken_index}",
              f"out={out}", out=out),
        fails("pretrain: index lists a missing shard", "pretrain", *TINY, f"data={missing_shard}",
              f"out={out}", out=out),
        fails("config: YAML syntax error", "config", "--config", str(tmp / "bad.yaml")),
        fails("pretrain: batch larger than the data", "pretrain", *TINY, f"data={shards}",
              f"out={out}", "train.batch_size=128", out=out),
        fails("export: garbage checkpoint", "export", "--format", "torchvision", "--ckpt",
              str(tmp / "garbage.pt"), "--out", str(out / "x.pth"), out=out),
        fails("mine: garbage checkpoint", "mine", "--config", "small", f"data={shards}",
              f"ckpt={tmp / 'garbage.pt'}", f"out={out}", out=out),
        fails("train: pairs missing", "train", *TINY, f"data={shards}", f"pairs={tmp / 'none'}",
              f"out={out}", out=out),
        Case("train: pairs mined from other shards", lambda t: _other_pairs(shards, tmp, out)),
        resume_refused("pretrain: resume with another batch size", "train.batch_size=16"),
        resume_refused("pretrain: resume with another backbone", "model.backbone=resnet34"),
        resume_refused("pretrain: resume with other data", f"data={tmp / 'other'}"),
        Case("pretrain: resume cuts the log", lambda t: _resume_log(shards, run1)),
        ingests("ingest: FIFO, /dev/zero link, symlink loops", images, 4, 7),
        Case("ingest: list naming a FIFO and /dev/zero", lambda t: _list_source(images, tmp)),
        ingests("ingest: truncated tar", hostile.truncated_tar(tmp / "cut.tar"), 2, 1),
        ingests("ingest: tar cut in a header", hostile.tar_cut_in_a_header(tmp / "cuth.tar"), 2, 1),
        fails("ingest: not a tar named .tar", "ingest", str(hostile.not_a_tar(tmp / "fake.tar")),
              str(out), out=out),
        ingests("ingest: tar with link and device members",
                hostile.tar_with_links(tmp / "links.tar"), 2, 4),
        Case("ingest: 13000x13000 PNG, ingest.max_side=2048", lambda t: _huge_png(tmp)),
        Case("ingest: two ingests into one OUT", lambda t: _two_ingests(tmp)),
        Case("ingest: kill -9 of the main process", lambda t: _kill_ingest(tmp)),
        Case("export: latest.json pointing outside its run", lambda t: _latest_outside(run1, tmp)),
        Case("submit: token over plain http to another host", lambda t: _submit_http()),
    ]


def _other_pairs(shards: Path, tmp: Path, out: Path) -> tuple[Outcome, int, str]:
    from support.orl import random_pairs

    from loaders.shards import ShardIndex

    other = tmp / "other"
    mined = random_pairs(str(other), str(tmp / "mined-other"))
    (Path(mined) / "manifest.json").write_text(json.dumps(
        {"inputs": {"data": str(other), "data_index_sha256": ShardIndex(str(other)).digest}}))
    o = cli("train", *TINY, "orl.patch_size=16", f"data={shards}", f"pairs={mined}", f"out={out}")
    return o, 2, f"{out} written" if out.exists() else ""


def _resume_log(shards: Path, run1: Path) -> tuple[Outcome, int, str]:
    with open(run1 / "metrics.jsonl", "a") as f:  # a killed run logged step 3, then died
        f.write('{"step": 3, "loss": 1000000.0}\n')
    o = cli("pretrain", *TINY, f"data={shards}", f"out={run1}", "train.max_steps=3")
    steps = [json.loads(line)["step"] for line in (run1 / "metrics.jsonl").read_text().splitlines()]
    return o, 0, "" if steps == [1, 2, 3] else f"metrics.jsonl steps {steps}"


def _list_source(images: Path, tmp: Path) -> tuple[Outcome, int, str]:
    listing = tmp / "list.txt"
    listing.write_text("".join(f"{images / n}\n" for n in ("img0.jpg", "fifo.jpg", "zero.jpg",
                                                           "loop_a.jpg", "img1.jpg")))
    o = cli("ingest", str(listing), str(tmp / "out-list"), "--quiet")
    s = summary(o)
    return o, 0, "" if (s.get("written"), s.get("skipped_images")) == (2, 3) else str(s)


def _huge_png(tmp: Path) -> tuple[Outcome, int, str]:
    src = tmp / "huge"
    src.mkdir(exist_ok=True)
    (src / "huge.png").write_bytes(hostile.png_blank(13000, 13000))
    t = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "orl_fast", "ingest", str(src),
                             str(tmp / "out-huge"), "--quiet", "ingest.max_side=2048",
                             "ingest.workers=1"], env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    timer = threading.Timer(TIMEOUT, proc.kill)
    timer.start()
    _, status, usage = os.wait4(proc.pid, 0)  # its peak memory with its exit status
    timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    o = Outcome(proc.returncode, proc.stdout.read(), proc.stderr.read(), time.monotonic() - t,
                peak_rss_mb=usage.ru_maxrss / 1024)
    meta = {}
    if summary(o).get("written") == 1:
        from loaders.shards import ShardIndex

        meta = ShardIndex(str(tmp / "out-huge")).meta(0)
    size = (meta.get("width"), meta.get("orig_width"))
    return o, 0, "" if size == (2048, 13000) else f"stored {size}"


def _ingest_args(tmp: Path, out: Path, workers: int = 1) -> list[str]:
    names = sorted(os.listdir(SHARED_DATA / "coco-mini" / "images"))
    listing = tmp / "coco.txt"
    listing.write_text("".join(f"{SHARED_DATA / 'coco-mini' / 'images' / n}\n" for n in names))
    return [sys.executable, "-m", "orl_fast", "ingest", str(listing), str(out), "--quiet",
            "ingest.shard_size=8", f"ingest.workers={workers}"]


def _two_ingests(tmp: Path) -> tuple[Outcome, int, str]:
    """Two ingests started together into one OUT: one runs, the other stops at start-up."""
    ref, out = tmp / "coco-ref", tmp / "coco-two"
    subprocess.run(_ingest_args(tmp, ref), env=env(), check=True, capture_output=True)
    t = time.monotonic()
    both = [subprocess.Popen(_ingest_args(tmp, out), env=env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]
    ended = [(p.wait(timeout=TIMEOUT), p.stdout.read(), p.stderr.read()) for p in both]
    ended.sort(key=lambda e: e[0] != 2)  # the one that stopped first
    rc, stdout, stderr = ended[0]
    problems = [] if sorted(e[0] for e in ended) == [0, 2] else [
        f"exit codes {[e[0] for e in ended]}"]
    if tree(out) != tree(ref):
        problems.append("the ingest that ran differs from a lone run")
    return Outcome(rc, stdout, stderr, time.monotonic() - t), 2, "; ".join(problems)


def _kill_ingest(tmp: Path) -> tuple[Outcome, int, str]:
    out = tmp / "coco-killed"
    t = time.monotonic()
    proc = subprocess.Popen(_ingest_args(tmp, out, workers=2), env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline and not (out.exists() and any(
            n.endswith(".tar") for n in os.listdir(out))):
        time.sleep(0.01)
    workers = descendants(proc.pid) - {proc.pid}
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(5)
    alive = [p for p in workers if (st := _stat(p)) is not None and st[2] != "Z"]
    tars = len([n for n in os.listdir(out) if n.endswith(".tar")])
    time.sleep(3)
    grew = len([n for n in os.listdir(out) if n.endswith(".tar")]) - tars
    for p in alive:
        os.kill(p, signal.SIGKILL)
    o = Outcome(-9, "", "", time.monotonic() - t)
    rerun = cli(*_ingest_args(tmp, out)[3:])  # and a rerun completes it
    problems = ([f"{len(alive)} of {len(workers)} workers alive 5 s later"] if alive else []) + (
        [f"{grew} tars written after the kill"] if grew else []) + (
        [f"rerun exited {rerun.rc}"] if rerun.rc != 0 else [])
    return o, -9, "; ".join(problems)


def _latest_outside(run1: Path, tmp: Path) -> tuple[Outcome, int, str]:
    run = Path(shutil.copytree(run1, tmp / "escaping-run"))
    (run / "checkpoints" / "latest.json").write_text('{"step": 2, "file": "../../x.pt"}')
    o = cli("export", "--format", "torchvision", "--ckpt", str(run), "--out", str(tmp / "w.pth"))
    return o, 2, "exported" if (tmp / "w.pth").exists() else ""


def _submit_http() -> tuple[Outcome, int, str]:
    o = cli("submit", "--address", "http://192.0.2.1:8265", "--no-wait", "--", "true",
            extra_env={"RAY_AUTH_TOKEN": "secret-token"}, timeout=60)
    return o, 2, "sent" if "submitted" in o.stdout else ""


# ----------------------------------------------------------------------------- table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keep", help="keep the cases' files in this directory")
    args = ap.parse_args(argv)
    tmp = Path(args.keep or tempfile.mkdtemp(prefix="orl-fast-hostile-"))
    tmp.mkdir(parents=True, exist_ok=True)
    images = SHARED_DATA / "coco-mini" / "images"
    names = sorted(os.listdir(images))[:64]
    (tmp / "64.txt").write_text("".join(f"{images / n}\n" for n in names))
    shards, run1 = tmp / "shards", tmp / "run1"
    for prep in (cli("ingest", str(tmp / "64.txt"), str(shards), "--quiet",
                     "ingest.shard_size=32"),
                 cli("pretrain", *TINY, f"data={shards}", f"out={run1}", "train.max_steps=2")):
        if prep.rc != 0:
            print(prep.stderr, file=sys.stderr)
            return 1
    rows, totals = [], {"crashes": 0, "tracebacks": 0, "hangs": 0, "data lost": 0}
    for case in cases(shards, run1, tmp):
        o, expected, lost = case.run(tmp)
        lines = [line for line in o.stderr.splitlines() if line.strip()]
        crash = o.rc is not None and o.rc != expected
        traceback = "Traceback (most recent call last)" in o.stderr
        hang = o.rc is None
        totals["crashes"] += crash
        totals["tracebacks"] += traceback
        totals["hangs"] += hang
        totals["data lost"] += bool(lost)
        said = (lines[-1].removeprefix("orl-fast: ")[:90] + ("..." if len(lines[-1]) > 100 else "")
                if lines and expected else "")
        rows.append([case.name, f"{o.rc} ({expected})", str(len(lines)) if expected else "-",
                     "yes" if traceback else "no", "yes" if hang else "no", lost or "none",
                     f"{o.seconds:.1f}" + (f", {o.peak_rss_mb:.0f} MB" if o.peak_rss_mb else ""),
                     said.replace("|", "/")])
    print(f"{datetime.date.today()}, {platform.node()}: Python {platform.python_version()}, "
          f"{os.cpu_count()} CPUs\n")
    print("| case | exit (expected) | stderr lines | traceback | hang | data lost | seconds | "
          "what the user reads |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print(f"\ninputs tried: {len(rows)}; crashes: {totals['crashes']}; tracebacks shown: "
          f"{totals['tracebacks']}; hangs: {totals['hangs']}; data lost: {totals['data lost']}")
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if not any(totals.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())

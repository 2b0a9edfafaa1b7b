"""Stage 2 on Ray, end to end on 64 coco-mini images with a tiny model.

The reference is the same mining run in-process (``mine.executor=local``); Ray runs must
reproduce it byte for byte although the driver is killed with SIGKILL and rerun, a model actor
is killed mid-unit (Ray restarts it and redoes the unit), or a selective-search worker is
(Ray retries the task).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from support.common import orl_fast_cmd, subprocess_env
from support.mining import MINE, MODEL, make_ckpt, mine_config, output_digests

from loaders.pairs import open_pairs, read_record
from mining import pipeline
from orl_fast.core.ray_runtime import ray_session

pytestmark = pytest.mark.slow

COCO = ["mine.ss_max_side=128", "mine.min_box_size=32"]


@pytest.fixture(scope="module")
def reference(coco_shards, tmp_path_factory):
    root = tmp_path_factory.mktemp("ray")
    ckpt = make_ckpt(str(root / "stage1"))
    out = str(root / "reference")
    summary = pipeline.run(mine_config(coco_shards, ckpt, out, *COCO, "mine.executor=local"),
                           progress=False)
    assert summary["images"] == 64 and summary["decode_failed"]["embed"] == 0
    assert summary["pairs"]["records"] == 64 and summary["knn"]["k"] == 10
    index = open_pairs(out)
    records = [read_record(index, index.key_at(i)) for i in range(len(index))]
    assert len(records) == 64 and all(len(r.neighbors) == 10 for r in records)
    assert sum(len(r.boxes) for r in records) == summary["proposals"]["boxes"]
    assert sum(len(r.pair_score) for r in records) == summary["pairs"]["pairs"] > 0
    return ckpt, output_digests(out)


def _units(out, stage: str) -> list[str]:
    d = os.path.join(out, "units", stage)
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


def _descendants(root: int) -> dict[int, str]:
    """pid -> process title of every descendant of ``root`` (Ray sets titles like ray::name)."""
    parent, title = {}, {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                parent[int(pid)] = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                title[int(pid)] = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
    out, frontier = {}, [root]
    while frontier:
        p = frontier.pop()
        for child, pp in parent.items():
            if pp == p and child not in out:
                out[child] = title.get(child, "")
                frontier.append(child)
    return out


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray for this module's in-process runs (pipeline.run uses a running session)."""
    with ray_session(num_cpus=2):
        yield


def _kill_when_seen(prefixes: list[str]) -> tuple[list[str], threading.Event]:
    """Kill (SIGKILL) the first descendant process titled with each prefix, in order."""
    killed: list[str] = []
    stop = threading.Event()

    def killer():
        while len(killed) < len(prefixes) and not stop.is_set():
            target = prefixes[len(killed)]
            for pid, title in _descendants(os.getpid()).items():
                if title.startswith(target):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(target)
                    break
            time.sleep(0.02)

    threading.Thread(target=killer, daemon=True).start()
    return killed, stop


def _stray_temporaries(out: str) -> list[str]:
    return [n for d in os.listdir(out) if os.path.isdir(os.path.join(out, d))
            for n in os.listdir(os.path.join(out, d)) if ".tmp-" in n]


def test_kill9_then_resume_with_a_killed_actor(reference, coco_shards, tmp_path, ray_cluster):
    """``orl-fast mine`` killed with SIGKILL after its first embedding unit, then resumed while
    the model actor is killed mid-RoI-unit: finished units are kept, the output is identical."""
    ckpt, expected = reference
    out = str(tmp_path / "mined")
    cmd = orl_fast_cmd("mine", "--config", "small", "--quiet", *MODEL, *MINE, *COCO,
                       f"data={coco_shards}", f"ckpt={ckpt}", f"out={out}")
    proc = subprocess.Popen(cmd, env=subprocess_env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 300
        while not _units(out, "embed"):
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.time() < deadline, "no embedding unit finished in 300 s"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and its local Ray instance
        proc.wait()
    assert not os.path.exists(os.path.join(out, "summary.json"))
    finished = {s: {n: os.stat(os.path.join(out, "units", s, n)).st_mtime_ns
                    for n in _units(out, s)} for s in ("embed", "proposals", "roi")}
    assert finished["embed"] and len(finished["roi"]) < 2

    killed, stop = _kill_when_seen(["ray::Miner.roi"])
    try:
        summary = pipeline.run(mine_config(coco_shards, ckpt, out, *COCO), progress=False)
    finally:
        stop.set()
    assert killed == ["ray::Miner.roi"]  # the actor was restarted and its unit redone
    assert summary["pairs"]["records"] == 64
    assert output_digests(out) == expected
    for stage, records in finished.items():  # units finished before the kill were kept
        for name, mtime in records.items():
            assert os.stat(os.path.join(out, "units", stage, name)).st_mtime_ns == mtime
    with open(os.path.join(out, "manifest.json")) as f:
        runs = json.load(f)["runs"]
    assert len(runs) == 1 and runs[0]["executor"] == "ray"  # the killed run never finished
    # >=: a worker of the killed run may still finish the unit it was running (atomically).
    assert runs[0]["units_skipped"]["embed"] >= len(finished["embed"])
    assert not _stray_temporaries(out)


def test_killed_task_is_retried(reference, coco_shards, tmp_path, ray_cluster):
    """A selective-search worker killed mid-unit: Ray retries the task, nothing is lost or
    duplicated."""
    ckpt, expected = reference
    out = str(tmp_path / "mined")
    killed, stop = _kill_when_seen(["ray::proposals"])
    try:
        summary = pipeline.run(mine_config(coco_shards, ckpt, out, *COCO), progress=False)
    finally:
        stop.set()
    assert killed == ["ray::proposals"]
    assert summary["pairs"]["records"] == 64
    assert output_digests(out) == expected
    assert not _stray_temporaries(out)


def test_a_private_ray_starts_without_the_token_notice(tmp_path):
    """Ray announces at every local start that it enabled token authentication (its default);
    the private Ray of orl-fast keeps it enabled and starts quietly."""
    env = {k: v for k, v in subprocess_env().items() if k != "RAY_AUTH_MODE"}
    code = ("from orl_fast.core.ray_runtime import ray_session\n"
            "with ray_session(num_cpus=1):\n    import ray; print(ray.is_initialized())\n")
    proc = subprocess.run([sys.executable, "-c", code], env={**env, "HOME": str(tmp_path)},
                          capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("True")
    assert "Token authentication" not in proc.stderr

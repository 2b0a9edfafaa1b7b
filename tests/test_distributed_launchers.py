"""Training beyond one process: torchrun across two "nodes" on loopback, and Ray Train.

Each launcher must compute what a single process computes with the same global batch (SyncBN
over the ranks, data sharded by rank): in fp64, so the comparison is exact up to rounding (see
test_stage1's DDP test for why not fp32).
"""

from __future__ import annotations

import json
import subprocess
import threading
import time

import pytest
import torch
from support.common import TINY_OVERRIDES, orl_fast_cmd, require_full_ray, subprocess_env
from support.loopback import descendants, is_loopback, listening_addresses
from support.orl import TINY_ORL, random_pairs

from orl_fast.core import checkpoint
from orl_fast.core.ray_runtime import free_port

pytestmark = pytest.mark.slow

EXACT = ["train.max_steps=3", "train.precision=fp64", "train.deterministic=true",
         "train.epochs=2", "train.num_workers=1"]


def _pretrain(shards: str, out, *extra: str) -> list[str]:
    return ["pretrain", "--config", "small", *TINY_OVERRIDES, f"data={shards}", f"out={out}",
            *EXACT, *extra]


def _run(cmd: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, check=False,
                          timeout=timeout)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-4000:])
    return done


def _metrics(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _assert_same_run(one, two) -> None:
    m1, m2 = _metrics(one), _metrics(two)
    assert [m["step"] for m in m2] == [1, 2, 3]
    for a, b in zip(m1, m2):
        assert a["loss"] == pytest.approx(b["loss"], abs=2e-6)  # logged with 6 decimals
    a, b = checkpoint.load(str(one)), checkpoint.load(str(two))
    assert a["step"] == b["step"] == 3
    for k, v in a["model"].items():
        if v.is_floating_point() and "running_var" not in k:
            assert torch.allclose(v, b["model"][k], rtol=1e-9, atol=1e-11), k


@pytest.fixture(scope="module")
def single_process(coco_shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "run"
    _run(orl_fast_cmd(*_pretrain(coco_shards, out)))
    return out


def test_torchrun_two_nodes_on_loopback_equal_one_process(coco_shards, single_process, tmp_path):
    """Two torchrun launchers, one per "node" (--nnodes 2, --node_rank 0 / 1), static
    rendezvous on 127.0.0.1: the multi-node launch a cluster uses, on one machine."""
    port = free_port()
    out = tmp_path / "two-nodes"
    procs = [subprocess.Popen(
        ["torchrun", "--nnodes=2", "--nproc_per_node=1", f"--node_rank={rank}",
         "--master_addr=127.0.0.1", f"--master_port={port}", "-m", "orl_fast",
         *_pretrain(str(coco_shards), out)],
        env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for rank in (0, 1)]
    results = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err[-4000:]
    _assert_same_run(single_process, out)


def _run_watching_sockets(cmd: list[str], timeout: float = 600):
    """Run ``cmd``; also return every (ip, port) its process tree listened on meanwhile."""
    proc = subprocess.Popen(cmd, env=subprocess_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    seen: set[tuple[str, int]] = set()
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            seen.update((ip, port) for _, ip, port in listening_addresses(descendants(proc.pid)))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        stop.set()
        watcher.join()
    assert proc.returncode == 0, (out[-2000:], err[-4000:])
    return out + err, seen


def test_ray_train_two_gloo_workers_equal_one_process(coco_shards, single_process, tmp_path):
    require_full_ray("ray.train")
    out = tmp_path / "ray-train"
    log, listened = _run_watching_sockets(orl_fast_cmd(*_pretrain(
        coco_shards, out, "train.launcher=ray", "train.ray_workers=2")))
    assert "stage 1 checkpoint:" in log and "[ray train] 2 ranks, gloo, store on 127.0.0.1:" in log
    _assert_same_run(single_process, out)
    # Ray (a private instance), its dashboard, the ranks' store: all on the loopback interface.
    assert listened and all(is_loopback(ip) for ip, _ in listened), sorted(listened)
    saved = checkpoint.load(str(out))["config"]["train"]
    assert saved["launcher"] == "direct" and saved["ray_workers"] == 2  # what each rank ran


def test_ray_train_stage3_dali_two_workers_equal_one_process(coco_shards, tmp_path):
    """Stage 3 (ORL) with the DALI loader (its CPU backend) through Ray Train: each rank's DALI
    pipeline renders its part of the global batch, so 2 ranks train what 1 process does; then
    a rerun resumes and finishes."""
    require_full_ray("ray.train")
    pairs = random_pairs(coco_shards, str(tmp_path / "mined"))

    def args(out, *extra):
        return orl_fast_cmd("train", "--config", "small", *TINY_OVERRIDES, *TINY_ORL,
                            f"data={coco_shards}", f"pairs={pairs}", f"out={out}",
                            "orl.loader=dali", "train.precision=fp64",
                            "train.deterministic=true", *extra)

    one, two = tmp_path / "one", tmp_path / "two"
    _run(args(one, "train.max_steps=3"))
    _run(args(two, "train.max_steps=2", "train.launcher=ray", "train.ray_workers=2"))
    assert checkpoint.load(str(two))["step"] == 2
    done = _run(args(two, "train.max_steps=3", "train.launcher=ray", "train.ray_workers=2"))
    assert "resumed from" in done.stdout + done.stderr
    assert checkpoint.load(str(two))["stage"] == "stage3"
    _assert_same_run(one, two)


def test_ray_train_batch_must_split_over_workers():
    from orl_fast.core.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"^train\.batch_size: 8 must be divisible by "
                                          r"train\.ray_workers=3"):
        load_config("small", ["train.batch_size=8", "train.launcher=ray", "train.ray_workers=3"])

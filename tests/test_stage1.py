"""Stage 1 training: checkpoints, kill -9 + resume equals an uninterrupted run, DDP over gloo."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from support.common import TINY_OVERRIDES, orl_fast_cmd, subprocess_env

from loaders.dali_loader import ORLSource
from loaders.orl_samples import SampleBuilder
from loaders.orl_torch import ORLDataset
from loaders.sampling import StepBatchSampler
from loaders.shards import ShardIndex
from orl_fast.core import checkpoint
from orl_fast.core.distributed import CrossRankBatchNorm, convert_sync_batchnorm, init_runtime
from orl_fast.core.models import IMAGE_ONLY
from orl_fast.core.ray_runtime import free_port
from orl_fast.training import runs, stage1


def metrics(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_checkpoints_logs_and_keep_last(coco_shards, tiny_config, tmp_path):
    cfg = tiny_config(f"data={coco_shards}", f"out={tmp_path}", "train.max_steps=6",
                      "train.keep_last=2")
    path = stage1.run(cfg)
    assert path.endswith("ckpt-00000006.pt")
    names = sorted(os.listdir(tmp_path / "checkpoints"))
    assert names == ["ckpt-00000004.pt", "ckpt-00000006.pt", "latest.json"]
    state = checkpoint.load(str(tmp_path))  # torch.load(weights_only=True) inside
    assert state["step"] == 6 and state["stage"] == "stage1"
    assert state["config"] == cfg.to_dict() and state["total_steps"] == 8  # 64 images / 8
    sd = state["model"]
    assert {k.split(".")[0] for k in sd} == {"online", "predictor", "target"}
    assert any("momentum_buffer" in str(v) for v in state["optimizer"]["state"].values())
    # the target lags the online network (EMA) but was created from it
    assert not torch.equal(sd["online.backbone.conv1.weight"], sd["target.backbone.conv1.weight"])
    assert sd["online.projector.0.weight"].shape == sd["target.projector.0.weight"].shape
    assert set(state["rng"]) >= {"torch", "numpy", "python"}
    logged = metrics(tmp_path)
    assert [m["step"] for m in logged] == [1, 2, 3, 4, 5, 6]
    assert all(0 < m["loss"] < 8 and m["img_per_s"] > 0 for m in logged)
    assert logged[0]["lr"] < logged[-1]["lr"] or cfg.optim.warmup_epochs == 0
    assert any(n.startswith("events.out.tfevents") for n in os.listdir(tmp_path / "tb"))
    backbone = checkpoint.backbone_state_dict(state)
    assert "conv1.weight" in backbone and not any(k.startswith("fc") for k in backbone)


def _train_args(shards: str, out, *extra: str) -> list[str]:
    return orl_fast_cmd("pretrain", "--config", "small", *TINY_OVERRIDES, f"data={shards}",
                        f"out={out}", "train.epochs=2", "train.max_steps=12", "train.deterministic=true",
                        "train.num_workers=1", *extra)


def test_kill_9_then_resume_equals_uninterrupted(coco_shards, tmp_path):
    env = subprocess_env()
    subprocess.run(_train_args(coco_shards, tmp_path / "ref"), check=True, env=env,
                   capture_output=True)

    out = tmp_path / "killed"
    proc = subprocess.Popen(_train_args(coco_shards, out), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    latest = out / "checkpoints" / "latest.json"
    deadline = time.time() + 120
    while time.time() < deadline and not latest.exists():
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert latest.exists(), "no checkpoint was written before the deadline"
    killed_at = json.loads(latest.read_text())["step"]
    assert killed_at < 12, "the run finished before the kill: test inconclusive"

    done = subprocess.run(_train_args(coco_shards, out), check=True, env=env,
                          capture_output=True, text=True)
    assert "resumed from" in done.stdout and f"at step {killed_at}/12" in done.stdout
    a, b = checkpoint.load(str(tmp_path / "ref")), checkpoint.load(str(out))
    assert a["step"] == b["step"] == 12
    for k, v in a["model"].items():
        assert torch.allclose(v.float(), b["model"][k].float(), rtol=1e-5, atol=1e-6), k
    ma = {m["step"]: m["loss"] for m in metrics(tmp_path / "ref")}
    mb = {m["step"]: m["loss"] for m in metrics(out)}
    assert ma[12] == pytest.approx(mb[12], abs=1e-5)


def test_ddp_two_gloo_processes_equal_one_process(coco_shards, tmp_path):
    """Same global batch, SyncBN (cross-rank BN on CPU): 2 ranks compute what 1 process does.

    In fp64, so the comparison is exact up to rounding: in fp32 a tiny-batch BYOL from random
    init amplifies rounding differences ~100x per step, which says nothing about correctness.
    """
    env = subprocess_env()
    extra = ["train.max_steps=3", "train.precision=fp64"]
    single = subprocess.run(_train_args(coco_shards, tmp_path / "one", *extra), env=env,
                            capture_output=True, text=True, check=False)
    assert single.returncode == 0, single.stderr[-2000:]
    cmd = ["torchrun", "--nnodes=1", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", "-m",
           *_train_args(coco_shards, tmp_path / "two", *extra)[2:]]
    ddp = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one, two = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert [m["step"] for m in two] == [1, 2, 3]
    for m1, m2 in zip(one, two):
        assert m1["loss"] == pytest.approx(m2["loss"], abs=2e-6)  # logged with 6 decimals
    a, b = checkpoint.load(str(tmp_path / "one")), checkpoint.load(str(tmp_path / "two"))
    assert a["step"] == b["step"] == 3
    for k, v in a["model"].items():
        if v.is_floating_point() and "running_var" not in k:
            assert torch.allclose(v, b["model"][k], rtol=1e-9, atol=1e-11), k


def _bn_worker(rank: int, port: int, x: torch.Tensor, q) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    torch.manual_seed(0)
    bn = convert_sync_batchnorm(torch.nn.BatchNorm2d(3), torch.device("cpu"))
    assert isinstance(bn, CrossRankBatchNorm)
    part = x.chunk(2)[rank].clone().requires_grad_(True)
    y = bn(part)
    (y * torch.arange(y.numel()).view_as(y).float()).sum().backward()
    q.put((rank, *(t.detach().numpy().copy() for t in (y, part.grad, bn.weight.grad,
                                                        bn.running_mean, bn.running_var))))
    dist.destroy_process_group()


def test_cross_rank_batchnorm_equals_batchnorm_on_the_whole_batch():
    torch.manual_seed(0)
    x = torch.randn(8, 3, 5, 5) * 3 + 1
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_bn_worker, args=(r, port, x, q)) for r in range(2)]
    for p in procs:
        p.start()
    results = {r[0]: r[1:] for r in (q.get(timeout=120) for _ in procs)}
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0

    bn = torch.nn.BatchNorm2d(3)
    xr = x.clone().requires_grad_(True)
    y = bn(xr)
    # the same weighting of outputs, laid out per rank as the workers did
    w = torch.cat([torch.arange(y.numel() // 2).view(4, 3, 5, 5).float()] * 2)
    (y * w).sum().backward()
    y0, g0, wg0, rm0, rv0 = map(torch.from_numpy, results[0])
    y1, g1, wg1, _, _ = map(torch.from_numpy, results[1])
    assert torch.allclose(torch.cat([y0, y1]), y, atol=1e-5)
    assert torch.allclose(torch.cat([g0, g1]), xr.grad, atol=1e-4)
    # each rank holds the gradient of its own part; DDP sums them
    assert torch.allclose(wg0 + wg1, bn.weight.grad, rtol=1e-4, atol=1e-3)
    assert torch.allclose(rm0, bn.running_mean, atol=1e-6)
    assert torch.allclose(rv0, bn.running_var, atol=1e-5)


def test_stage1_is_the_stage3_path_without_patches(coco_shards, tiny_config, tmp_path):
    """Stage 1 plans the two global views only (no pairs read), DALI's CPU backend feeds the very
    same run as the torch loader (the paper's augmentation, hue included: within one grey
    level), and the model's keys are BYOL's."""
    cfg = tiny_config(f"data={coco_shards}", f"out={tmp_path}", "orl.loader=dali",
                      "train.max_steps=2")
    assert cfg.aug.color_jitter[3] == 0.1
    assert stage1.run(cfg).endswith("ckpt-00000002.pt")
    assert [m["step"] for m in metrics(tmp_path)] == [1, 2]
    state = checkpoint.load(str(tmp_path))
    assert state["stage"] == "stage1"
    assert {k.split(".")[0] for k in state["model"]} == {"online", "predictor", "target"}
    builder = SampleBuilder(cfg, IMAGE_ONLY)
    assert builder.crops == (0, 1) and builder.pairs is None
    rt = init_runtime("cpu")
    prepare = runs.to_inputs(cfg, builder.crops)
    (dali,) = list(runs.make_loader_fn(cfg, builder, rt, "dali")(3, 4))
    (tv,) = list(runs.make_loader_fn(cfg, builder, rt, "torch")(3, 4))
    a, b = prepare(dali, rt.device), prepare(tv, rt.device)
    assert list(a) == list(b) == ["v1", "v2"]
    for k in a:
        assert a[k].shape == b[k].shape == (8, 3, 32, 32)
        assert (a[k] - b[k]).abs().mean() < 1 / (255 * 0.229)  # one level of 255 after / std


def _corrupt(shards: str, out, position: int) -> str:
    """A copy of ``shards`` whose image at ``position`` has garbage for its first bytes."""
    shutil.copytree(shards, out)
    index = ShardIndex(str(out))
    shard_id, row = index.position(position)
    with open(out / index.shard_names[shard_id], "r+b") as f:
        f.seek(int(row["offset"]))
        f.write(b"not a jpeg" * 4)
    return str(out)


def test_decode_failures_are_replaced_counted_and_logged(coco_shards, tiny_config, tmp_path,
                                                         caplog):
    """One policy for both stages and both loaders: a sample whose image does not decode is
    the next position's sample, logged and counted; too many in a row stop with a clear error."""
    shards = _corrupt(coco_shards, tmp_path / "bad", 5)
    cfg = tiny_config(f"data={shards}", f"out={tmp_path / 'run'}")
    builder = SampleBuilder(cfg, IMAGE_ONLY)
    ds = ORLDataset(builder)
    with caplog.at_level(logging.WARNING, logger="loaders.orl_samples"):
        bad = ds[(0, 5)]
    assert all(torch.equal(x, y) for x, y in zip(bad, ds[(0, 6)]))
    assert builder.failures == 1 and "does not decode, replaced by the next position" in caplog.text
    # the DALI path checks the bytes it hands to the decoder under the same policy
    source = ORLSource(builder, StepBatchSampler(len(builder), 8, 0, 1, 0, 0, 1), False)
    plan, arrays = builder.sample(0, 5, source.arrays)
    assert plan.key == builder.plan(0, 6).key
    assert builder.failures == 2 and arrays["jpeg"].tobytes() == builder.images.data(plan.key)
    with pytest.raises(RuntimeError, match="16 samples in a row from position 3 .* do not decode"):
        builder.sample(0, 3, lambda plan: 1 / 0)
    # a run over the broken image trains (the failure is replaced, not fatal)
    assert stage1.run(tiny_config(f"data={shards}", f"out={tmp_path / 'run'}",
                                  "train.max_steps=2")).endswith("ckpt-00000002.pt")

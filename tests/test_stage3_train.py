"""Stage 3 training on coco-mini with the small config: checkpoints and logs, kill -9 + resume,
the DALI CPU backend inside the trainer, ablations, Stage 1 initialisation, the demo step."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
import torch
from support.common import TINY_OVERRIDES, orl_fast_cmd, subprocess_env
from support.orl import TINY_ORL, random_pairs

from loaders.orl_samples import SampleBuilder
from orl_fast import demo
from orl_fast.core import checkpoint
from orl_fast.core.config import ConfigError, load_config
from orl_fast.core.distributed import init_runtime
from orl_fast.core.models import BYOL
from orl_fast.training import runs, stage3


@pytest.fixture(scope="module")
def coco_pairs(coco_shards, tmp_path_factory) -> str:
    return random_pairs(coco_shards, str(tmp_path_factory.mktemp("mined")))


def metrics(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_orl_options_are_validated():
    # the official values of the defaults: tests/test_config.py
    for bad, field in [("orl.patches=crops", "orl.patches"), ("orl.loader=gpu", "orl.loader"),
                       ("orl.random_scale=[0.5,0.1]", "orl.random_scale"),
                       ("orl.jitter_min_iou=1", "orl.jitter_min_iou"),
                       ("orl.knn_k=-1", "orl.knn_k"), ("orl.topn_frac=1.5", "orl.topn_frac")]:
        with pytest.raises(ConfigError) as e:
            load_config("paper", [bad])
        assert str(e.value).startswith(field)


def _tiny(shards, pairs, out, *extra):
    return load_config("small", [*TINY_OVERRIDES, *TINY_ORL, f"data={shards}", f"pairs={pairs}",
                                 f"out={out}", *extra])


def test_orl_steps_checkpoint_and_logs(coco_shards, coco_pairs, tmp_path):
    cfg = _tiny(coco_shards, coco_pairs, tmp_path, "train.max_steps=2")
    path = stage3.run(cfg)
    assert path.endswith("ckpt-00000002.pt")
    state = checkpoint.load(str(tmp_path))
    assert state["stage"] == "stage3" and state["step"] == 2 and state["config"] == cfg.to_dict()
    top = {k.split(".")[0] for k in state["model"]}
    assert top == {"online", "target", "predictor", "intra_predictor", "inter_predictor"}
    logged = metrics(tmp_path)
    assert [m["step"] for m in logged] == [1, 2]
    for m in logged:
        # each term is symmetric: two regression losses in [0, 4] (about 2 each at random init)
        assert 0 < m["loss_image"] < 8 and 0 < m["loss_intra"] < 8 and 0 < m["loss_inter"] < 8
        assert m["loss"] == pytest.approx(m["loss_image"] + m["loss_intra"] + m["loss_inter"],
                                          abs=1e-4)


def _train_args(shards, pairs, out, *extra):
    return orl_fast_cmd("train", "--config", "small", *TINY_OVERRIDES, *TINY_ORL,
                        f"data={shards}", f"pairs={pairs}", f"out={out}", "train.epochs=2",
                        "train.max_steps=12", "train.deterministic=true", "train.num_workers=1",
                        *extra)


def test_kill_9_then_resume_equals_uninterrupted(coco_shards, coco_pairs, tmp_path):
    env = subprocess_env()
    ref = subprocess.run(_train_args(coco_shards, coco_pairs, tmp_path / "ref"), env=env,
                         capture_output=True, text=True, check=False)
    assert ref.returncode == 0, ref.stderr[-3000:]

    out = tmp_path / "killed"
    proc = subprocess.Popen(_train_args(coco_shards, coco_pairs, out), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    latest = out / "checkpoints" / "latest.json"
    deadline = time.time() + 300
    while time.time() < deadline and not latest.exists():
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert latest.exists(), "no checkpoint was written before the deadline"
    killed_at = json.loads(latest.read_text())["step"]
    assert killed_at < 12, "the run finished before the kill: test inconclusive"

    done = subprocess.run(_train_args(coco_shards, coco_pairs, out), env=env,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"at step {killed_at}/12" in done.stdout
    a, b = checkpoint.load(str(tmp_path / "ref")), checkpoint.load(str(out))
    assert a["step"] == b["step"] == 12
    for k, v in a["model"].items():
        assert torch.allclose(v.float(), b["model"][k].float(), rtol=1e-5, atol=1e-6), k
    ma = {m["step"]: m for m in metrics(tmp_path / "ref")}
    mb = {m["step"]: m for m in metrics(out)}
    for key in ("loss_image", "loss_intra", "loss_inter"):
        assert ma[12][key] == pytest.approx(mb[12][key], abs=1e-5)


def test_dali_cpu_backend_in_the_trainer(coco_shards, coco_pairs, tmp_path):
    """orl.loader=dali on a CPU device: DALI's CPU backend feeds fit(), through the same
    loader_fn / prepare wiring as the torch path, batches equal to the torch path's (the
    paper's augmentation, hue included: within one grey level)."""
    cfg = _tiny(coco_shards, coco_pairs, tmp_path, "orl.loader=dali", "train.max_steps=2")
    assert cfg.aug.color_jitter[3] == 0.1
    stage3.run(cfg)
    logged = metrics(tmp_path)
    assert [m["step"] for m in logged] == [1, 2]
    assert all(0 < m[k] < 8 for m in logged for k in ("loss_image", "loss_intra", "loss_inter"))

    rt = init_runtime("cpu")
    builder = SampleBuilder(cfg)
    prepare = runs.to_inputs(cfg, builder.crops)
    (dali,) = list(runs.make_loader_fn(cfg, builder, rt, "dali")(3, 4))
    (tv,) = list(runs.make_loader_fn(cfg, builder, rt, "torch")(3, 4))
    a, b = prepare(dali, rt.device), prepare(tv, rt.device)
    assert list(a) == list(b) == ["v1", "v2", "intra", "inter"]
    flat = [(a["v1"], b["v1"]), (a["v2"], b["v2"]), *zip(a["intra"], b["intra"]),
            *zip(a["inter"], b["inter"])]
    assert len(flat) == 6
    for x, y in flat:  # normalised inputs: one level of 255 is 1 / (255 x std) >= 0.0171
        assert x.shape == y.shape and (x - y).abs().mean() < 1 / (255 * 0.229)


@pytest.mark.parametrize("overrides, terms", [
    (["orl.patches=random"], {"image", "intra", "inter"}),                 # multi-crop BYOL
    (["orl.loss_weights=[1,1,0]"], {"image", "intra"}),                     # intra-RoI only
    (["orl.loss_weights=[1,0,1]", "orl.boxes=gt"], {"image", "inter"}),     # inter only, GT set
])
def test_ablations_train(coco_shards, coco_pairs, coco_mini, tmp_path, overrides, terms):
    if "orl.boxes=gt" in overrides:
        overrides = [*overrides, f"orl.gt_instances={coco_mini / 'instances.json'}"]
    stage3.run(_tiny(coco_shards, coco_pairs, tmp_path, "train.max_steps=1", *overrides))
    logged = metrics(tmp_path)[0]
    assert {k[5:] for k in logged if k.startswith("loss_")} == terms
    predictors = {k.split(".")[0] for k in checkpoint.load(str(tmp_path))["model"]} - {
        "online", "target"}
    assert predictors == {"predictor"} | {f"{t}_predictor" for t in terms - {"image"}}


def test_demo_step_from_a_stage1_checkpoint(coco_shards, coco_pairs, tmp_path):
    tiny = (*TINY_OVERRIDES, *TINY_ORL, "train.max_steps=1", "optim.base_lr=1.0e-9")
    torch.manual_seed(123)  # not the run's seed: its fresh initialisation differs
    byol = BYOL(load_config("small", list(tiny)).model)
    checkpoint.save(str(tmp_path / "stage1"), 5, {"stage": "stage1", "model": byol.state_dict()},
                    keep_last=1)
    path = demo.train_stage3(coco_shards, coco_pairs, str(tmp_path / "stage3"),
                             stage1_ckpt=str(tmp_path / "stage1"), overrides=tiny)
    state = checkpoint.load(path)
    assert state["stage"] == "stage3" and state["step"] == 1
    assert state["config"]["orl"]["init"] == "stage1"
    # a step at a negligible learning rate keeps the Stage 1 weights (not a fresh initialisation)
    for k in ("online.backbone.conv1.weight", "predictor.3.weight"):
        assert torch.allclose(state["model"][k], byol.state_dict()[k], atol=1e-6), k

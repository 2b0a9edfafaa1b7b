"""Weights loading, cached frozen features, kNN / linear probes, the classification runner, the
``orl-fast eval`` command line and the demo step."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from support.common import orl_fast_cmd, subprocess_env
from support.evaluation import make_checkpoint, separable

from evaluation import backbones, classification, datasets, probes
from evaluation.features import PooledFeatures, cached_features, extract
from orl_fast import demo
from orl_fast.core.config import load_config
from orl_fast.core.models import build_backbone


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return make_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "run"))


def fast_eval(*overrides: str):
    return load_config("paper", ["eval.resize=64", "eval.crop=56", "eval.pooling=global",
                                 "eval.num_workers=0", "eval.device=cpu", "eval.batch_size=16",
                                 *overrides]).eval


def test_load_checkpoint_weights_and_baseline(tiny_ckpt):
    path, state = tiny_ckpt
    run_dir = path.rsplit("/checkpoints/", 1)[0]
    assert backbones.load(path).digest == backbones.load(run_dir).digest
    w = backbones.load(run_dir)
    assert w.arch == "resnet18" and w.stage == "stage1" and w.name == "checkpoint"
    assert torch.equal(w.state_dict["layer2.0.conv1.weight"],
                       state["online.backbone.layer2.0.conv1.weight"])
    assert torch.equal(w.build().bn1.running_mean, state["online.backbone.bn1.running_mean"])
    ckpt, rand = backbones.with_baseline(path, "resnet50", seed=0)
    assert rand.name == "random init" and rand.arch == "resnet18"  # the checkpoint's arch
    assert ckpt.digest != rand.digest
    assert backbones.random_init("resnet18", 0).digest == rand.digest  # seeded
    assert backbones.random_init("resnet18", 1).digest != rand.digest
    assert [m.name for m in backbones.with_baseline("random", "resnet18", 0)] == ["random init"]


def test_load_a_torchvision_state_dict_and_reject_other_files(tmp_path):
    net, _ = build_backbone("resnet18")
    sd = {**net.state_dict(), "fc.weight": torch.zeros(10, 512), "fc.bias": torch.zeros(10)}
    torch.save(sd, tmp_path / "tv.pth")
    w = backbones.load(str(tmp_path / "tv.pth"), "resnet18")
    assert w.stage == "" and "fc.weight" not in w.state_dict
    assert w.digest == backbones.digest("resnet18", net.state_dict())
    with pytest.raises(ValueError, match="not a torchvision resnet50"):
        backbones.load(str(tmp_path / "tv.pth"), "resnet50")
    torch.save({"a": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="neither"):
        backbones.load(str(tmp_path / "other.pt"))
    with pytest.raises(FileNotFoundError):
        backbones.load(str(tmp_path / "missing"))


def test_pooled_features_match_the_backbone_and_goyal_dimensions():
    net, _ = build_backbone("resnet18")
    net.eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        f = PooledFeatures(net, ("res4", "res5"), "global")(x)
        assert torch.allclose(f["res5"], net(x), atol=1e-5)  # res5 global pool = torchvision
        assert f["res4"].shape == (2, 256)
        g = PooledFeatures(net, ("res4", "res5"), "goyal")(x)
    # Goyal et al. pooling: res4 14x14 -> 3x3, res5 7x7 -> 2x2 (ResNet-50: 9216-d, 8192-d).
    assert g["res4"].shape == (2, 256 * 9) and g["res5"].shape == (2, 512 * 4)


def test_goyal_pooling_needs_maps_as_large_as_its_kernel():
    net, _ = build_backbone("resnet18")
    with torch.no_grad(), pytest.raises(ValueError, match="eval.pooling=goyal.*res5 map is 2x2"):
        PooledFeatures(net.eval(), ("res5",), "goyal")(torch.randn(1, 3, 56, 56))


def test_eval_views_squash_or_crop(tmp_path):
    """view=resize (the official extraction, benchmarks/extract_info/voc07.py:16-17:
    Resize(256) then Resize((224, 224))) keeps the whole image, squashed; center_crop cuts the
    sides of a wide image."""
    from PIL import Image

    from evaluation.features import EvalImages

    img = np.full((200, 400, 3), 128, np.uint8)
    img[:, :40] = (255, 0, 0)  # a red band on the left tenth
    Image.fromarray(img).save(tmp_path / "wide.png")
    paths = [str(tmp_path / "wide.png")]
    squashed = EvalImages(paths, 256, 224, "resize")[0]
    cropped = EvalImages(paths, 256, 224, "center_crop")[0]
    assert squashed.shape == cropped.shape == (3, 224, 224)
    red = (squashed[0] > 200) & (squashed[1] < 50)
    assert red[:, :20].all() and not red[:, 25:].any()  # a tenth of 224 columns
    assert not ((cropped[0] > 200) & (cropped[1] < 50)).any()
    with pytest.raises(ValueError, match="view"):
        EvalImages(paths, 256, 224, "pad")


def test_features_are_cached_by_weights_images_and_settings(shared_data, tiny_ckpt, tmp_path):
    ds = datasets.load(str(shared_data / "voc07"), "train")
    ids, paths = ds.ids[:6], ds.paths[:6]
    w = backbones.load(tiny_ckpt[0])
    ec = fast_eval("eval.layers=[res4,res5]")
    feats, info = cached_features(w, ids, paths, ec, str(tmp_path))
    assert not info["cached"] and info["images_per_s"] > 0
    assert feats["res5"].shape == (6, 512) and feats["res4"].shape == (6, 256)
    assert feats["res5"].dtype == np.float32
    again, info2 = cached_features(w, ids, paths, ec, str(tmp_path))
    assert info2 == {"cache": info["cache"], "cached": True}
    assert np.array_equal(again["res5"], feats["res5"])
    # The same numbers as a direct extraction, image by image.
    direct = extract(w, paths[:2], ec)
    np.testing.assert_allclose(direct["res5"], feats["res5"][:2], rtol=1e-4, atol=1e-5)
    # Other weights, images or settings: other cache files.
    rand = backbones.random_init("resnet18", 0)
    assert cached_features(rand, ids, paths, ec, str(tmp_path))[1]["cache"] != info["cache"]
    assert cached_features(w, ids[:5], paths[:5], ec, str(tmp_path))[1]["cache"] != info["cache"]
    other = fast_eval("eval.layers=[res4,res5]", "eval.crop=48")
    assert cached_features(w, ids, paths, other, str(tmp_path))[1]["cache"] != info["cache"]
    crop = fast_eval("eval.layers=[res4,res5]", "eval.view=center_crop")
    assert cached_features(w, ids, paths, crop, str(tmp_path))[1]["cache"] != info["cache"]


def test_knn_votes_of_the_nearest_neighbours():
    train = np.array([[1, 0], [0.9, 0.1], [0, 1.0]], np.float32)
    labels = np.array([[1, -1], [1, 1], [-1, 1]], np.int8)
    scores = probes.knn_scores(train, labels, np.array([[1, 0.05]], np.float32), k=2,
                               temperature=0.5, device=torch.device("cpu"))
    cos = train[:2] @ np.array([1, 0.05]) / np.linalg.norm(train[:2], axis=1) / np.hypot(1, .05)
    w = np.exp(cos / 0.5)
    np.testing.assert_allclose(scores[0], [w[0] + w[1], w[1]], rtol=1e-5)


def test_knn_and_linear_probe_on_separable_features():
    ec = fast_eval("eval.knn.k=5", "eval.linear.epochs=30", "eval.linear.batch_size=32")
    x, y = separable(240, 4, 16, seed=2, single_label=True)
    knn = probes.knn_scores(x[:160], y[:160], x[160:], 5, 0.07, torch.device("cpu"))
    assert (knn.argmax(1) == (y[160:] == 1).argmax(1)).all()
    logits = probes.linear_probe_scores(x[:160], y[:160], x[160:], ec)
    assert (logits.argmax(1) == (y[160:] == 1).argmax(1)).all()
    assert np.array_equal(logits, probes.linear_probe_scores(x[:160], y[:160], x[160:], ec))
    xm, ym = separable(240, 4, 16, seed=3)
    ym[::7, 1] = 0  # difficult labels are masked out of the multi-label loss
    multi = probes.linear_probe_scores(xm[:160], ym[:160], xm[160:], ec)
    from evaluation.metrics import classification_metrics
    assert classification_metrics(multi, ym[160:], tuple("abcd"))["mAP"] == pytest.approx(100.0)


def test_classification_run_writes_reports_for_checkpoint_and_random_init(scene_shards,
                                                                          tiny_ckpt, tmp_path):
    _, instances = scene_shards
    cfg = load_config("paper", [f"ckpt={tiny_ckpt[0]}", "eval.resize=64", "eval.crop=56",
                                "eval.pooling=global", "eval.num_workers=0", "eval.device=cpu",
                                "eval.knn.k=5",
                                "eval.svm.costs=[0.1,1.0]"])
    rep = classification.run("knn", cfg, "", instances, None, str(tmp_path), progress=False)
    assert list(rep["results"]) == ["checkpoint", "random init"]
    assert "held-out" in rep["dataset"]["split"]
    assert rep["dataset"]["train"]["images"] + rep["dataset"]["test"]["images"] == 48
    for res in rep["results"].values():
        assert 0 <= res["layers"]["res5"]["mAP"] <= 100
    saved = json.loads(Path(rep["files"]["json"]).read_text())
    assert saved["protocol"]["k"] == 5 and saved["results"]["checkpoint"]["weights"]["arch"] == (
        "resnet18")
    md = Path(rep["files"]["markdown"]).read_text()
    assert "| checkpoint | res5 |" in md and "| random init | res5 |" in md
    # A second task on the same images reuses the cached features.
    rep2 = classification.run("voc07", cfg, "", instances, None, str(tmp_path), progress=False)
    assert all(r["features"]["train"]["cached"] for r in rep2["results"].values())
    assert set(rep2["results"]["checkpoint"]["layers"]["res5"]["cost"].values()) <= {0.1, 1.0}
    low = load_config("paper", [f"ckpt={tiny_ckpt[0]}", "eval.resize=64", "eval.crop=56",
                                "eval.pooling=global", "eval.device=cpu", "eval.svm.costs=[1.0]",
                                "eval.lowshot.shots=[1,2]", "eval.lowshot.samples=2"])
    rep3 = classification.run("lowshot", low, "", instances, None, str(tmp_path), progress=False)
    shots = rep3["results"]["random init"]["layers"]["res5"]["shots"]
    assert list(shots) == ["1", "2"] and len(shots["2"]["mAP_per_sample"]) == 2
    assert "| n=1 | n=2 |" in Path(rep3["files"]["markdown"]).read_text()


def test_cli_eval_linear_on_a_coco_split(scene_shards, tiny_ckpt, tmp_path):
    _, instances = scene_shards
    out = tmp_path / "out"
    proc = subprocess.run(orl_fast_cmd(
        "eval", "linear", "--ckpt", tiny_ckpt[0], "--train", instances, "--out", str(out),
        "--quiet", "eval.resize=64", "eval.crop=56", "eval.pooling=global", "eval.num_workers=0",
        "eval.device=cpu", "eval.linear.epochs=5"), env=subprocess_env(), capture_output=True,
        text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "| checkpoint | res5 |" in proc.stdout
    rep = json.loads((out / "linear.json").read_text())
    assert rep["protocol"]["optimiser"].startswith("SGD lr 0.01")
    bad = subprocess.run(orl_fast_cmd("eval", "voc07", "--train", "x", "eval.svm.folds=1"),
                         env=subprocess_env(), capture_output=True, text=True, timeout=120,
                         check=False)
    assert bad.returncode == 2 and "eval.svm.folds" in bad.stderr


def test_demo_object_probe(tiny_ckpt):
    out = demo.evaluate({"random init": "random", "tiny": tiny_ckpt[0]}, size=32, scenes=40)
    assert set(out) == {"random init", "tiny"}
    for r in out.values():
        assert 0 <= r["knn"] <= 100 and 0 <= r["linear"] <= 100 and r["classes"] >= 2
    assert out["random init"]["feature_dim"] == 512


def test_reports_are_named_per_checkpoint_and_logged_to_tensorboard(scene_shards, tmp_path,
                                                                    monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from evaluation.cli import report_dir
    from orl_fast.cli import main

    _, instances = scene_shards
    run = tmp_path / "runs" / "byol"
    first, _ = make_checkpoint(str(run), seed=1)
    second = first.replace("ckpt-00000007", "ckpt-00000009")
    shutil.copyfile(first, second)  # latest.json still names the first
    monkeypatch.chdir(tmp_path)
    assert report_dir(first) == "orl-fast-eval/runs-byol-ckpt-00000007"
    assert report_dir(second) == "orl-fast-eval/runs-byol-ckpt-00000009"
    assert report_dir(str(run)) == report_dir(first)  # a run dir: its latest checkpoint
    assert report_dir("random") == "orl-fast-eval/random-init"
    settings = ["--quiet", "eval.resize=64", "eval.crop=56", "eval.pooling=global",
                "eval.num_workers=0",
                "eval.device=cpu", "eval.knn.k=5"]
    for ckpt in (first, second):
        assert main(["eval", "knn", "--ckpt", ckpt, "--tb", "--train", instances, *settings]) == 0
    reports = sorted(p.parent.name for p in (tmp_path / "orl-fast-eval").glob("*/knn.json"))
    assert reports == ["runs-byol-ckpt-00000007", "runs-byol-ckpt-00000009"]
    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    scalars = events.Scalars("eval/knn/res5/mAP")
    assert sorted(s.step for s in scalars) == [7, 7]  # both checkpoints say step 7
    rep = json.loads((tmp_path / "orl-fast-eval" / reports[1] / "knn.json").read_text())
    assert any(s.value == pytest.approx(rep["results"]["checkpoint"]["layers"]["res5"]["mAP"])
               for s in scalars)


def test_loader_workers_never_exceed_the_cores():
    import os

    from loaders.torch_loader import loader_workers

    cores = len(os.sched_getaffinity(0))
    assert loader_workers(64) == cores and loader_workers(0) == 0
    assert loader_workers(1) == 1

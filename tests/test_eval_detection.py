"""Mask R-CNN transfer: schedule, model from an orl-fast checkpoint, data selection, and two
training iterations on Penn-Fudan with pycocotools AP numbers."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from support.common import subprocess_env
from support.evaluation import (
    OTHER_NORMALISATION,
    TINY_DETECTION,
    assert_detection_report,
    make_checkpoint,
    pennfudan_subsets,
)
from torchvision.ops.misc import FrozenBatchNorm2d

from evaluation import backbones
from evaluation.detection import data as det_data
from evaluation.detection import evaluate as det_eval
from evaluation.detection import model as det_model
from evaluation.detection import schedule as det_schedule
from orl_fast.core.config import load_config
from orl_fast.core.defaults import DetectionConfig


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return make_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "run"))


def test_schedule_is_detectron2_1x_scaled():
    s = det_schedule.schedule(DetectionConfig())
    assert (s.batch_size, s.max_iter, s.steps, s.base_lr, s.warmup_iters) == (
        16, 90000, (60000, 80000), 0.02, 1000)
    assert s.lr(0) == pytest.approx(0.02 * 0.001)
    assert s.lr(500) == pytest.approx(0.02 * (0.001 * 0.5 + 0.5))
    assert s.lr(1000) == pytest.approx(0.02)
    assert s.lr(60000) == pytest.approx(0.002) and s.lr(80000) == pytest.approx(0.0002)
    s2 = det_schedule.schedule(DetectionConfig(schedule=2.0))
    assert (s2.max_iter, s2.steps, s2.warmup_iters) == (180000, (120000, 160000), 1000)
    # Batch 8: half the lr, twice the iterations (detectron2's linear scaling rule).
    s8 = det_schedule.schedule(DetectionConfig(batch_size=8))
    assert (s8.max_iter, s8.steps, s8.base_lr, s8.warmup_iters) == (
        180000, (120000, 160000), 0.01, 2000)
    short = det_schedule.schedule(DetectionConfig(schedule=0.01))
    assert (short.max_iter, short.steps, short.warmup_iters) == (900, (600, 800), 10)


def test_model_backbone_comes_from_the_checkpoint(tiny_ckpt):
    _, state = tiny_ckpt
    w = backbones.load(tiny_ckpt[0])
    model = det_model.build_model(w, num_classes=1, dc=DetectionConfig())
    body = model.backbone.body
    assert torch.equal(body.conv1.weight, state["online.backbone.conv1.weight"])
    assert torch.equal(body.layer3[1].conv2.weight, state["online.backbone.layer3.1.conv2.weight"])
    assert isinstance(body.bn1, torch.nn.BatchNorm2d)
    assert all(p.requires_grad for p in model.parameters())  # all layers trained
    assert model.roi_heads.box_predictor.cls_score.out_features == 2  # + background
    frozen = det_model.build_model(w, 1, DetectionConfig(norm="frozen")).backbone.body
    assert isinstance(frozen.bn1, FrozenBatchNorm2d)
    assert torch.equal(frozen.layer1[0].bn1.running_mean,
                       state["online.backbone.layer1.0.bn1.running_mean"])
    boxes_only = det_model.build_model(w, 3, DetectionConfig(masks=False))
    assert boxes_only.roi_heads.mask_head is None
    # The RPN head: detectron2's one 3x3 convolution by default, torchvision v2's two on request.
    assert len(model.rpn.head.conv) == 1
    assert len(det_model.build_model(w, 1, DetectionConfig(rpn_convs=2)).rpn.head.conv) == 2
    # The input is normalised as the checkpoint was trained (ImageNet's here).
    assert model.transform.image_mean == [0.485, 0.456, 0.406]


def test_detector_normalises_its_input_with_the_checkpoints_mean_and_std(tmp_path):
    path, _ = make_checkpoint(str(tmp_path / "run"), overrides=OTHER_NORMALISATION)
    w = backbones.load(path)
    assert (w.mean, w.std) == ((0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    model = det_model.build_model(w, 1, DetectionConfig())
    assert model.transform.image_mean == [0.5, 0.4, 0.3]
    assert model.transform.image_std == [0.2, 0.25, 0.3]
    # The random-init baseline beside it gets the same input normalisation.
    baseline = backbones.with_baseline(path, "resnet18", 0)[1]
    assert (baseline.name, baseline.mean, baseline.std) == ("random init", w.mean, w.std)


def test_image_selection_for_masks_and_training():
    coco = {"images": [{"id": i} for i in range(1, 5)], "categories": [{"id": 1}],
            "annotations": [
                {"id": 1, "image_id": 1, "segmentation": [[0, 0, 1, 0, 1, 1]], "iscrowd": 0},
                {"id": 2, "image_id": 2, "segmentation": [], "iscrowd": 0},
                {"id": 3, "image_id": 3, "segmentation": {"counts": [1], "size": [1, 1]},
                 "iscrowd": 1}]}
    assert det_data.select_images(coco, masks=True, train=True) == [1]
    assert det_data.select_images(coco, masks=True, train=False) == [1, 3, 4]
    assert det_data.select_images(coco, masks=False, train=True) == [1, 2]
    assert det_data.select_images(coco, masks=False, train=False) == [1, 2, 3, 4]


def test_heldout_split_of_one_annotation_file(shared_data):
    data = det_data.load_data(str(shared_data / "pennfudan" / "instances.json"), None,
                               masks=True, holdout_frac=0.5, seed=0)
    assert len(data.train["images"]) == len(data.val["images"]) == 60
    assert not ({im["id"] for im in data.train["images"]}
                & {im["id"] for im in data.val["images"]})
    assert "held-out" in data.split and data.num_classes == 1


def test_two_iterations_on_pennfudan_give_losses_and_coco_ap(shared_data, tiny_ckpt, tmp_path):
    root = str(shared_data / "pennfudan")
    train_json, val_json = pennfudan_subsets(root, str(tmp_path), n_train=4, n_val=3)
    cfg = load_config("paper", [f"ckpt={tiny_ckpt[0]}", *TINY_DETECTION])
    out = tmp_path / "det"
    rep = det_eval.run(cfg, train_json, val_json, str(out), root, root, progress=False)

    assert_detection_report(rep)
    assert list(rep["results"]) == ["checkpoint", "random init"]
    assert rep["protocol"]["stopped_at"] == 2 and rep["protocol"]["norm"] == "sync"
    assert rep["protocol"]["engine"] == "torchvision"
    assert rep["dataset"]["train_images"] == 4 and rep["dataset"]["val_images"] == 3
    for name, res in rep["results"].items():
        lines = [json.loads(ln) for ln in Path(res["run_dir"], "metrics.jsonl").read_text().splitlines()]
        assert [ln["iter"] for ln in lines] == [1, 2]
        for ln in lines:
            for k in ("loss", "loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness",
                      "loss_rpn_box_reg"):
                assert math.isfinite(ln[k]) and ln[k] >= 0, (name, k)
        assert (out / name.replace(" ", "-") / "checkpoints" / "ckpt-00000002.pt").exists()
    md = (out / "detection.md").read_text()
    assert "| checkpoint |" in md and "APmk" in md
    # The title names the backbone that ran (a ResNet-18 here), not the paper's R50.
    assert rep["protocol"]["task"] == "Mask R-CNN R18-FPN transfer"
    assert md.startswith("# Mask R-CNN R18-FPN transfer")

    # A rerun resumes from the finished checkpoints: no training, the same numbers.
    again = det_eval.run(cfg, train_json, val_json, str(out), root, root, progress=False)
    for name, res in again["results"].items():
        assert len(Path(res["run_dir"], "metrics.jsonl").read_text().splitlines()) == 2
        assert res["metrics"]["bbox"]["AP"] == rep["results"][name]["metrics"]["bbox"]["AP"]


@pytest.mark.slow
def test_detection_under_ddp_synchronises_batchnorm(shared_data, tiny_ckpt, tmp_path):
    """torchrun, 2 CPU processes (gloo): SyncBN semantics, per-rank data, gathered results."""
    root = str(shared_data / "pennfudan")
    train_json, val_json = pennfudan_subsets(root, str(tmp_path), n_train=4, n_val=4)
    overrides = [o for o in TINY_DETECTION if "batch_size" not in o]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "-m", "orl_fast", "eval", "detection", "--ckpt", tiny_ckpt[0], "--quiet",
           "--train-json", train_json, "--val-json", val_json, "--train-images", root,
           "--val-images", root, "--out", str(tmp_path / "out"), *overrides,
           "eval.detection.batch_size=4"]
    proc = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = json.loads((tmp_path / "out" / "detection.json").read_text())
    assert rep["protocol"]["world_size"] == 2
    for res in rep["results"].values():
        assert res["backbone_norm"] == "CrossRankBatchNorm"  # SyncBN on CPU / gloo
        # Both ranks' predictions were gathered: more than 2 images' worth (10 per image).
        assert 20 < res["metrics"]["bbox"]["detections"] <= 40
        assert 0 <= res["metrics"]["segm"]["AP"] <= 100


def test_detector_names_follow_the_backbone():
    assert [det_eval.fpn_name(a) for a in ("resnet50", "resnet18", "resnet101",
                                           "wide_resnet50_2")] == [
        "R50-FPN", "R18-FPN", "R101-FPN", "WRN50-2-FPN"]

"""Helpers shared by the evaluation tests (tests/test_eval_*.py)."""

from __future__ import annotations

import json
import os

import numpy as np
import torch

from orl_fast.core import checkpoint
from orl_fast.core.config import load_config
from orl_fast.core.models import BYOL

from .common import TINY_MODEL  # the tiny BYOL: ResNet-18 backbone, small MLPs

# Small images and few RoIs: two iterations of a ResNet-18 Mask R-CNN in seconds on a CPU.
TINY_DETECTION = [
    "eval.device=cpu", "eval.num_workers=0", "eval.detection.batch_size=2",
    "eval.detection.max_iter=2", "eval.detection.min_size_train=[128]",
    "eval.detection.min_size_test=128", "eval.detection.max_size=224",
    "eval.detection.rpn_post_nms_topk_train=64", "eval.detection.rpn_post_nms_topk_test=32",
    "eval.detection.roi_batch_size_per_image=32", "eval.detection.detections_per_image=10",
    "eval.detection.precise_bn_iters=1", "eval.detection.log_every_iters=1",
]


# A training normalisation other than ImageNet's: exports and detectors must take the checkpoint's.
OTHER_NORMALISATION = ["aug.mean=[0.5,0.4,0.3]", "aug.std=[0.2,0.25,0.3]"]


def make_checkpoint(out: str, seed: int = 123, overrides: tuple[str, ...] = ()) -> tuple[str, dict]:
    """A Stage-1-layout orl-fast checkpoint of a tiny BYOL (ResNet-18) with non-trivial BN
    statistics (config ``small`` + ``overrides``); returns (checkpoint path, its model state
    dict)."""
    cfg = load_config("small", [*TINY_MODEL, *overrides])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BYOL(cfg.model)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    state = model.state_dict()
    path = checkpoint.save(out, 7, {"stage": "stage1", "step": 7, "config": cfg.to_dict(),
                                    "config_hash": cfg.hash(), "model": state}, keep_last=1)
    return path, state


def separable(n: int, num_classes: int, dim: int, seed: int, single_label: bool = False,
              noise: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Features that are linearly separable per class: the sum of the orthogonal prototypes of the
    image's present classes plus small noise. Labels in VOC encoding (1 / -1)."""
    rng = np.random.default_rng(seed)
    if single_label:
        present = np.eye(num_classes, dtype=bool)[np.arange(n) % num_classes]
    else:
        present = rng.random((n, num_classes)) < 0.35
        present[np.arange(n), rng.integers(0, num_classes, n)] = True
    prototypes = np.linalg.qr(rng.normal(size=(dim, num_classes)))[0].T * 3.0
    x = present.astype(np.float64) @ prototypes + rng.normal(0, noise, (n, dim))
    return x.astype(np.float32), np.where(present, 1, -1).astype(np.int8)


def pennfudan_subsets(root: str, out: str, n_train: int, n_val: int) -> tuple[str, str]:
    """Train / validation COCO files with the first Penn-Fudan images (paths stay relative to
    ``root``, passed as the image root)."""
    with open(os.path.join(root, "instances.json")) as f:
        coco = json.load(f)
    ids = sorted(im["id"] for im in coco["images"])
    paths = []
    for name, chosen in (("train", ids[:n_train]), ("val", ids[n_train:n_train + n_val])):
        keep = set(chosen)
        sub = {**coco, "images": [im for im in coco["images"] if im["id"] in keep],
               "annotations": [a for a in coco["annotations"] if a["image_id"] in keep]}
        path = os.path.join(out, f"{name}.json")
        with open(path, "w") as f:
            json.dump(sub, f)
        paths.append(path)
    return paths[0], paths[1]



# The detection report, whichever engine wrote it: its keys, each result's, each metric's.
REPORT_KEYS = {"task", "protocol", "dataset", "results", "eval_config", "environment", "seconds",
               "files"}
PROTOCOL_KEYS = {"task", "engine", "model", "norm", "schedule", "stopped_at", "world_size",
                 "input", "precise_bn_iters", "metric"}
RESULT_KEYS = {"weights", "run_dir", "metrics", "backbone_norm", "seconds"}
METRIC_KEYS = {"AP", "AP50", "AP75", "APs", "APm", "APl", "detections", "summary"}


def assert_detection_report(rep: dict, masks: bool = True) -> None:
    """``rep`` (and the JSON written) has the detection report's keys, metrics in [0, 100]."""
    assert set(rep) == REPORT_KEYS and set(rep["protocol"]) == PROTOCOL_KEYS
    with open(rep["files"]["json"]) as f:
        assert set(json.load(f)) == REPORT_KEYS - {"files"}
    for name, res in rep["results"].items():
        assert set(res) == RESULT_KEYS, name
        assert set(res["metrics"]) == ({"bbox", "segm"} if masks else {"bbox"}), name
        for iou_type, m in res["metrics"].items():
            assert set(m) == METRIC_KEYS, (name, iou_type)
            assert m["detections"] > 0
            for k in ("AP", "AP50", "AP75"):
                assert 0.0 <= m[k] <= 100.0, (name, iou_type, k)
            assert any("Average Precision" in line for line in m["summary"])

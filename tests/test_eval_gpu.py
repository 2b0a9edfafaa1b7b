"""The evaluation's CUDA paths (skipped without a GPU): features on the GPU equal the CPU's,
bf16 extraction, and Mask R-CNN iterations in bf16 on the GPU."""

from __future__ import annotations

import math

import numpy as np
import pytest
from support.evaluation import TINY_DETECTION, make_checkpoint, pennfudan_subsets

from evaluation import backbones, datasets
from evaluation.detection import evaluate as det_eval
from evaluation.features import extract
from orl_fast.core.config import load_config

pytestmark = pytest.mark.gpu


def test_cuda_features_match_cpu(shared_data):
    ds = datasets.load(str(shared_data / "voc07"), "train")
    w = backbones.random_init("resnet50", 0)
    paths = ds.paths[:16]
    base = ["eval.num_workers=0", "eval.batch_size=8", "eval.layers=[res4,res5]"]
    cpu = extract(w, paths, load_config("paper", [*base, "eval.device=cpu"]).eval)
    gpu = extract(w, paths, load_config("paper", [*base, "eval.device=cuda"]).eval)
    bf16 = extract(w, paths, load_config("paper", [*base, "eval.device=cuda",
                                                   "eval.precision=bf16"]).eval)
    for layer in ("res4", "res5"):
        # cuDNN may use TF32 convolutions: compare directions, not bits.
        cos = (cpu[layer] * gpu[layer]).sum(1) / (
            np.linalg.norm(cpu[layer], axis=1) * np.linalg.norm(gpu[layer], axis=1))
        assert cos.min() > 0.999
        cos16 = (cpu[layer] * bf16[layer]).sum(1) / (
            np.linalg.norm(cpu[layer], axis=1) * np.linalg.norm(bf16[layer], axis=1))
        assert cos16.min() > 0.98


def test_detection_iterations_on_cuda_in_bf16(shared_data, tmp_path):
    ckpt, _ = make_checkpoint(str(tmp_path / "run"))
    root = str(shared_data / "pennfudan")
    train_json, val_json = pennfudan_subsets(root, str(tmp_path), n_train=4, n_val=3)
    overrides = [o for o in TINY_DETECTION if o != "eval.device=cpu"]
    cfg = load_config("paper", [f"ckpt={ckpt}", *overrides, "eval.device=cuda",
                                "eval.precision=bf16"])
    rep = det_eval.run(cfg, train_json, val_json, str(tmp_path / "det"), root, root,
                        progress=False)
    for res in rep["results"].values():
        assert 0 <= res["metrics"]["bbox"]["AP"] <= 100
        assert 0 <= res["metrics"]["segm"]["AP"] <= 100
    assert rep["environment"]["device"] != "cpu"
    assert not math.isnan(rep["results"]["checkpoint"]["metrics"]["bbox"]["AP50"])

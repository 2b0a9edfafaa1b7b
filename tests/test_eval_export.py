"""Weight exports: torchvision and timm strict loads, the detectron2 key mapping, pickle and YAML."""

from __future__ import annotations

import json
import pickle
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import yaml
from support.common import orl_fast_cmd, subprocess_env
from support.evaluation import OTHER_NORMALISATION, make_checkpoint

from evaluation import backbones, export
from orl_fast.core.config import ConfigError
from orl_fast.core.defaults import DetectionConfig


def detectron2_resnet50_parameters() -> dict[str, tuple[int, ...]]:
    """detectron2's ResNet-50 (``build_resnet_backbone``: ``BasicStem`` + ``BottleneckBlock``
    stages res2-res5 of 3, 4, 6, 3 blocks, convolutions ``Conv2d`` with a ``norm`` submodule, a
    ``shortcut`` projection in each stage's first block), written from detectron2's naming:
    every parameter / buffer name with its shape (R-50.pkl holds no num_batches_tracked)."""
    names: dict[str, tuple[int, ...]] = {}

    def conv(prefix: str, out_c: int, in_c: int, k: int) -> None:
        names[f"{prefix}.weight"] = (out_c, in_c, k, k)
        for p in ("weight", "bias", "running_mean", "running_var"):
            names[f"{prefix}.norm.{p}"] = (out_c,)

    conv("stem.conv1", 64, 3, 7)
    in_c = 64
    for stage, blocks, width in ((2, 3, 64), (3, 4, 128), (4, 6, 256), (5, 3, 512)):
        for b in range(blocks):
            prefix = f"res{stage}.{b}"
            if b == 0:
                conv(f"{prefix}.shortcut", width * 4, in_c, 1)
            conv(f"{prefix}.conv1", width, in_c, 1)
            conv(f"{prefix}.conv2", width, width, 3)
            conv(f"{prefix}.conv3", width * 4, width, 1)
            in_c = width * 4
    return names


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return make_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "run"))[0]


def test_detectron2_names_of_every_torchvision_resnet50_key():
    w = backbones.random_init("resnet50", 0)
    expected = detectron2_resnet50_parameters()
    assert len(expected) == 265
    # Without the BatchNorm counters: the tensors of detectron2's own R-50.pkl.
    d2 = export.detectron2_state(w.state_dict, bn_counts=False)
    assert set(d2) == set(expected)
    for name, shape in expected.items():
        assert d2[name].shape == shape, name
    # With them (what detectron2's BatchNorm / SyncBN hold): one per norm, 53 in a ResNet-50.
    counters = {k.replace("running_mean", "num_batches_tracked") for k in expected
                if k.endswith("norm.running_mean")}
    assert len(counters) == 53
    d2 = export.detectron2_state(w.state_dict)
    assert set(d2) == set(expected) | counters
    # Every torchvision key maps and values are carried over.
    assert len(d2) == len(w.state_dict) == 318
    for key, value in w.state_dict.items():
        assert np.array_equal(d2[export.detectron2_name(key)], value.numpy()), key
    assert export.detectron2_name("conv1.weight") == "stem.conv1.weight"
    assert export.detectron2_name("bn1.running_var") == "stem.conv1.norm.running_var"
    assert export.detectron2_name("layer4.2.bn3.bias") == "res5.2.conv3.norm.bias"
    assert export.detectron2_name("layer1.0.downsample.0.weight") == "res2.0.shortcut.weight"
    assert export.detectron2_name("layer3.0.downsample.1.weight") == "res4.0.shortcut.norm.weight"


def test_detectron2_export_pickle_and_config(tiny_ckpt, tmp_path):
    w = backbones.load(tiny_ckpt)
    files = export.export(w, "detectron2", str(tmp_path / "orl.pkl"))
    assert files == [str(tmp_path / "orl.pkl"), str(tmp_path / "orl.yaml")]
    with open(files[0], "rb") as f:
        payload = pickle.load(f)
    assert payload["matching_heuristics"] is True and payload["__author__"].startswith("orl-fast")
    model = payload["model"]
    assert all(isinstance(v, np.ndarray) for v in model.values())
    assert np.array_equal(model["res3.0.conv1.weight"], w.state_dict["layer2.0.conv1.weight"])
    # Every tensor of the backbone, BatchNorm counters included (SyncBN holds them).
    assert len(model) == len(w.state_dict)
    assert np.array_equal(model["res2.0.conv1.norm.num_batches_tracked"],
                          w.state_dict["layer1.0.bn1.num_batches_tracked"].numpy())
    cfg = yaml.safe_load(Path(files[1]).read_text())
    m = cfg["MODEL"]
    assert m["WEIGHTS"] == files[0] and m["MASK_ON"] is True
    assert m["RESNETS"] == {"DEPTH": 18, "RES2_OUT_CHANNELS": 64, "STRIDE_IN_1X1": False,
                            "NORM": "SyncBN", "OUT_FEATURES": ["res2", "res3", "res4", "res5"]}
    assert m["FPN"]["NORM"] == m["ROI_BOX_HEAD"]["NORM"] == m["ROI_MASK_HEAD"]["NORM"] == "SyncBN"
    assert (m["ROI_BOX_HEAD"]["NUM_CONV"], m["ROI_BOX_HEAD"]["NUM_FC"]) == (4, 1)
    assert m["PIXEL_MEAN"] == [123.675, 116.28, 103.53] and cfg["INPUT"]["FORMAT"] == "RGB"
    assert m["BACKBONE"]["FREEZE_AT"] == 0
    # detectron2's StandardRPNHead: one 3x3 convolution (eval.detection.rpn_convs = 1).
    assert m["RPN"]["HEAD_NAME"] == "StandardRPNHead" and m["RPN"]["CONV_DIMS"] == [-1]
    s = cfg["SOLVER"]
    assert (s["IMS_PER_BATCH"], s["BASE_LR"], s["MAX_ITER"], s["STEPS"]) == (
        16, 0.02, 90000, [60000, 80000])
    assert cfg["TEST"]["PRECISE_BN"]["ENABLED"] is True
    assert cfg["INPUT"]["MIN_SIZE_TRAIN"] == [640, 672, 704, 736, 768, 800]


def test_detectron2_config_follows_the_schedule_settings():
    cfg = export.detectron2_config("w.pkl", "resnet50", DetectionConfig(schedule=2.0))
    assert (cfg["SOLVER"]["MAX_ITER"], cfg["SOLVER"]["STEPS"]) == (180000, [120000, 160000])
    assert cfg["MODEL"]["RESNETS"]["DEPTH"] == 50
    two = export.detectron2_config("w.pkl", "resnet50", DetectionConfig(rpn_convs=2))
    assert two["MODEL"]["RPN"]["CONV_DIMS"] == [-1, -1]


def test_detectron2_export_of_frozen_batchnorm(tiny_ckpt, tmp_path):
    """norm=frozen: FrozenBN backbone, no PreciseBN (it would re-estimate the frozen
    statistics), and no BatchNorm counters (FrozenBN has none to load them into)."""
    w = backbones.load(tiny_ckpt)
    files = export.export(w, "detectron2", str(tmp_path / "f.pkl"), DetectionConfig(norm="frozen"))
    with open(files[0], "rb") as f:
        model = pickle.load(f)["model"]
    assert not any(k.endswith("num_batches_tracked") for k in model)
    assert len(model) == len([k for k in w.state_dict if not k.endswith("num_batches_tracked")])
    cfg = yaml.safe_load(Path(files[1]).read_text())
    assert cfg["MODEL"]["RESNETS"]["NORM"] == "FrozenBN"
    assert cfg["TEST"]["PRECISE_BN"]["ENABLED"] is False


def test_detectron2_config_normalises_as_the_checkpoint(tmp_path):
    path, _ = make_checkpoint(str(tmp_path / "run"), overrides=OTHER_NORMALISATION)
    files = export.export(backbones.load(path), "detectron2", str(tmp_path / "o.pkl"))
    m = yaml.safe_load(Path(files[1]).read_text())["MODEL"]
    assert m["PIXEL_MEAN"] == [127.5, 102.0, 76.5] and m["PIXEL_STD"] == [51.0, 63.75, 76.5]


def test_detectron2_export_needs_a_pkl_name(tiny_ckpt, tmp_path):
    """detectron2 unpickles only .pkl files (a .pth it reads with torch.load, which fails)."""
    with pytest.raises(ConfigError, match=r"out .*orl\.pth: detectron2 unpickles .*orl\.pkl"):
        export.export(backbones.load(tiny_ckpt), "detectron2", str(tmp_path / "orl.pth"))
    assert not list(tmp_path.iterdir())
    proc = subprocess.run(orl_fast_cmd("export", "--format", "detectron2", "--ckpt", tiny_ckpt,
                                       "--out", str(tmp_path / "orl.pth")),
                          env=subprocess_env(), capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "use " + str(tmp_path / "orl.pkl") in proc.stderr


def test_torchvision_and_timm_exports_load_strictly(tiny_ckpt, tmp_path):
    w = backbones.load(tiny_ckpt)
    path = export.export(w, "torchvision", str(tmp_path / "tv.pth"))[0]
    sd = torch.load(path, weights_only=True)
    net = torchvision.models.resnet18()
    net.fc = torch.nn.Identity()
    net.load_state_dict(sd, strict=True)
    assert torch.equal(net.layer1[0].conv1.weight, w.state_dict["layer1.0.conv1.weight"])
    timm = pytest.importorskip("timm")
    path = export.export(w, "timm", str(tmp_path / "timm.pth"))[0]
    model = timm.create_model("resnet18", pretrained=False, num_classes=0)
    model.load_state_dict(torch.load(path, weights_only=True), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), w.build()(x), atol=1e-5)


def test_timm_resnet50_names_equal_torchvision():
    timm = pytest.importorskip("timm")
    sd = backbones.random_init("resnet50", 0).state_dict
    timm.create_model("resnet50", pretrained=False, num_classes=0).load_state_dict(sd, strict=True)


def test_cli_export(tiny_ckpt, tmp_path):
    proc = subprocess.run(orl_fast_cmd("export", "--format", "detectron2", "--ckpt", tiny_ckpt,
                                       "--out", str(tmp_path / "d2.pkl"),
                                       "eval.detection.schedule=0.5"),
                          env=subprocess_env(), capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["arch"] == "resnet18" and out["files"][1].endswith("d2.yaml")
    assert yaml.safe_load(Path(out["files"][1]).read_text())["SOLVER"]["MAX_ITER"] == 45000

"""Initialising from a torchvision / timm ResNet weights file: Stage 1, Stage 3 and evaluation
read the same files, check their shapes and fail in one line naming the field."""

from __future__ import annotations

import pytest
import torch
from support.common import TINY_MODEL

from evaluation import backbones
from orl_fast.core.config import ConfigError, load_config
from orl_fast.core.models import ORL, build_backbone, init_backbone_
from orl_fast.training import stage1, stage3


@pytest.fixture(scope="module")
def weights_files(tmp_path_factory):
    """resnet18 weights as torchvision saves them (with fc), as a timm-style training checkpoint
    (``state_dict`` entry, ``module.`` prefix), as .safetensors, and resnet34 weights."""
    root = tmp_path_factory.mktemp("weights")
    torch.manual_seed(5)
    net, _ = build_backbone("resnet18")
    sd = net.state_dict()
    torch.save({**sd, "fc.weight": torch.zeros(10, 512), "fc.bias": torch.zeros(10)},
               root / "tv.pth")
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in sd.items()}},
               root / "timm_ckpt.pth.tar")
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in sd.items()}, str(root / "model.safetensors"))
    torch.save(build_backbone("resnet34")[0].state_dict(), root / "r34.pth")
    return root, sd


def test_online_and_target_backbones_from_a_file(weights_files):
    root, sd = weights_files
    cfg = load_config("small", TINY_MODEL)
    for name in ("tv.pth", "timm_ckpt.pth.tar", "model.safetensors"):
        model = ORL(cfg.model)
        init_backbone_(model, str(root / name), cfg.model)
        for branch in (model.online, model.target):
            got = branch.backbone.state_dict()
            assert all(torch.equal(got[k], v) for k, v in sd.items()), name


def test_a_file_of_another_architecture_is_one_config_error(weights_files, coco_shards,
                                                            tiny_config, tmp_path):
    root, _ = weights_files
    cfg = tiny_config(f"data={coco_shards}", f"out={tmp_path / 'a'}",
                      f"model.init_weights={root / 'r34.pth'}")
    with pytest.raises(ConfigError, match=r"^model\.init_weights: .*not a torchvision resnet18"):
        stage1.run(cfg)
    cfg = tiny_config(f"data={coco_shards}", f"out={tmp_path / 'b'}",
                      f"model.init_weights={tmp_path / 'missing.pth'}")
    with pytest.raises(ConfigError, match="model.init_weights: .*missing.pth"):
        stage1.run(cfg)
    cfg = tiny_config(f"data={coco_shards}", f"out={tmp_path / 'c'}", f"pairs={tmp_path}",
                      "orl.init=stage1", f"ckpt={tmp_path}", f"model.init_weights={root}")
    with pytest.raises(ConfigError, match="not with orl.init=stage1"):
        stage3.run(cfg)


def test_evaluation_reads_torchvision_and_timm_files(weights_files):
    root, sd = weights_files
    digests = {backbones.load(str(root / n), "resnet18").digest
               for n in ("tv.pth", "timm_ckpt.pth.tar", "model.safetensors")}
    assert digests == {backbones.digest("resnet18", sd)}

"""The defaults are the official ORL values; `paper` is the defaults; overrides; validation errors
name the field."""

from __future__ import annotations

import pytest
import yaml

from orl_fast.core.config import ConfigError, load_config, shipped_configs
from orl_fast.core.defaults import Config


def test_defaults_are_the_official_orl_values():
    """The values of the ORL paper (Xie et al., NeurIPS 2021, Sec. 4 and the supplementary) and of
    the official code, github.com/Jiahao000/ORL: configs/selfsup/orl/coco/stage1/r50_bs512_ep800.py
    (network, BYOL augmentations, optimiser, schedule), .../stage2/
    r50_bs512_ep800_generate_all_correspondence.py and selective_search_train2017.py (Stage 2),
    .../stage3/r50_bs512_ep800.py (Stage 3)."""
    c = Config()
    # Stage 1 network
    assert c.model.backbone == "resnet50"
    assert (c.model.proj_hidden_dim, c.model.proj_dim) == (4096, 256)
    assert (c.model.pred_hidden_dim, c.model.proj_dim) == (4096, 256)
    assert c.model.sync_bn is True
    # BYOL augmentations
    a = c.aug
    assert a.crop_size == 224 and a.crop_scale == (0.08, 1.0)
    assert a.hflip_p == 0.5
    assert a.color_jitter == (0.4, 0.4, 0.2, 0.1) and a.color_jitter_p == 0.8
    assert a.grayscale_p == 0.2
    assert a.blur_p == (1.0, 0.1) and a.blur_sigma == (0.1, 2.0)
    assert a.solarize_p == (0.0, 0.2)
    # optimiser and schedule
    o, t = c.optim, c.train
    assert o.base_lr == 0.2 and o.lr_base_batch == 256
    assert o.momentum == 0.9 and o.weight_decay == 1e-4
    assert o.exclude_bn_bias_from_wd is False
    assert o.schedule == "cosine" and o.warmup_epochs == 4
    assert t.epochs == 800 and t.batch_size == 512
    assert o.base_lr * t.batch_size / o.lr_base_batch == pytest.approx(0.4)  # 0.2 x 512/256
    assert t.tau_base == 0.99
    # Stage 2
    m = c.mine
    assert m.knn_k == 10 and m.min_box_size == 96 and m.max_iou == 0.5
    assert m.aspect_range[0] == pytest.approx(1 / 3) and m.aspect_range[1] == 3.0
    assert m.max_boxes == 100 and m.roi_size == 224 and m.topn_frac == 0.1
    # Stage 3
    r = c.orl
    assert r.loss_weights == (1.0, 1.0, 1.0) and r.patch_size == 96
    assert r.jitter_shift == 0.5 and r.jitter_area == (0.5, 2.0) and r.jitter_aspect == (0.5, 2.0)
    assert r.jitter_min_iou == 0.5 and r.jitter_tries == 200 and r.init == "scratch"
    # the method itself: mined boxes and pairs, K and N as mined (Stage 2's K=10, N=10% above)
    assert r.patches == "mined" and r.boxes == "mined"
    # p is a kept box, only p' is jittered (openselfsup/datasets/orl.py:112-113); a candidate
    # outside the image is drawn again (orl.py:59)
    assert r.jitter_both is False and r.jitter_outside == "reject"
    assert (r.knn_k, r.topn_frac) == (0, 0.0)


def test_paper_is_the_defaults():
    assert load_config("paper") == Config()
    assert load_config("paper", ["train.epochs=3"]).train.epochs == 3


def test_shipped_configs_load_and_small_is_small():
    assert {"paper", "small"} <= set(shipped_configs())
    s = load_config("small")
    assert s.model.backbone == "resnet18"
    assert s.train.batch_size < 128 and s.train.epochs < 20
    # small changes sizes, never the method's probabilities
    assert s.aug.blur_p == (1.0, 0.1) and s.aug.solarize_p == (0.0, 0.2)


def test_dotted_overrides_are_typed():
    c = load_config("paper", ["train.batch_size=256", "optim.base_lr=0.3", "aug.blur_p=[0.5,0.5]",
                              "train.compile=true", "data=s3://bucket/shards", "model.backbone=resnet18"])
    assert c.train.batch_size == 256 and isinstance(c.train.batch_size, int)
    assert c.optim.base_lr == 0.3
    assert c.aug.blur_p == (0.5, 0.5) and isinstance(c.aug.blur_p, tuple)
    assert c.train.compile is True
    assert c.data == "s3://bucket/shards"
    assert c.model.backbone == "resnet18"


def test_yaml_file_and_round_trip(tmp_path):
    c = load_config("small", ["train.epochs=3"])
    path = tmp_path / "run.yaml"
    path.write_text(c.to_yaml())
    assert load_config(str(path)) == c
    assert yaml.safe_load(c.to_yaml())["train"]["epochs"] == 3


@pytest.mark.parametrize("override, field, allowed", [
    (["train.batch_size=0"], "train.batch_size", "> 0"),
    (["model.backbone=resnet5"], "model.backbone", "resnet50"),
    (["train.precision=fp8"], "train.precision", "bf16"),
    (["train.bogus=1"], "train.bogus", "allowed in train"),
    (["nosuchsection.x=1"], "nosuchsection", "allowed in config"),
    (["aug.crop_scale=[0.9,0.1]"], "aug.crop_scale", "low <= high"),
    (["aug.blur_p=[1.0]"], "aug.blur_p", "expected 2 values"),
    (["aug.hflip_p=1.5"], "aug.hflip_p", "[0, 1]"),
    (["train.epochs=ten"], "train.epochs", "integer"),
    (["train.compile=maybe"], "train.compile", "true or false"),
    (["optim.momentum=1.0"], "optim.momentum", "[0, 1)"),
    (["orl.loss_weights=[0,0,0]"], "orl.loss_weights", "not all 0"),
    (["mine.topn_frac=0"], "mine.topn_frac", "(0, 1]"),
    (["ingest.jpeg_quality=101"], "ingest.jpeg_quality", "[1, 100]"),
])
def test_validation_errors_name_the_field(override, field, allowed):
    with pytest.raises(ConfigError) as e:
        load_config("paper", override)
    assert str(e.value).startswith(field)
    assert allowed in str(e.value)


def test_bad_override_syntax_and_unknown_config():
    with pytest.raises(ConfigError, match="FIELD=VALUE"):
        load_config("paper", ["train.batch_size"])
    with pytest.raises(ConfigError, match="shipped"):
        load_config("no-such-config")


def test_hash_is_stable_and_sensitive():
    a, b = load_config("paper"), load_config("paper")
    assert a.hash() == b.hash() and len(a.hash()) == 16
    assert a.hash("mine") == load_config("paper", ["train.epochs=1"]).hash("mine")
    assert a.hash("mine") != load_config("paper", ["mine.knn_k=20"]).hash("mine")

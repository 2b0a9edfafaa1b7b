"""Semi-supervised fine-tuning and the official linear protocol (evaluation.finetune): the
protocols' values against the official ones, label subsets, trainable layers, schedules, and a
few steps end to end (resumed, reported)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from support.evaluation import make_checkpoint

from evaluation import backbones, finetune
from evaluation.datasets import LabelledImages
from orl_fast.core.config import ConfigError, load_config
from orl_fast.core.defaults import Config
from orl_fast.core.distributed import Runtime
from orl_fast.training.engine import train_step


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return make_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "run"))


def test_semisup_defaults_are_the_papers_protocol():
    """Paper supplementary B ("Semi-supervised learning"): SGD, 20 epochs, batch 256, momentum
    0.9, lr 0.01 for the backbone and 1 for the classifier, x0.2 at epochs 12 and 16, weight
    decay 0 (1%) and 1e-4 (10%). The official configs (Jiahao000/ORL): configs/benchmarks/
    semi_classification/imagenet_1percent/base.py:26-31 (RandomResizedCrop 224 + flip; test
    Resize 256 + CenterCrop 224), :39 (64 per GPU) with benchmarks/dist_train_semi.sh:9 (4 GPUs)
    = batch 256, :68 (step [12, 16], gamma 0.2), :77 (20 epochs); r50_lr0_01_head100_wd0.py:3-4
    (1%: lr 0.01, momentum 0.9, weight decay 0, head lr_mult 100) and imagenet_10percent/
    r50_lr0_01_head100.py:3-4 (10%: weight decay 1e-4); heads/cls_head.py:28 (normal init, std
    0.01)."""
    sc = Config().eval.semisup
    assert sc.fractions == (0.01, 0.1) and sc.weight_decay == (0.0, 1e-4)
    assert (sc.epochs, sc.batch_size, sc.momentum) == (20, 256, 0.9)
    assert sc.lr == 0.01 and sc.lr * sc.head_lr_mult == pytest.approx(1.0)
    assert (sc.milestones, sc.gamma) == ((12, 16), 0.2)
    assert (sc.crop, sc.resize) == (224, 256)


def test_linear_official_defaults_are_the_official_protocol():
    """Official configs/benchmarks/linear_classification/imagenet/r50_multihead_28ep.py: the
    backbone frozen (:13 frozen_stages=4), heads on conv1 and res2-res5 (:11, :17) with the
    'specified' (Goyal et al.) pooling (:16) and SyncBN(momentum 0.1, affine=False) (:20); train
    views RandomResizedCrop 224, flip, ColorJitter(0.4, 0.4, 0.4, 0), Lighting (:33-45; Lighting
    alphastd 0.1: openselfsup/datasets/pipelines/transforms.py Lighting.__init__), test Resize
    256 + CenterCrop 224 (:46-51); batch 32 x 8 = 256 (:53); SGD lr 0.01, momentum 0.9, weight
    decay 1e-4, Nesterov (:78-84); step [8, 16, 24] (:86, mmcv's gamma 0.1), 28 epochs (:89). The
    paper supplementary B: batch 256, lr 0.01 decayed by 0.1 at three equally spaced intervals,
    momentum 0.9, weight decay 1e-4, 28 epochs on ImageNet."""
    lc = Config().eval.linear_official
    assert lc.layers == ("conv1", "res2", "res3", "res4", "res5")
    assert (lc.lr, lc.momentum, lc.nesterov, lc.weight_decay) == (0.01, 0.9, True, 1e-4)
    assert (lc.epochs, lc.milestones, lc.gamma, lc.batch_size) == (28, (8, 16, 24), 0.1, 256)
    assert lc.color_jitter == (0.4, 0.4, 0.4) and lc.lighting_std == 0.1
    assert (lc.crop, lc.resize) == (224, 256)


@pytest.mark.parametrize("override, field", [
    ("eval.semisup.fractions=[0]", "eval.semisup.fractions"),
    ("eval.semisup.weight_decay=[0.0]", "eval.semisup.weight_decay"),
    ("eval.linear_official.layers=[res5,res5]", "eval.linear_official.layers"),
    ("eval.linear_official.momentum=1", "eval.linear_official.momentum"),
])
def test_config_errors_name_the_field(override, field):
    with pytest.raises(ConfigError, match="^" + field.replace(".", r"\.")):
        load_config("paper", [override])


def test_label_subsets_are_seeded_and_per_class():
    rng = np.random.default_rng(0)
    counts = [500, 230, 120, 40, 7]
    truth = np.repeat(np.arange(5), counts)
    single = np.where(np.eye(5, dtype=bool)[truth], 1, -1).astype(np.int8)
    for frac in (0.01, 0.1):
        idx = finetune.label_subset(single, frac, seed=3)
        per_class = (single[idx] == 1).sum(0)
        assert per_class.tolist() == [max(1, round(frac * n)) for n in counts]
        assert np.array_equal(idx, finetune.label_subset(single, frac, seed=3))
        assert not np.array_equal(idx, finetune.label_subset(single, frac, seed=4))
        assert np.array_equal(idx, np.unique(idx))
    # multi-label with difficult labels: every class gets at least its quota of positives,
    # only positives are drawn for it, and the subset stays near the fraction
    multi = rng.choice(np.array([1, -1, 0], np.int8), size=(2000, 6), p=[0.2, 0.75, 0.05])
    idx = finetune.label_subset(multi, 0.1, seed=0)
    quota = np.maximum(1, np.round(0.1 * (multi == 1).sum(0)))
    assert ((multi[idx] == 1).sum(0) >= quota).all()
    assert len(idx) <= quota.sum() and len(idx) >= quota.max()


def test_step_schedule_values():
    """The semi-supervised schedule: lr 0.01 for epochs 0-11, x0.2 from epoch 12, x0.04 from 16;
    the classifier's parameter group at x100 (the lr the loop sets: lr x lr_scale)."""
    s = finetune.StepSchedule(0.01, 20, 5, (12, 16), 0.2)
    assert (s.total_steps, s.stop_step, s.steps_per_epoch) == (100, 100, 5)
    assert s.lr(0) == s.lr(59) == pytest.approx(0.01)
    assert s.lr(60) == s.lr(79) == pytest.approx(0.002)
    assert s.lr(80) == s.lr(99) == pytest.approx(0.0004)
    assert s.tau(10) is None
    assert finetune.StepSchedule(0.01, 28, 3, (8, 16, 24), 0.1, max_steps=7).stop_step == 7
    lin = finetune.StepSchedule(0.01, 28, 3, (8, 16, 24), 0.1)
    assert [lin.lr(e * 3) for e in (7, 8, 16, 24)] == pytest.approx([0.01, 1e-3, 1e-4, 1e-5])


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 224, 224), generator=torch.Generator().manual_seed(seed),
                         dtype=torch.uint8).float()


def _labels(n: int, classes: int) -> torch.Tensor:
    return torch.as_tensor(np.where(np.eye(classes, dtype=bool)[np.arange(n) % classes], 1, -1),
                           dtype=torch.int8)


def test_semisup_trains_every_layer_with_the_classifier_at_100x(tiny_ckpt):
    cfg = load_config("paper", ["eval.device=cpu"])
    w = backbones.load(tiny_ckpt[0])
    model, opt, (lr, epochs, milestones, gamma, _) = finetune.build("semisup", w, 3, cfg, 0.0)
    assert (lr, epochs, milestones, gamma) == (0.01, 20, (12, 16), 0.2)
    assert all(p.requires_grad for p in model.parameters())
    assert model.fc.weight.std().item() == pytest.approx(0.01, rel=0.1)
    assert (model.fc.bias == 0).all() and opt.defaults["weight_decay"] == 0.0
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = _images(4), _labels(4, 3)
    model.train()

    def forward(net, inputs):
        logits = net(inputs[0])[0]
        return finetune.label_loss(logits, inputs[1], True), {}

    train_step(model, model, opt, (x, y), 0.01, None, torch.autocast("cpu", enabled=False),
               forward)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.01, 1.0])
    after = model.state_dict()
    assert not torch.equal(before["backbone.conv1.weight"], after["backbone.conv1.weight"])
    assert not torch.equal(before["backbone.layer4.1.bn2.running_mean"],
                           after["backbone.layer4.1.bn2.running_mean"])  # BN trains too
    assert not torch.equal(before["fc.weight"], after["fc.weight"])


def test_linear_official_freezes_the_backbone_and_trains_one_head_per_layer(tiny_ckpt):
    cfg = load_config("paper", ["eval.device=cpu"])
    w = backbones.load(tiny_ckpt[0])
    model, opt, _ = finetune.build("linear-official", w, 3, cfg, 1e-4)
    # ResNet-18 at 224: conv1 64x12x12, res2 64x6x6, res3 128x4x4, res4 256x3x3, res5 512x2x2
    assert [fc.in_features for fc in model.fcs] == [9216, 2304, 2048, 2304, 2048]
    assert all(not n.affine and n.momentum == 0.1 for n in model.norms)
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert opt.defaults["nesterov"] and opt.defaults["weight_decay"] == 1e-4
    trained = {id(p) for g in opt.param_groups for p in g["params"]}
    assert trained == {id(p) for fc in model.fcs for p in fc.parameters()}
    model.train()
    assert not model.backbone.training and all(n.training for n in model.norms)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    x, y = _images(4), _labels(4, 3)

    def forward(net, inputs):
        return sum(finetune.label_loss(s, inputs[1], True) for s in net(inputs[0])), {}

    fc_before = model.fcs[4].weight.clone()
    train_step(model, model, opt, (x, y), 0.01, None, torch.autocast("cpu", enabled=False),
               forward)
    assert all(torch.equal(v, model.backbone.state_dict()[k]) for k, v in before.items())
    assert not torch.equal(fc_before, model.fcs[4].weight)


def test_train_views_are_seeded_and_lighting_is_the_pca_noise(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)).save(tmp_path / "a.jpg")
    images = LabelledImages(("a",), (str(tmp_path / "a.jpg"),), np.array([[1, -1]], np.int8),
                            ("x", "y"), "test")
    ds = finetune.TrainViews(images, 32, seed=5, color_jitter=(0.4, 0.4, 0.4), lighting_std=0.1)
    v, y, offset = ds[(0, 0)]
    assert v.shape == (3, 32, 32) and v.dtype == torch.uint8 and y.tolist() == [1, -1]
    v2, _, offset2 = ds[(0, 0)]
    assert torch.equal(v, v2) and torch.equal(offset, offset2)
    assert not torch.equal(v, ds[(1, 0)][0])
    offsets = np.stack([ds[(e, 0)][2].numpy() for e in range(400)])
    # alpha ~ N(0, 0.1) per eigenvector: the offset's covariance is V diag((0.1 l)^2) V^T
    want = finetune.LIGHTING_EIGVEC @ np.diag((0.1 * finetune.LIGHTING_EIGVAL) ** 2) \
        @ finetune.LIGHTING_EIGVEC.T
    assert np.allclose(np.cov(offsets.T), want, atol=2e-4)
    plain = finetune.TrainViews(images, 32, seed=5)
    assert (plain[(0, 0)][2] == 0).all()


def test_metrics_top1_top5():
    labels = np.where(np.eye(6, dtype=bool)[[0, 1, 2, 3]], 1, -1).astype(np.int8)
    scores = np.array([[9, 1, 2, 3, 4, 5], [1, 0, 9, 8, 7, 6], [0, 1, 2, 3, 4, 9.0],
                       [5, 4, 3, 9, 1, 0]])
    m = finetune.metrics(scores, labels, tuple("abcdef"))
    assert m["top1"] == pytest.approx(50.0) and m["top5"] == pytest.approx(75.0)


@pytest.mark.parametrize("protocol, extra", [
    ("semisup", ["eval.semisup.fractions=[0.1,0.5]", "eval.semisup.weight_decay=[0,0.0001]",
                 "eval.semisup.crop=64", "eval.semisup.resize=72", "eval.semisup.batch_size=4",
                 "eval.semisup.max_steps=2"]),
    ("linear-official", ["eval.linear_official.batch_size=4", "eval.linear_official.max_steps=1",
                         "eval.linear_official.layers=[res4,res5]"]),
])
def test_runs_end_to_end_resume_and_report(scene_shards, tiny_ckpt, tmp_path, protocol, extra):
    _, instances = scene_shards
    overrides = [f"ckpt={tiny_ckpt[0]}", "eval.device=cpu", "eval.num_workers=0",
                 "eval.batch_size=8", "eval.holdout_frac=0.5", *extra]
    cfg = load_config("paper", overrides)
    rep = finetune.run(protocol, cfg, "", instances, None, str(tmp_path), progress=False)
    assert list(rep["results"]) == ["checkpoint", "random init"]
    runs = rep["results"]["checkpoint"]["runs"]
    assert list(runs) == (["10%", "50%"] if protocol == "semisup" else ["100%"])
    for r in runs.values():
        assert r["stopped_at"] == (2 if protocol == "semisup" else 1)
        assert 0 <= r["layers"][r["best_layer"]]["mAP"] <= 100  # the scenes are multi-label
        assert Path(r["run_dir"], "checkpoints").is_dir()
    if protocol == "semisup":
        assert runs["10%"]["images"] < runs["50%"]["images"] <= 24
        assert runs["50%"]["weight_decay"] == 1e-4
    else:
        assert list(runs["100%"]["layers"]) == ["res4", "res5"]
    saved = json.loads(Path(rep["files"]["json"]).read_text())
    assert saved["protocol"]["task"] == rep["protocol"]["task"]
    assert "| checkpoint |" in Path(rep["files"]["markdown"]).read_text()
    # a finished run is only evaluated again: the same numbers
    again = finetune.run(protocol, cfg, "", instances, None, str(tmp_path), progress=False)
    for name, res in again["results"].items():
        for labels, r in res["runs"].items():
            assert r["layers"] == rep["results"][name]["runs"][labels]["layers"]
    # a longer schedule resumes from the checkpoint
    key = "semisup" if protocol == "semisup" else "linear_official"
    longer = load_config("paper", [*overrides, f"eval.{key}.max_steps=3"])
    first = next(iter(runs.values()))["run_dir"]
    _, ran = finetune.train(protocol, backbones.load(tiny_ckpt[0]),
                            _train_subset(cfg, instances, protocol), longer, first,
                            Runtime(0, 1, 0, torch.device("cpu")), progress=False)
    log = [json.loads(line) for line in Path(first, "metrics.jsonl").read_text().splitlines()]
    assert ran["stopped_at"] == 3 and log[-1]["step"] == 3


def _train_subset(cfg, instances, protocol):
    from evaluation import datasets

    ec = cfg.eval
    train, _, _ = datasets.train_test("", instances, None, ec.holdout_frac, ec.seed)
    if protocol == "semisup":
        return train.subset(finetune.label_subset(train.labels, ec.semisup.fractions[0],
                                                  ec.seed), "subset")
    return train

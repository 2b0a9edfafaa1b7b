"""detectron2 drives the Mask R-CNN transfer: detectron2 loads every backbone tensor of the export
(cleanly, with the checkpoint's input normalisation), and a few iterations on Penn-Fudan with a
ResNet-18 through detectron2's trainer write the torchvision engine's report and resume.

Skipped where detectron2 is not installed (``scripts/install-detectron2.sh`` builds it; CI does).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from support.evaluation import (
    OTHER_NORMALISATION,
    TINY_DETECTION,
    assert_detection_report,
    make_checkpoint,
    pennfudan_subsets,
)

from evaluation import backbones, export
from evaluation.detection import evaluate as det_eval
from evaluation.detection.data import load_data
from orl_fast.core.config import ConfigError, load_config
from orl_fast.core.defaults import DetectionConfig
from orl_fast.core.distributed import init_runtime

pytest.importorskip("detectron2._C", reason="detectron2 is not installed "
                                            "(scripts/install-detectron2.sh builds it)")
from detectron2.config import get_cfg
from detectron2.engine import hooks

from evaluation.detection import detectron2_engine as d2

D2 = [*TINY_DETECTION, "eval.detection.engine=detectron2"]


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return make_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "run"),
                           overrides=tuple(OTHER_NORMALISATION))[0]


@pytest.fixture(scope="module")
def pennfudan(shared_data, tmp_path_factory):
    root = str(shared_data / "pennfudan")
    train_json, val_json = pennfudan_subsets(root, str(tmp_path_factory.mktemp("pf")), 4, 2)
    return root, train_json, val_json


def test_rpn_head_default_is_detectron2s():
    # detectron2/config/defaults.py: _C.MODEL.RPN.CONV_DIMS = [-1] (one 3x3 convolution), the
    # head of the paper's R50-FPN.
    assert get_cfg().MODEL.RPN.CONV_DIMS == [-1] * DetectionConfig().rpn_convs


@pytest.mark.parametrize("norm", ["sync", "frozen"])
def test_detectron2_loads_every_backbone_tensor_of_the_export(norm, tiny_ckpt, pennfudan,
                                                              tmp_path):
    """The engine's own config and trainer: after detectron2's loading (its renaming and
    matching heuristics), every backbone tensor equals the export's, which equals the
    checkpoint's under the torchvision name; the load log lists only the new layers."""
    root, train_json, val_json = pennfudan
    cfg = load_config("paper", [f"ckpt={tiny_ckpt}", *D2, f"eval.detection.norm={norm}"])
    w = backbones.load(tiny_ckpt)
    data = load_data(train_json, val_json, True, 0.5, 0, root, root)
    rt = init_runtime("cpu")
    run_dir = str(tmp_path / "run")
    with d2.logs(run_dir, rt, progress=False):
        d2cfg = d2.build_config(w, data, cfg, run_dir, rt)
        trainer = d2.Trainer(d2cfg, cfg)
        trainer.resume_or_load(resume=True)  # nothing to resume: MODEL.WEIGHTS, the export
    model = trainer.model

    with open(Path(run_dir, "backbone.pkl"), "rb") as f:
        exported = pickle.load(f)["model"]
    prefix = "backbone.bottom_up."
    loaded = {k[len(prefix):]: v for k, v in model.state_dict().items() if k.startswith(prefix)}
    assert set(loaded) == set(exported)
    for name, value in exported.items():
        assert torch.equal(loaded[name], torch.from_numpy(value)), name
    for key, value in w.state_dict.items():
        if norm == "frozen" and key.endswith("num_batches_tracked"):
            continue  # FrozenBN has no counter
        assert torch.equal(loaded[export.detectron2_name(key)], value), key

    log = Path(run_dir, "log.txt").read_text()
    missing = log.split("not found in the checkpoint:")[1].split("\n[")[0]
    assert "fpn_lateral2" in missing and "roi_heads.mask_head" in missing  # the new layers
    assert "bottom_up" not in missing
    assert "not used by the model" not in log
    assert "Starting" not in log  # (no training here)

    # The checkpoint's input normalisation (aug.mean / std, x 255), not ImageNet's.
    assert model.pixel_mean.flatten().tolist() == pytest.approx([127.5, 102.0, 76.5])
    assert model.pixel_std.flatten().tolist() == pytest.approx([51.0, 63.75, 76.5])
    assert isinstance(model.proposal_generator.rpn_head.conv, torch.nn.Conv2d)  # one conv
    norm_type = type(model.backbone.bottom_up.res3[0].conv1.norm).__name__
    precise_bn = any(isinstance(h, hooks.PreciseBN) for h in trainer._hooks)
    if norm == "sync":
        assert norm_type == "SyncBatchNorm" and precise_bn
    else:
        assert norm_type == "FrozenBatchNorm2d" and not precise_bn
    assert not any(isinstance(h, hooks.EvalHook) for h in trainer._hooks)
    assert trainer.max_iter == 2 and d2cfg.SOLVER.MAX_ITER == 90000 * 8  # 1x at batch 2


def test_detectron2_fine_tunes_on_pennfudan_and_writes_the_report(tiny_ckpt, pennfudan,
                                                                  tmp_path):
    root, train_json, val_json = pennfudan
    cfg = load_config("paper", [f"ckpt={tiny_ckpt}", *D2])
    out = tmp_path / "det"
    rep = det_eval.run(cfg, train_json, val_json, str(out), root, root, progress=False)

    assert_detection_report(rep)  # the torchvision engine's keys
    p = rep["protocol"]
    assert p["engine"] == "detectron2" and "COCOEvaluator" in p["metric"]
    assert p["stopped_at"] == 2 and p["schedule"]["max_iter"] == 90000 * 8
    assert rep["dataset"]["train_images"] == 4 and rep["dataset"]["val_images"] == 2
    assert list(rep["results"]) == ["checkpoint", "random init"]
    for name, res in rep["results"].items():
        run_dir = Path(res["run_dir"])
        assert res["backbone_norm"] == "SyncBatchNorm"
        # detectron2's own records: two iterations of losses, the final checkpoint.
        lines = [json.loads(ln) for ln in (run_dir / "metrics.json").read_text().splitlines()]
        assert [ln["iteration"] for ln in lines] == [0, 1], name
        for k in ("total_loss", "loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls",
                  "loss_rpn_loc"):
            assert all(ln[k] >= 0 for ln in lines), (name, k)
        assert (run_dir / "model_final.pth").exists()
        assert (run_dir / "last_checkpoint").read_text().strip() == "model_final.pth"
        assert "Running precise-BN" in (run_dir / "log.txt").read_text()
    md = (out / "detection.md").read_text()
    assert "| checkpoint |" in md and "APmk" in md and "engine detectron2" in md

    # A rerun resumes from detectron2's last checkpoint: no training, the same numbers.
    again = det_eval.run(cfg, train_json, val_json, str(out), root, root, progress=False)
    for name, res in again["results"].items():
        log = (Path(res["run_dir"]) / "log.txt").read_text()
        assert "Starting training from iteration 2" in log, name
        assert len((Path(res["run_dir"]) / "metrics.json").read_text().splitlines()) == 2
        assert (json.dumps(res["metrics"], sort_keys=True)  # (NaN == NaN there)
                == json.dumps(rep["results"][name]["metrics"], sort_keys=True)), name


def test_what_detectron2_cannot_do_is_one_line(tiny_ckpt, pennfudan, tmp_path):
    root, train_json, val_json = pennfudan
    data = load_data(train_json, val_json, True, 0.5, 0, root, root)
    rt = init_runtime("cpu")
    cfg = load_config("paper", [f"ckpt={tiny_ckpt}", *D2])
    with pytest.raises(ConfigError, match=r"--out s3://b/det/checkpoint: the detectron2 engine "
                                          r"reads and writes local paths only"):
        d2.check(data, cfg, "s3://b/det/checkpoint", rt)
    bf16 = load_config("paper", [f"ckpt={tiny_ckpt}", *D2, "eval.precision=bf16"])
    with pytest.raises(ConfigError, match=r"eval.precision: bf16 .* needs a GPU"):
        d2.check(data, bf16, str(tmp_path), rt)
    d2.check(data, cfg, str(tmp_path), rt)  # local, fp32, one process: fine


@pytest.mark.gpu
def test_detectron2_engine_on_cuda_in_bf16(tiny_ckpt, pennfudan, tmp_path):
    root, train_json, val_json = pennfudan
    overrides = [o for o in D2 if o != "eval.device=cpu"]
    cfg = load_config("paper", [f"ckpt={tiny_ckpt}", *overrides, "eval.device=cuda",
                                "eval.precision=bf16"])
    rep = det_eval.run(cfg, train_json, val_json, str(tmp_path / "det"), root, root,
                       progress=False)
    assert_detection_report(rep)
    assert rep["environment"]["device"] != "cpu" and rep["protocol"]["engine"] == "detectron2"
    for res in rep["results"].values():
        assert res["backbone_norm"] == "SyncBatchNorm"
        assert (Path(res["run_dir"]) / "model_final.pth").exists()

"""Backbone weights for other frameworks (``orl-fast export --format ...``).

- ``torchvision``: the ResNet ``state_dict`` without ``fc`` (``.pth``). Load with
  ``m = torchvision.models.resnet50(); m.fc = nn.Identity(); m.load_state_dict(sd)`` (strict), or
  ``strict=False`` to keep a new ``fc``.
- ``timm``: the same tensors, checked against ``timm.create_model(arch, num_classes=0)`` whose
  ResNet names equal torchvision's (``.pth``; ``timm.create_model("resnet50", num_classes=0,
  pretrained=True, pretrained_cfg_overlay={"file": path})`` or ``load_state_dict``).
- ``detectron2``: a pickle ``{"model": {name: numpy array}, "__author__": "orl-fast",
  "matching_heuristics": True}`` with the keys renamed the MoCo way (``conv1`` -> ``stem.conv1``,
  ``bnK`` -> ``convK.norm``, ``layerN`` -> ``res{N+1}``, ``downsample.0/1`` ->
  ``shortcut(.norm)``), written to a ``.pkl`` name (detectron2 unpickles only those; any other
  name it reads with ``torch.load``, so another name is refused). ``num_batches_tracked`` is
  written for the BatchNorm layers detectron2 builds under ``NORM: SyncBN`` (its FrozenBN has
  none, so ``eval.detection.norm=frozen`` leaves them out): every backbone tensor of the model
  loads, and detectron2 reports missing only the new FPN and heads. Beside it a self-contained
  detectron2 config YAML: Mask R-CNN R-FPN, SyncBN everywhere (the backbone's frozen, and no
  PreciseBN, under ``eval.detection.norm=frozen``), the RPN head of ``eval.detection.rpn_convs``,
  the schedule of ``eval.detection`` (1x by default), RGB input normalised with the weights'
  ``aug.mean`` / ``aug.std`` and the stride in the 3x3 convolution (``STRIDE_IN_1X1: False``),
  as MoCo's detectron2 configs set for torchvision-layout weights.
"""

from __future__ import annotations

import io
import os
import pickle
import re

import torch
import yaml

from evaluation.backbones import Weights
from evaluation.detection.schedule import schedule
from orl_fast.core import storage
from orl_fast.core.config import ConfigError
from orl_fast.core.defaults import IMAGENET_MEAN, IMAGENET_STD, DetectionConfig

FORMATS = ("torchvision", "timm", "detectron2")
# detectron2 MODEL.RESNETS settings per torchvision architecture.
D2_RESNETS = {
    "resnet18": {"DEPTH": 18, "RES2_OUT_CHANNELS": 64},
    "resnet34": {"DEPTH": 34, "RES2_OUT_CHANNELS": 64},
    "resnet50": {"DEPTH": 50},
    "resnet101": {"DEPTH": 101},
    "resnet152": {"DEPTH": 152},
    "wide_resnet50_2": {"DEPTH": 50, "WIDTH_PER_GROUP": 128},
}


def detectron2_name(key: str) -> str:
    """torchvision ResNet parameter name -> detectron2 ResNet name (MoCo's renaming)."""
    if not key.startswith("layer"):
        key = "stem." + key
    key = re.sub(r"layer(\d)", lambda m: f"res{int(m.group(1)) + 1}", key)
    key = re.sub(r"bn(\d)", r"conv\1.norm", key)
    return key.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")


def detectron2_state(state_dict: dict[str, torch.Tensor], bn_counts: bool = True) -> dict:
    """detectron2 names -> numpy arrays; ``bn_counts``: keep ``num_batches_tracked`` (which
    detectron2's BatchNorm / SyncBN have and its FrozenBN lacks)."""
    return {detectron2_name(k): v.detach().cpu().numpy() for k, v in state_dict.items()
            if bn_counts or not k.endswith("num_batches_tracked")}


def detectron2_config(weights_file: str, arch: str, dc: DetectionConfig,
                      mean: tuple[float, ...] = IMAGENET_MEAN,
                      std: tuple[float, ...] = IMAGENET_STD) -> dict:
    """A self-contained detectron2 config: Mask R-CNN R-FPN, SyncBN, ``dc``'s schedule, input
    normalised with ``mean`` / ``std`` (RGB in [0, 1], as the weights were trained)."""
    s = schedule(dc)
    levels = ["res2", "res3", "res4", "res5"]
    return {
        "MODEL": {
            "META_ARCHITECTURE": "GeneralizedRCNN", "WEIGHTS": weights_file, "MASK_ON": dc.masks,
            "PIXEL_MEAN": [round(m * 255, 3) for m in mean],
            "PIXEL_STD": [round(v * 255, 3) for v in std],
            "BACKBONE": {"NAME": "build_resnet_fpn_backbone", "FREEZE_AT": 0},
            "RESNETS": {**D2_RESNETS[arch], "OUT_FEATURES": levels, "STRIDE_IN_1X1": False,
                        "NORM": "SyncBN" if dc.norm == "sync" else "FrozenBN"},
            "FPN": {"IN_FEATURES": levels, "NORM": "SyncBN"},
            "ANCHOR_GENERATOR": {"SIZES": [[32], [64], [128], [256], [512]],
                                 "ASPECT_RATIOS": [[0.5, 1.0, 2.0]]},
            # CONV_DIMS: one 3x3 convolution per entry (-1: as many channels as the input).
            "RPN": {"HEAD_NAME": "StandardRPNHead", "CONV_DIMS": [-1] * dc.rpn_convs,
                    "IN_FEATURES": ["p2", "p3", "p4", "p5", "p6"], "PRE_NMS_TOPK_TRAIN": 2000,
                    "PRE_NMS_TOPK_TEST": 1000,
                    "POST_NMS_TOPK_TRAIN": dc.rpn_post_nms_topk_train,
                    "POST_NMS_TOPK_TEST": dc.rpn_post_nms_topk_test},
            "ROI_HEADS": {"NAME": "StandardROIHeads", "IN_FEATURES": ["p2", "p3", "p4", "p5"],
                          "BATCH_SIZE_PER_IMAGE": dc.roi_batch_size_per_image},
            "ROI_BOX_HEAD": {"NAME": "FastRCNNConvFCHead", "NUM_CONV": 4, "NUM_FC": 1,
                             "POOLER_RESOLUTION": 7, "NORM": "SyncBN"},
            "ROI_MASK_HEAD": {"NAME": "MaskRCNNConvUpsampleHead", "NUM_CONV": 4,
                              "POOLER_RESOLUTION": 14, "NORM": "SyncBN"},
        },
        "DATASETS": {"TRAIN": ["coco_2017_train"], "TEST": ["coco_2017_val"]},
        "INPUT": {"FORMAT": "RGB", "MIN_SIZE_TRAIN": list(dc.min_size_train),
                  "MIN_SIZE_TEST": dc.min_size_test, "MAX_SIZE_TRAIN": dc.max_size,
                  "MAX_SIZE_TEST": dc.max_size},
        "SOLVER": {"IMS_PER_BATCH": s.batch_size, "BASE_LR": s.base_lr,
                   "STEPS": list(s.steps), "MAX_ITER": s.max_iter, "MOMENTUM": dc.momentum,
                   "WEIGHT_DECAY": dc.weight_decay, "WEIGHT_DECAY_NORM": dc.weight_decay_norm,
                   "WARMUP_ITERS": s.warmup_iters, "WARMUP_FACTOR": s.warmup_factor},
        # PreciseBN re-estimates every BatchNorm (detectron2 skips none): not for frozen BN.
        "TEST": {"PRECISE_BN": {"ENABLED": dc.norm == "sync" and dc.precise_bn_iters > 0,
                                "NUM_ITER": max(dc.precise_bn_iters, 1)},
                 "DETECTIONS_PER_IMAGE": dc.detections_per_image},
        "VERSION": 2,
    }


def export(weights: Weights, fmt: str, out: str, dc: DetectionConfig | None = None) -> list[str]:
    """Write ``weights`` in ``fmt`` to ``out`` (+ ``<out stem>.yaml`` for detectron2), a local
    path or an fsspec URL; returns the files written."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if fmt == "detectron2" and not out.endswith(".pkl"):
        raise ConfigError(f"out {out}: detectron2 unpickles weights only from a .pkl name (it "
                          f"reads any other with torch.load); use {os.path.splitext(out)[0]}.pkl")
    if weights.stem != "imagenet" and fmt != "torchvision":
        raise ValueError(f"{fmt} export: {fmt} has no ResNet with the {weights.stem!r} stem "
                         "(model.stem); export torchvision weights and build the stem yourself")
    sd = {k: v.detach().cpu().clone() for k, v in weights.state_dict.items()}
    if fmt == "timm":
        _check_timm(sd, weights.arch)
    if fmt in ("torchvision", "timm"):
        # Serialised in memory: the zip's record names do not depend on a temporary file name,
        # so the same weights give the same bytes, at a local path or a URL.
        buf = io.BytesIO()
        torch.save(sd, buf)
        storage.atomic_write(out, buf.getvalue())
        return [out]
    if weights.arch not in D2_RESNETS:
        raise ValueError(f"detectron2 export: no detectron2 ResNet for {weights.arch}")
    dc = dc or DetectionConfig()
    payload = {"model": detectron2_state(sd, bn_counts=dc.norm == "sync"),
               "__author__": f"orl-fast ({weights.source})",
               "matching_heuristics": True}
    storage.atomic_write(out, pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL))
    config_path = os.path.splitext(out)[0] + ".yaml"
    frozen = "" if dc.norm == "sync" else " (FrozenBN in the backbone)"
    header = (f"# detectron2 config for {os.path.basename(out)} ({weights.arch} from "
              f"{weights.source}):\n# Mask R-CNN R-FPN with SyncBN{frozen}, as the ORL paper's "
              "COCO transfer. Train with detectron2's tools/train_net.py --config-file THIS.\n")
    weights_file = out if "://" in out else os.path.abspath(out)
    body = yaml.safe_dump(detectron2_config(weights_file, weights.arch, dc, weights.mean,
                                            weights.std), sort_keys=False)
    storage.atomic_write(config_path, (header + body).encode())
    return [out, config_path]


def _check_timm(sd: dict[str, torch.Tensor], arch: str) -> None:
    """The export must load strictly into timm's model of the same name (when timm is here)."""
    try:
        import timm
    except ImportError:
        return
    model = timm.create_model(arch, pretrained=False, num_classes=0)
    model.load_state_dict(sd, strict=True)

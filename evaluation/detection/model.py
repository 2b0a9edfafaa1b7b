"""The detector of the transfer (Mask R-CNN / Faster R-CNN R-FPN with v2-style heads on the
checkpoint's ResNet, normalising its input with the checkpoint's mean / std) and its
optimiser."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, RPNHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads
from torchvision.models.detection.rpn import AnchorGenerator
from torchvision.ops.misc import FrozenBatchNorm2d

from evaluation.backbones import Weights
from orl_fast.core.defaults import DetectionConfig


def build_model(weights: Weights, num_classes: int, dc: DetectionConfig) -> nn.Module:
    """Mask R-CNN (Faster R-CNN when ``dc.masks`` is off) with v2-style heads on an FPN over the
    ResNet of ``weights``; every layer trainable. ``num_classes`` excludes the background. The
    RPN head has ``dc.rpn_convs`` 3x3 convolutions (1: detectron2's, 2: torchvision v2's)."""
    resnet = weights.build()
    if dc.norm == "frozen":
        resnet = freeze_batchnorm(resnet)
    body = _resnet_fpn_extractor(resnet, trainable_layers=5, norm_layer=nn.BatchNorm2d)
    anchors = AnchorGenerator(((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5)
    common = {
        "num_classes": num_classes + 1, "min_size": tuple(dc.min_size_train),
        "max_size": dc.max_size, "image_mean": list(weights.mean),
        "image_std": list(weights.std), "rpn_anchor_generator": anchors,
        "rpn_head": RPNHead(body.out_channels, anchors.num_anchors_per_location()[0],
                            conv_depth=dc.rpn_convs),
        # Per FPN level before NMS (torchvision defaults = detectron2's 2000 / 1000), per image
        # after NMS (detectron2 FPN: 1000 / 1000).
        "rpn_post_nms_top_n_train": dc.rpn_post_nms_topk_train,
        "rpn_post_nms_top_n_test": dc.rpn_post_nms_topk_test,
        "box_batch_size_per_image": dc.roi_batch_size_per_image,
        "box_detections_per_img": dc.detections_per_image,
        "box_head": FastRCNNConvFCHead((body.out_channels, 7, 7), [256] * 4, [1024],
                                       norm_layer=nn.BatchNorm2d),
    }
    if not dc.masks:
        return FasterRCNN(body, **common)
    return MaskRCNN(body, mask_head=MaskRCNNHeads(body.out_channels, [256] * 4, 1,
                                                  norm_layer=nn.BatchNorm2d), **common)


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Every BatchNorm2d -> FrozenBatchNorm2d with the same statistics and affine parameters."""
    if isinstance(module, nn.BatchNorm2d):
        frozen = FrozenBatchNorm2d(module.num_features, module.eps)
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(frozen, name).copy_(getattr(module, name).detach())
        return frozen
    for name, child in module.named_children():
        setattr(module, name, freeze_batchnorm(child))
    return module


def make_optimizer(model: nn.Module, dc: DetectionConfig, lr: float) -> torch.optim.SGD:
    """SGD; normalisation parameters use ``weight_decay_norm`` (detectron2 WEIGHT_DECAY_NORM)."""
    norm, other = [], []
    for module in model.modules():
        for p in module.parameters(recurse=False):
            if p.requires_grad:
                (norm if isinstance(module, nn.modules.batchnorm._NormBase) else other).append(p)
    return torch.optim.SGD([{"params": other, "weight_decay": dc.weight_decay},
                            {"params": norm, "weight_decay": dc.weight_decay_norm}],
                           lr=lr, momentum=dc.momentum)

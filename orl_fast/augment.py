"""BYOL augmentations on uint8 CHW tensors (torchvision v2), the CPU reference pipeline.

View 1 and view 2 differ only in blur and solarise probabilities (BYOL's asymmetry). Global views
start with a random resized crop; RoI patches (Stage 3) are cut by box and resized first, then get
the same flip + colour pipeline. Normalisation happens on the device, batched
(:func:`normalize`), so workers ship uint8 tensors.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torchvision.transforms.v2 as T
from torchvision.transforms import InterpolationMode

from orl_fast.config import AugmentConfig

Transform = Callable[[torch.Tensor], torch.Tensor]

INTERPOLATION = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}


def blur_kernel_size(sigma_max: float) -> int:
    """Odd kernel covering +-3 sigma: sigma is in pixels, as PIL's GaussianBlur(radius=sigma)."""
    return 2 * math.ceil(3 * sigma_max) + 1


def blur_kernel(cfg: AugmentConfig) -> int:
    """The blur kernel of a config: +-3 x its largest sigma at its crop size."""
    return blur_kernel_size(cfg.blur_sigma_px[1])


def photometric(cfg: AugmentConfig, view: int) -> Transform:
    """Flip, colour jitter, grayscale, blur, solarise: what every view and patch gets."""
    return T.Compose([
        T.RandomHorizontalFlip(cfg.hflip_p),
        T.RandomApply([T.ColorJitter(*cfg.color_jitter)], p=cfg.color_jitter_p),
        T.RandomGrayscale(cfg.grayscale_p),
        T.RandomApply([T.GaussianBlur(blur_kernel(cfg), cfg.blur_sigma_px)], p=cfg.blur_p[view]),
        T.RandomSolarize(cfg.solarize_threshold, p=cfg.solarize_p[view]),
    ])


def global_view(cfg: AugmentConfig, view: int, size: int | None = None) -> Transform:
    """BYOL global view ``view`` (0 or 1): random resized crop, then :func:`photometric`."""
    return T.Compose([
        T.RandomResizedCrop(size or cfg.crop_size, scale=cfg.crop_scale, ratio=cfg.crop_ratio,
                            interpolation=INTERPOLATION[cfg.interpolation], antialias=True),
        photometric(cfg, view),
    ])


class TwoViews:
    """image -> (view 1, view 2) with BYOL's asymmetric pipelines."""

    def __init__(self, cfg: AugmentConfig):
        self.views = (global_view(cfg, 0), global_view(cfg, 1))

    def __call__(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.views[0](img), self.views[1](img)


def normalize(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...],
              channels_last: bool = False) -> torch.Tensor:
    """uint8 BCHW (on any device) -> float normalised, optionally channels_last."""
    m, s = _stats(tuple(mean), tuple(std), x.device)
    y = (x.float() - m) / s
    return y.contiguous(memory_format=torch.channels_last) if channels_last else y


@functools.lru_cache(maxsize=16)
def _stats(mean: tuple[float, ...], std: tuple[float, ...],
           device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std x 255 as [1, C, 1, 1] tensors, made once per device: building them per call
    is a blocking host-to-device copy that stalls the CPU on every training step."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255
    return m.to(device), s.to(device)

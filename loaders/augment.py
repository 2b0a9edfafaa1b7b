"""What the renderers of the BYOL augmentations share, and normalisation on the device.

The augmentations themselves are drawn once per sample into its plan
(:func:`loaders.orl_samples.draw_photometric`) and rendered by :mod:`loaders.orl_torch` (CPU) or
:mod:`loaders.dali_loader` (GPU). Normalisation happens on the device, batched
(:func:`normalize`), so workers ship uint8 tensors.
"""

from __future__ import annotations

import functools
import math

import torch
from torchvision.transforms import InterpolationMode

from orl_fast.core.defaults import AugmentConfig

INTERPOLATION = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}


def blur_kernel_size(sigma_max: float) -> int:
    """Odd kernel covering +-3 sigma: sigma is in pixels, as PIL's GaussianBlur(radius=sigma)."""
    return 2 * math.ceil(3 * sigma_max) + 1


def blur_kernel(cfg: AugmentConfig) -> int:
    """The blur kernel of a config: +-3 x its largest sigma at its crop size."""
    return blur_kernel_size(cfg.blur_sigma_px[1])


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

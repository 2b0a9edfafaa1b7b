"""Image bytes -> pixels: the one CPU decoder of every step (Pillow), always RGB.

Shards hold clean RGB JPEGs (:mod:`loaders.sanitize`); evaluation sets and attention images are
any format Pillow reads. GPU decoding (nvJPEG in mining, DALI in training) falls back to these
for images its decoder rejects. Every function raises when the bytes do not decode: what happens
then (replace the sample, count the image, stop) is the caller's policy.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the header alone (no decode): what a GPU decoder is handed is checked
    with it first."""
    with Image.open(io.BytesIO(data)) as img:
        return img.size


def open_rgb(data: bytes) -> Image.Image:
    """Bytes -> a decoded RGB Pillow image."""
    with Image.open(io.BytesIO(data)) as img:
        return img.convert("RGB")


def decode_array(data: bytes) -> np.ndarray:
    """Bytes -> HWC uint8 RGB array."""
    return np.array(open_rgb(data))


def decode_rgb(data: bytes) -> torch.Tensor:
    """Bytes -> uint8 CHW RGB tensor."""
    return torch.from_numpy(decode_array(data)).permute(2, 0, 1)

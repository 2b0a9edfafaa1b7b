"""BYOL augmentations: shapes, ranges, and the configured probabilities over many draws."""

from __future__ import annotations

import math

import pytest
import torch

from orl_fast.augment import TwoViews, blur_kernel_size, global_view, normalize, photometric
from orl_fast.config import AugmentConfig, load_config

N = 1500


def only(**kw) -> AugmentConfig:
    """Every random op off except those named (probabilities and ranges from ``kw``)."""
    base = {"hflip_p": 0.0, "color_jitter_p": 0.0, "grayscale_p": 0.0, "blur_p": (0.0, 0.0),
                "solarize_p": (0.0, 0.0)}
    base.update(kw)
    return AugmentConfig(**base)


def rate(transform, img: torch.Tensor, changed) -> float:
    torch.manual_seed(0)
    return sum(bool(changed(transform(img))) for _ in range(N)) / N


def within(observed: float, p: float) -> bool:
    """Binomial check: |observed - p| below 4.5 standard deviations (and exact at 0 and 1)."""
    sd = math.sqrt(p * (1 - p) / N)
    return abs(observed - p) <= max(4.5 * sd, 1e-9)


def test_global_views_shapes_dtype_and_range():
    img = torch.randint(0, 256, (3, 150, 200), dtype=torch.uint8)
    torch.manual_seed(0)
    v1, v2 = TwoViews(AugmentConfig())(img)
    assert v1.shape == v2.shape == (3, 224, 224)
    assert v1.dtype == torch.uint8
    small = global_view(load_config("small").aug, 0)(img)
    assert small.shape == (3, 96, 96)
    x = normalize(torch.stack([v1, v2]), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert x.dtype == torch.float32 and x.shape == (2, 3, 224, 224)
    assert x.min() >= -0.485 / 0.229 - 1e-4 and x.max() <= (1 - 0.406) / 0.225 + 1e-4


def test_normalize_hand_computed_and_channels_last():
    x = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    y = normalize(x, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), channels_last=True)
    assert torch.allclose(y, torch.full_like(y, 2.0))
    assert y.is_contiguous(memory_format=torch.channels_last)


def test_blur_kernel_covers_three_sigma():
    assert blur_kernel_size(2.0) == 13 and blur_kernel_size(0.5) == 5


def test_flip_rate():
    img = torch.arange(3 * 8 * 8, dtype=torch.uint8).reshape(3, 8, 8)
    obs = rate(photometric(only(hflip_p=0.5), 0), img, lambda y: torch.equal(y, img.flip(-1)))
    assert within(obs, 0.5)


def test_grayscale_rate():
    img = torch.stack([torch.full((8, 8), v, dtype=torch.uint8) for v in (30, 120, 220)])
    obs = rate(photometric(only(grayscale_p=0.2), 0), img,
               lambda y: torch.equal(y[0], y[1]) and torch.equal(y[1], y[2]))
    assert within(obs, 0.2)


def test_color_jitter_rate():
    img = torch.stack([torch.full((8, 8), v, dtype=torch.uint8) for v in (60, 120, 180)])
    obs = rate(photometric(only(color_jitter_p=0.8), 0), img, lambda y: not torch.equal(y, img))
    assert within(obs, 0.8)


@pytest.mark.parametrize("view, p", [(0, 1.0), (1, 0.1)])
def test_blur_rate_per_view(view, p):
    cfg = only(blur_p=(1.0, 0.1), blur_sigma=(1.5, 2.0))  # wide enough to always show
    img = torch.zeros(3, 16, 16, dtype=torch.uint8)
    img[:, :, 8:] = 255
    obs = rate(photometric(cfg, view), img, lambda y: not torch.equal(y, img))
    assert within(obs, p)


@pytest.mark.parametrize("view, p", [(0, 0.0), (1, 0.2)])
def test_solarize_rate_per_view(view, p):
    cfg = only(solarize_p=(0.0, 0.2))
    img = torch.full((3, 8, 8), 200, dtype=torch.uint8)
    obs = rate(photometric(cfg, view), img, lambda y: int(y[0, 0, 0]) == 55)
    assert within(obs, p)


def test_default_pipeline_is_byol_asymmetric():
    cfg = AugmentConfig()
    v1, v2 = TwoViews(cfg).views
    ops1 = [type(t).__name__ for t in v1.transforms[1].transforms]
    assert ops1 == ["RandomHorizontalFlip", "RandomApply", "RandomGrayscale", "RandomApply",
                    "RandomSolarize"]
    blur1, blur2 = v1.transforms[1].transforms[3], v2.transforms[1].transforms[3]
    sol1, sol2 = v1.transforms[1].transforms[4], v2.transforms[1].transforms[4]
    assert (blur1.p, blur2.p, sol1.p, sol2.p) == (1.0, 0.1, 0.0, 0.2)
    crop = v1.transforms[0]
    assert crop.size == (224, 224) and crop.scale == (0.08, 1.0)


def test_same_seed_same_views():
    img = torch.randint(0, 256, (3, 64, 80), dtype=torch.uint8)
    tv = TwoViews(AugmentConfig(crop_size=32))
    torch.manual_seed(7)
    a = tv(img)
    torch.manual_seed(7)
    b = tv(img)
    assert all(torch.equal(x, y) for x, y in zip(a, b))

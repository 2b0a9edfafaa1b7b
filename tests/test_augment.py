"""BYOL augmentations as both stages draw and render them (sample plans, the torch renderer):
shapes, ranges, and the configured probabilities over many draws."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from loaders.augment import blur_kernel_size, normalize
from loaders.orl_samples import SamplePlan, draw_photometric
from loaders.orl_torch import augment, render
from orl_fast.core.boxes import random_resized_crop
from orl_fast.core.config import load_config
from orl_fast.core.defaults import AugmentConfig

N = 1500


def photometric(cfg: AugmentConfig, view: int):
    """image -> the photometric augmentation of one crop of ``view``, drawn as a plan draws it
    (flip, colour jitter, grayscale, blur, solarise), from a generator seeded by ``rate``."""
    def apply(img: torch.Tensor) -> torch.Tensor:
        return augment(img, draw_photometric(RNG[0], cfg, np.array([view])), 0, cfg)
    return apply


def two_views(cfg: AugmentConfig, img: torch.Tensor, rng: np.random.Generator,
              size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """image -> (view 1, view 2): the random resized crops and the asymmetric photometric
    augmentation of a sample plan's crops 0 and 1, rendered by the torch renderer."""
    h, w = img.shape[1:]
    boxes = np.stack([random_resized_crop(rng, w, h, cfg.crop_scale, cfg.crop_ratio)
                      for _ in range(2)])
    plan = SamplePlan(0, 0, w, h, boxes, draw_photometric(rng, cfg, np.array([0, 1])), False,
                      False)
    views, _ = render(plan, img, img, (0, 1), size or cfg.crop_size, 8, cfg)
    return views[0], views[1]


RNG = [np.random.default_rng(0)]


def only(**kw) -> AugmentConfig:
    """Every random op off except those named (probabilities and ranges from ``kw``)."""
    base = {"hflip_p": 0.0, "color_jitter_p": 0.0, "grayscale_p": 0.0, "blur_p": (0.0, 0.0),
                "solarize_p": (0.0, 0.0)}
    base.update(kw)
    return AugmentConfig(**base)


def rate(transform, img: torch.Tensor, changed) -> float:
    RNG[0] = np.random.default_rng(0)
    return sum(bool(changed(transform(img))) for _ in range(N)) / N


def within(observed: float, p: float) -> bool:
    """Binomial check: |observed - p| below 4.5 standard deviations (and exact at 0 and 1)."""
    sd = math.sqrt(p * (1 - p) / N)
    return abs(observed - p) <= max(4.5 * sd, 1e-9)


def test_global_views_shapes_dtype_and_range():
    img = torch.randint(0, 256, (3, 150, 200), dtype=torch.uint8)
    v1, v2 = two_views(AugmentConfig(), img, np.random.default_rng(0))
    assert v1.shape == v2.shape == (3, 224, 224)
    assert v1.dtype == torch.uint8
    small, _ = two_views(load_config("small").aug, img, np.random.default_rng(0))
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
    """The paper's pipeline: random resized crop 224 (scale 0.08-1), then flip, colour jitter,
    grayscale, blur, solarise in torchvision's order, blur 1.0 / 0.1 and solarise 0 / 0.2 for
    views 1 / 2 (BYOL's asymmetry)."""
    cfg = AugmentConfig()
    rng = np.random.default_rng(0)
    draws = [draw_photometric(rng, cfg, np.array([0, 1])) for _ in range(N)]
    blur = np.array([d.sigma > 0 for d in draws]).mean(0)
    solar = np.array([d.solarize for d in draws]).mean(0)
    assert within(blur[0], 1.0) and within(blur[1], 0.1)
    assert within(solar[0], 0.0) and within(solar[1], 0.2)
    assert list(draws[0].__dataclass_fields__) == ["flip", "jitter", "order", "factors", "gray",
                                                   "sigma", "solarize"]
    crops = np.stack([random_resized_crop(rng, 400, 300, cfg.crop_scale, cfg.crop_ratio)
                      for _ in range(N)])
    area = crops[:, 2] * crops[:, 3] / (400 * 300)
    assert area.min() >= 0.08 - 0.01 and area.max() <= 1.0 and area.min() < 0.15
    views = two_views(cfg, torch.zeros(3, 300, 400, dtype=torch.uint8), rng)
    assert all(v.shape == (3, 224, 224) for v in views)


def test_same_seed_same_views():
    img = torch.randint(0, 256, (3, 64, 80), dtype=torch.uint8)
    cfg = AugmentConfig(crop_size=32)
    a = two_views(cfg, img, np.random.default_rng(7))
    b = two_views(cfg, img, np.random.default_rng(7))
    assert all(torch.equal(x, y) for x, y in zip(a, b))

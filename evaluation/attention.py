"""Attention maps (paper Fig. 4): the channel mean of the last-stage (res5) activations, upsampled
over the image, min-max scaled per image and drawn as a heat map over it; several checkpoints
(BYOL vs ORL) and the random-init baseline side by side.

``write(models, images, out, size)`` writes ``OUT/attention/<n>.png`` (one row per image: the
image, then one overlay per model), ``OUT/attention/grid.png`` (all rows) and
``OUT/attention/index.html``.
"""

from __future__ import annotations

import html
import os

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image, ImageDraw

from evaluation.backbones import Weights
from evaluation.features import resolve_device, stages
from loaders.augment import normalize
from loaders.images import open_rgb
from orl_fast.core import storage
from orl_fast.core.defaults import IMAGENET_MEAN, IMAGENET_STD

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
LABEL_HEIGHT = 18


def list_images(source: str, limit: int) -> list[str]:
    """The first ``limit`` images (sorted) of a directory, or the paths listed in a text file
    (local or fsspec URLs, e.g. ``s3://bucket/images``)."""
    if storage.isdir(source):
        names = sorted(n for n in storage.listdir(source) if n.lower().endswith(IMAGE_EXTENSIONS))
        paths = [storage.join(source, n) for n in names]
    else:
        paths = [ln.strip() for ln in storage.read_text(source).splitlines() if ln.strip()]
    if not paths:
        raise FileNotFoundError(f"{source}: no images")
    return paths[:limit] if limit else paths


def load_image(path: str, size: int) -> Image.Image:
    """RGB, shorter side resized to ``size``."""
    img = open_rgb(storage.read_bytes(path))
    return TF.resize(img, size)


@torch.no_grad()
def attention_map(model: torch.nn.Module, image: Image.Image, device: torch.device) -> np.ndarray:
    """(H, W) float in [0, 1]: mean over channels of res5, bilinearly upsampled, min-max scaled."""
    x = normalize(TF.pil_to_tensor(image)[None].to(device), IMAGENET_MEAN, IMAGENET_STD)
    *_, x = stages(model, x, 4)
    a = F.interpolate(x.float().mean(1, keepdim=True), size=image.size[::-1], mode="bilinear",
                      align_corners=False)[0, 0]
    a = (a - a.min()) / (a.max() - a.min()).clamp_min(1e-12)
    return a.cpu().numpy()


def jet(a: np.ndarray) -> np.ndarray:
    """The classic jet colour map: [0, 1] -> uint8 RGB (blue, cyan, yellow, red)."""
    r = np.clip(1.5 - np.abs(4 * a - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * a - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * a - 1), 0, 1)
    return (np.stack([r, g, b], -1) * 255).astype(np.uint8)


def overlay(image: Image.Image, a: np.ndarray, alpha: float = 0.5) -> Image.Image:
    return Image.blend(image, Image.fromarray(jet(a)), alpha)


def _labelled(tile: Image.Image, label: str) -> Image.Image:
    out = Image.new("RGB", (tile.width, tile.height + LABEL_HEIGHT), "white")
    out.paste(tile, (0, LABEL_HEIGHT))
    ImageDraw.Draw(out).text((4, 3), label, fill="black")
    return out


def _stack(tiles: list[Image.Image], horizontal: bool, gap: int = 4) -> Image.Image:
    """Tiles side by side (or one under the other) on white, ``gap`` pixels apart."""
    along = [t.width if horizontal else t.height for t in tiles]
    across = max(t.height if horizontal else t.width for t in tiles)
    length = sum(along) + gap * (len(tiles) - 1)
    out = Image.new("RGB", (length, across) if horizontal else (across, length), "white")
    offset = 0
    for t, size in zip(tiles, along):
        out.paste(t, (offset, 0) if horizontal else (0, offset))
        offset += size + gap
    return out


def write(models: list[tuple[str, Weights]], images: list[str], out: str, size: int,
          device: str = "auto") -> dict:
    """Attention rows for every image and model; returns the files written and the labels."""
    dev = resolve_device(device)
    nets = [(label, w.build().to(dev).eval()) for label, w in models]
    directory = storage.join(out, "attention")
    storage.makedirs(directory)
    rows, files = [], []
    for i, path in enumerate(images):
        image = load_image(path, size)
        tiles = [_labelled(image, os.path.basename(path))]
        tiles += [_labelled(overlay(image, attention_map(net, image, dev)), label)
                  for label, net in nets]
        row = _stack(tiles, horizontal=True)
        name = f"{i:04d}.png"
        _save_png(row, storage.join(directory, name))
        rows.append(row)
        files.append(name)
    _save_png(_stack(rows, horizontal=False), storage.join(directory, "grid.png"))
    page = storage.join(directory, "index.html")
    storage.atomic_write(page, _html(models, images, files).encode())
    return {"directory": directory, "grid": storage.join(directory, "grid.png"), "html": page,
            "rows": [storage.join(directory, f) for f in files],
            "models": [{"label": label, "source": w.source, "arch": w.arch}
                       for label, w in models]}


def _save_png(img: Image.Image, path: str) -> None:
    with storage.atomic_local_file(path) as tmp:
        img.save(tmp, format="PNG")


def _html(models: list[tuple[str, Weights]], images: list[str], files: list[str]) -> str:
    rows = "\n".join(f'<p><img src="{f}" alt="{html.escape(os.path.basename(p))}"></p>'
                     for p, f in zip(images, files))
    sources = "".join(f"<li><b>{html.escape(label)}</b>: {html.escape(w.source)} ({w.arch})</li>"
                      for label, w in models)
    labels = html.escape(", ".join(label for label, _ in models))
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>orl-fast attention maps</title>
<style>body{{font-family:sans-serif}} img{{max-width:100%}}</style></head>
<body><h1>Attention maps</h1>
<p>Mean of the last-stage (res5) activations over channels, bilinearly upsampled to the image,
min-max scaled per image, as a jet heat map over it (paper Fig. 4). Each row: the image, then
{labels}.</p>
<ul>{sources}</ul>
{rows}
<p><a href="grid.png">All rows in one PNG</a></p>
</body></html>
"""

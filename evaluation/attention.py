"""Attention maps (paper Fig. 4): the channel mean of the last-stage (res5) activations, upsampled
over the image, min-max scaled per image and drawn as a heat map over it; several checkpoints
(BYOL vs ORL) and the random-init baseline side by side.

``write(models, images, out, size)`` writes ``OUT/attention/<n>.png`` (one row per image: the
image, then one overlay per model, under the column names), ``OUT/attention/grid.png`` (all rows,
the column names above, a colour bar below) and ``OUT/attention/index.html``. Every column is as wide as the widest
image and every image centred in it, so the columns stay aligned when the images' aspect ratios
differ.
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
from loaders.drawing import font, label, sheet, short_name, text_block
from loaders.images import open_rgb
from orl_fast.core import storage
from orl_fast.core.defaults import IMAGENET_MEAN, IMAGENET_STD

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
GAP = 8
LABEL_SIZE = 16  # px: column names
COLOUR_BAR = (400, 14)  # colour bar: at most this wide, this tall


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
    """RGB, shorter side resized to ``size`` (the longer side at most 2 x ``size``)."""
    img = TF.resize(open_rgb(storage.read_bytes(path)), size)
    if max(img.size) > 2 * size:
        scale = 2 * size / max(img.size)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                         Image.BILINEAR)
    return img


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


def _named(image: Image.Image, name: str) -> Image.Image:
    """The image with its file name over its bottom-left corner."""
    out = image.copy()
    size = max(11, min(LABEL_SIZE, out.height // 12))
    label(ImageDraw.Draw(out), (4, out.height - size - 6), short_name(name, 30), size)
    return out


def _column_names(names: list[str], cell: tuple[int, int]) -> Image.Image:
    """The column names, each centred over its column of a :func:`loaders.drawing.sheet`."""
    blocks = [text_block([(n, (0, 0, 0))], LABEL_SIZE, cell[0], centre=True) for n in names]
    strip = Image.new("RGB", (len(names) * (cell[0] + GAP), max(b.height for b in blocks)),
                      "white")
    for c, block in enumerate(blocks):
        strip.paste(block, (c * (cell[0] + GAP), 0))
    return strip


def colour_bar(width: int = COLOUR_BAR[0]) -> Image.Image:
    """The jet scale from low to high attention, labelled, ``width`` pixels wide in all."""
    f = font(13)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    low, high = int(probe.textlength("low ", font=f)), int(probe.textlength(" high", font=f))
    length = max(16, width - low - high)
    bar = Image.fromarray(np.repeat(jet(np.linspace(0, 1, length))[None], COLOUR_BAR[1], 0))
    caption = text_block([("attention: res5 channel mean, min-max scaled per image",
                           (60, 60, 60))], 13, max(length, 1))
    out = Image.new("RGB", (low + length + high, COLOUR_BAR[1] + 4 + caption.height), "white")
    out.paste(bar, (low, 0))
    draw = ImageDraw.Draw(out)
    draw.text((0, -1), "low", font=f, fill=(0, 0, 0))
    draw.text((low + length + 4, -1), "high", font=f, fill=(0, 0, 0))
    out.paste(caption, (low, COLOUR_BAR[1] + 2))
    return out


def _grid(rows: list[list[Image.Image]], names: list[str], cell: tuple[int, int],
          bar: bool) -> Image.Image:
    """Rows of cells under the column names, the colour bar under them."""
    grid = sheet(rows, cell[0], GAP, header=_column_names(names, cell))
    if not bar:
        return grid
    scale = colour_bar(min(COLOUR_BAR[0], grid.width - 2 * GAP))
    out = Image.new("RGB", (grid.width, grid.height + scale.height + GAP), "white")
    out.paste(grid, (0, 0))
    out.paste(scale, (GAP, grid.height))
    return out


def write(models: list[tuple[str, Weights]], images: list[str], out: str, size: int,
          device: str = "auto") -> dict:
    """Attention rows for every image and model; returns the files written and the labels."""
    dev = resolve_device(device)
    nets = [(name, w.build().to(dev).eval()) for name, w in models]
    directory = storage.join(out, "attention")
    storage.makedirs(directory)
    loaded = [load_image(path, size) for path in images]
    cell = (max(im.width for im in loaded), max(im.height for im in loaded))
    names = ["image", *(name for name, _ in models)]
    rows, files = [], []
    for i, (path, image) in enumerate(zip(images, loaded)):
        row = [_named(image, os.path.basename(path))]
        row += [overlay(image, attention_map(net, image, dev)) for _, net in nets]
        name = f"{i:04d}.png"
        _save_png(_grid([row], names, cell, bar=False), storage.join(directory, name))
        rows.append(row)
        files.append(name)
    _save_png(_grid(rows, names, cell, bar=True), storage.join(directory, "grid.png"))
    page = storage.join(directory, "index.html")
    storage.atomic_write(page, _html(models, images, files).encode())
    return {"directory": directory, "grid": storage.join(directory, "grid.png"), "html": page,
            "rows": [storage.join(directory, f) for f in files], "cell": list(cell),
            "models": [{"label": name, "source": w.source, "arch": w.arch}
                       for name, w in models]}


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

"""Generated scene images with known objects, for the demo, tests and benchmarks.

Each scene is a textured background with 1-4 objects drawn from a few categories that differ in
shape, colour and texture, so object-level similarity across images is real and measurable. The
ground truth is written in COCO instances format (boxes in pixels, xywh), so the mining purity
measure and the detection evaluation run on it exactly as on COCO.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CATEGORIES = ("disc", "square", "triangle", "cross", "ring", "diamond")
_COLOURS = {  # base colour per category (RGB)
    "disc": (220, 60, 50), "square": (50, 90, 220), "triangle": (40, 170, 70),
    "cross": (230, 200, 40), "ring": (160, 60, 200), "diamond": (240, 130, 30),
}


@dataclass(frozen=True)
class SceneObject:
    category: str
    box: tuple[int, int, int, int]  # x, y, w, h


def _background(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c0, c1 = rng.uniform(60, 200, 3), rng.uniform(60, 200, 3)
    t = (xx / w * rng.uniform(-1, 1) + yy / h * rng.uniform(-1, 1)) % 1.0
    img = c0[None, None] * (1 - t[..., None]) + c1[None, None] * t[..., None]
    img += rng.normal(0, 12, (h, w, 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).filter(
        ImageFilter.GaussianBlur(1.0))


def _texture(rng: np.random.Generator, category: str, size: int) -> Image.Image:
    """An object-sized RGB patch: category colour, jittered, with a category-specific texture."""
    base = np.array(_COLOURS[category], dtype=np.float32) + rng.normal(0, 18, 3)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    period = max(4.0, size / rng.uniform(4, 7))
    pattern = {
        "disc": np.sin(np.hypot(xx - size / 2, yy - size / 2) / period * 2 * np.pi),
        "square": np.sign(np.sin(xx / period * np.pi) * np.sin(yy / period * np.pi)),
        "triangle": np.sin((xx + yy) / period * np.pi),
        "cross": np.sin(xx / period * 2 * np.pi) * np.sin(yy / period * 2 * np.pi),
        "ring": np.sin(yy / period * np.pi),
        "diamond": np.sin(xx / period * np.pi),
    }[category]
    img = base[None, None] * (1 + 0.25 * pattern[..., None]) + rng.normal(0, 6, (size, size, 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _mask(category: str, size: int) -> Image.Image:
    m = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(m)
    s = size - 1
    if category == "disc":
        d.ellipse([0, 0, s, s], fill=255)
    elif category == "square":
        d.rectangle([0, 0, s, s], fill=255)
    elif category == "triangle":
        d.polygon([(s / 2, 0), (s, s), (0, s)], fill=255)
    elif category == "cross":
        d.rectangle([s * 0.35, 0, s * 0.65, s], fill=255)
        d.rectangle([0, s * 0.35, s, s * 0.65], fill=255)
    elif category == "ring":
        d.ellipse([0, 0, s, s], fill=255)
        d.ellipse([s * 0.3, s * 0.3, s * 0.7, s * 0.7], fill=0)
    else:
        d.polygon([(s / 2, 0), (s, s / 2), (s / 2, s), (0, s / 2)], fill=255)
    return m


def make_scene(seed: int, width: int = 320, height: int = 240,
               max_objects: int = 4) -> tuple[Image.Image, list[SceneObject]]:
    rng = np.random.default_rng(seed)
    img = _background(rng, width, height)
    objects: list[SceneObject] = []
    lo, hi = max(24, min(width, height) // 6), max(32, min(width, height) // 2)
    for _ in range(int(rng.integers(1, max_objects + 1))):
        category = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
        size = int(rng.integers(lo, hi))
        x, y = int(rng.integers(0, width - size)), int(rng.integers(0, height - size))
        img.paste(_texture(rng, category, size), (x, y), _mask(category, size))
        objects.append(SceneObject(category, (x, y, size, size)))
    return img, objects


def write_scenes(out_dir: str, n: int, seed: int = 0, width: int = 320, height: int = 240,
                 quality: int = 90) -> str:
    """Write ``n`` scenes as JPEGs plus ``instances.json`` (COCO format); returns the image dir.

    Existing files are kept (the output is a pure function of the arguments)."""
    images_dir = os.path.join(out_dir, "images")
    os.makedirs(images_dir, exist_ok=True)
    coco: dict = {"images": [], "annotations": [],
                  "categories": [{"id": i + 1, "name": c} for i, c in enumerate(CATEGORIES)]}
    for i in range(n):
        name = f"scene_{i:06d}.jpg"
        path = os.path.join(images_dir, name)
        img, objects = make_scene(seed * 1_000_003 + i, width, height)
        if not os.path.exists(path):
            img.save(path, quality=quality)
        coco["images"].append({"id": i + 1, "file_name": f"images/{name}", "width": width,
                               "height": height})
        for obj in objects:
            coco["annotations"].append({
                "id": len(coco["annotations"]) + 1, "image_id": i + 1,
                "category_id": CATEGORIES.index(obj.category) + 1, "bbox": list(obj.box),
                "area": obj.box[2] * obj.box[3], "iscrowd": 0, "segmentation": [],
            })
    with open(os.path.join(out_dir, "instances.json"), "w") as f:
        json.dump(coco, f)
    return images_dir

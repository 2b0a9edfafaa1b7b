"""A generated world of cluttered multi-object scenes in which an object's category is its shape
and its texture, never its colour (the demo, the learning protocol, tests and benchmarks).

Each of the eight categories pairs one shape with one texture (a disc of dots, a square of
checks, a triangle of horizontal stripes, ...). Objects (2-5 per scene by default) lie on a
cluttered background: a colour field, irregular polygons and line segments. An image-level crop
therefore usually mixes several objects and clutter, and object-level pairs have something to
add. Colour never carries the category; how it is drawn is ``World.colours``:

- ``scene`` (the default): every object of a scene in a dark and a light shade (the texture's ink
  and paper) of the scene's one hue, on a muted background;
- ``object``: the same with one random hue per object;
- ``pair``: two random hues per object on a saturated background.

Why: BYOL's colour jitter turns all hues of a view by the same angle, so the hue difference
between two colours survives it. With two random hues per object (``pair``) that difference is
an augmentation-proof fingerprint of each object, and image-level training learns it instead of
shapes and textures: BYOL trained on the object crops of that world scored near chance on the
category while its features told hues apart better than a random network's. With one hue per
object the fingerprint likely moves to the hue differences between the objects of a scene (the
features still collapse); with one hue per scene no colour difference is left to tell objects
apart (benchmarks/RESULTS.md, "Does training learn?").

``World.background`` is ``clutter`` (the default, above) or ``plain``, mid-grey with pixel noise
in every scene: a study of what the clutter costs image-level training.

``World.categories_per_scene`` (0, the default: every object of any category) draws each scene's
objects from that many categories chosen for the scene, as objects of real scenes co-occur: with
one or two, two views of a scene share categories even where they share no object.

A scene is a pure function of (seed, index, world), so the world has as many images as asked
for: the training set, a disjoint probe set (another seed) and any number of fresh scenes.
Ground truth is written in COCO instances format (boxes xywh in pixels, category ids 1..8), so
mining purity, the object-level probe and detection run on it as on COCO.
"""

from __future__ import annotations

import colorsys
import json
import math
import os
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from orl_fast.core.config import ConfigError

# category -> (shape, texture); the shapes and the textures are all different.
KINDS = {
    "disc": ("disc", "dots"),
    "square": ("square", "checks"),
    "triangle": ("triangle", "hstripes"),
    "cross": ("cross", "grid"),
    "ring": ("ring", "waves"),
    "diamond": ("diamond", "vstripes"),
    "star": ("star", "diagonal"),
    "hexagon": ("hexagon", "speckle"),
}
CATEGORIES = tuple(KINDS)
Colours = Literal["scene", "object", "pair"]
COLOURS: tuple[str, ...] = get_args(Colours)
Background = Literal["clutter", "plain"]
BACKGROUNDS: tuple[str, ...] = get_args(Background)


@dataclass(frozen=True)
class World:
    """What the generated scenes look like; a scene is a pure function of (seed, index, world)."""

    width: int = 160
    height: int = 120
    min_objects: int = 2
    max_objects: int = 5
    # the range of an object's side, as a fraction of the scene's shorter side
    object_size: tuple[float, float] = (0.2, 0.5)
    # Colours (never the category's): "scene", every object in shades of one hue per scene on a
    # muted background; "object", shades of one hue per object; "pair", two random hues per
    # object on a saturated background (this world's first colour model, kept for the study
    # in the module's docstring).
    colours: Colours = "scene"
    # "clutter": a colour field with irregular polygons and line segments; "plain": mid-grey
    # with pixel noise, the same in every scene (a study of what the clutter costs)
    background: Background = "clutter"
    # 0: every object's category drawn from all eight; k > 0: a scene first draws k categories
    # and its objects take theirs among them (co-occurrence, as objects of real scenes have)
    categories_per_scene: int = 0

    def __post_init__(self) -> None:
        for name in ("width", "height"):
            if getattr(self, name) < 32:
                raise ConfigError(f"{name}: must be at least 32 pixels, got {getattr(self, name)}")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ConfigError(f"min_objects, max_objects: need 1 <= min_objects <= max_objects, "
                              f"got {self.min_objects}, {self.max_objects}")
        lo, hi = self.object_size
        if not 0 < lo <= hi <= 1:
            raise ConfigError(f"object_size: need 0 < low <= high <= 1, got {lo}, {hi}")
        if self.colours not in COLOURS:
            raise ConfigError(f"colours: one of {', '.join(COLOURS)}, got {self.colours!r}")
        if self.background not in BACKGROUNDS:
            raise ConfigError(f"background: one of {', '.join(BACKGROUNDS)}, "
                              f"got {self.background!r}")
        if not 0 <= self.categories_per_scene <= len(CATEGORIES):
            raise ConfigError(f"categories_per_scene: 0 (any) to {len(CATEGORIES)}, "
                              f"got {self.categories_per_scene}")


DEFAULT_WORLD = World()


@dataclass(frozen=True)
class SceneObject:
    category: str
    box: tuple[int, int, int, int]  # x, y, w, h (tight around the object's mask)


def _colour(rng: np.random.Generator, hue: float | None = None,
            saturation: tuple[float, float] = (0.35, 1.0),
            value: tuple[float, float] = (0.35, 1.0)) -> np.ndarray:
    """A random RGB colour (uniform hue unless given)."""
    h = rng.random() if hue is None else hue
    s, v = rng.uniform(*saturation), rng.uniform(*value)
    return np.array(colorsys.hsv_to_rgb(h, s, v), np.float32) * 255


def _ink_and_paper(rng: np.random.Generator, hue: float | None) -> tuple[np.ndarray, np.ndarray]:
    """An object's two colours: a dark and a light shade of ``hue`` in random order, or (None)
    two random colours far enough apart for the texture to show."""
    if hue is None:
        for _ in range(16):
            a, b = _colour(rng), _colour(rng)
            if np.abs(a - b).sum() > 180:
                return a, b
        return a, 255 - a
    saturation = rng.uniform(0.35, 1.0)
    dark = _colour(rng, hue, (saturation, saturation), (0.15, 0.45))
    light = _colour(rng, hue, (0.2 * saturation, saturation), (0.65, 1.0))
    return (dark, light) if rng.random() < 0.5 else (light, dark)


def _texture(rng: np.random.Generator, kind: str, w: int, h: int) -> np.ndarray:
    """[h, w] ink coverage in [0, 1] of a category's texture, random period and phase."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    size = min(w, h)
    period = size / rng.uniform(3.0, 5.0)
    phase = rng.uniform(0, 2 * math.pi)
    k = 2 * math.pi / period
    if kind == "dots":
        cell = period
        dx, dy = (xx + phase) % cell - cell / 2, (yy + phase) % cell - cell / 2
        return (np.hypot(dx, dy) < cell * 0.3).astype(np.float32)
    if kind == "checks":
        return ((np.floor((xx + phase) / period) + np.floor((yy + phase) / period)) % 2
                ).astype(np.float32)
    if kind == "hstripes":
        return (np.sin(k * yy + phase) > 0).astype(np.float32)
    if kind == "vstripes":
        return (np.sin(k * xx + phase) > 0).astype(np.float32)
    if kind == "diagonal":
        return (np.sin(k * (xx + yy) / math.sqrt(2) + phase) > 0).astype(np.float32)
    if kind == "grid":
        lines = (np.abs(np.sin(k * xx / 2 + phase)) < 0.3) | (np.abs(np.sin(k * yy / 2 + phase))
                                                               < 0.3)
        return lines.astype(np.float32)
    if kind == "waves":
        r = np.hypot(xx - w / 2, yy - h / 2)
        return (0.5 + 0.5 * np.sin(k * r + phase)).astype(np.float32)
    if kind == "speckle":
        cells = rng.random((max(2, h // 3), max(2, w // 3))) > 0.5
        img = Image.fromarray((cells * 255).astype(np.uint8)).resize((w, h), Image.NEAREST)
        return np.asarray(img, np.float32) / 255
    raise ValueError(f"unknown texture {kind!r}")


def _polygon(shape: str, w: int, h: int) -> list[tuple[float, float]] | None:
    """The outline of a shape in a w x h box (None for the round shapes, drawn as ellipses)."""
    sx, sy = (w - 1) / 2, (h - 1) / 2
    cx, cy = sx, sy

    def ring(n: int, radii: list[float], start: float) -> list[tuple[float, float]]:
        pts = []
        for i in range(n * len(radii)):
            a = start + 2 * math.pi * i / (n * len(radii))
            r = radii[i % len(radii)]
            pts.append((cx + r * sx * math.cos(a), cy + r * sy * math.sin(a)))
        return pts

    if shape == "square":
        return [(0, 0), (w - 1, 0), (w - 1, h - 1), (0, h - 1)]
    if shape == "triangle":
        return [(cx, 0), (w - 1, h - 1), (0, h - 1)]
    if shape == "diamond":
        return [(cx, 0), (w - 1, cy), (cx, h - 1), (0, cy)]
    if shape == "hexagon":
        return ring(6, [1.0], 0.0)
    if shape == "star":
        return ring(5, [1.0, 0.45], -math.pi / 2)
    if shape == "cross":
        a, b = 0.32, 0.68
        return [(a * w, 0), (b * w, 0), (b * w, a * h), (w - 1, a * h), (w - 1, b * h),
                (b * w, b * h), (b * w, h - 1), (a * w, h - 1), (a * w, b * h), (0, b * h),
                (0, a * h), (a * w, a * h)]
    return None


def _mask(shape: str, w: int, h: int) -> np.ndarray:
    m = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(m)
    outline = _polygon(shape, w, h)
    if outline is not None:
        d.polygon(outline, fill=255)
    else:
        d.ellipse([0, 0, w - 1, h - 1], fill=255)
        if shape == "ring":
            d.ellipse([0.3 * w, 0.3 * h, 0.7 * w, 0.7 * h], fill=0)
    return np.asarray(m, np.float32) / 255


def _plain(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """Mid-grey with pixel noise: no clutter, nothing that tells one scene from another."""
    return Image.fromarray(np.clip(128 + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8))


def _background(rng: np.random.Generator, w: int, h: int, muted: bool) -> Image.Image:
    """A colour field with irregular polygons and line segments, in ``muted`` colours (saturation
    <= 0.3: no hue pairs for views to be matched by) or fairly saturated ones."""
    tone = {"saturation": (0.0, 0.3)} if muted else {}
    if muted:
        coarse = np.stack([_colour(rng, **tone) for _ in range(20)]).reshape(4, 5, 3) / 255
    else:
        coarse = rng.random((4, 5, 3)).astype(np.float32)
    field = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize(
        (w, h), Image.BICUBIC), np.float32)
    base = _colour(rng, **tone)
    img = np.clip(0.55 * base + 0.45 * field + rng.normal(0, 8, (h, w, 3)), 0, 255)
    canvas = Image.fromarray(img.astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    side = min(w, h)
    for _ in range(int(rng.integers(3, 8))):  # irregular blobs: no category's outline
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        n = int(rng.integers(5, 10))
        angles = np.sort(rng.uniform(0, 2 * math.pi, n))
        radii = rng.uniform(0.05, 0.22, n) * side
        draw.polygon([(cx + r * math.cos(a), cy + r * math.sin(a))
                      for a, r in zip(angles, radii)],
                     fill=tuple(int(c) for c in _colour(rng, **tone)))
    for _ in range(int(rng.integers(2, 6))):
        x0, y0, x1, y1 = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0, h)
        draw.line([(x0, y0), (x1, y1)], fill=tuple(int(c) for c in _colour(rng, **tone)),
                  width=int(rng.integers(1, 4)))
    return canvas


def _iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    iw = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def make_scene(seed: int, world: World = DEFAULT_WORLD) -> tuple[Image.Image, list[SceneObject]]:
    """One scene and its objects; a pure function of the arguments."""
    rng = np.random.default_rng(seed)
    width, height = world.width, world.height
    canvas = (_plain(rng, width, height) if world.background == "plain"
              else _background(rng, width, height, muted=world.colours != "pair"))
    img = np.asarray(canvas, np.float32).copy()
    side = min(width, height)
    lo = min(side, max(16, int(side * world.object_size[0])))
    hi = min(side, max(24, int(side * world.object_size[1])))
    objects: list[SceneObject] = []
    scene_hue = rng.random() if world.colours == "scene" else None
    choices = (CATEGORIES if not world.categories_per_scene else
               tuple(CATEGORIES[i] for i in rng.choice(len(CATEGORIES),
                                                       world.categories_per_scene, False)))
    for _ in range(int(rng.integers(world.min_objects, world.max_objects + 1))):
        category = choices[int(rng.integers(len(choices)))]
        shape, texture = KINDS[category]
        size = int(rng.integers(lo, hi + 1))
        aspect = math.exp(rng.uniform(-0.2, 0.2))
        w = max(8, min(width, round(size * aspect)))
        h = max(8, min(height, round(size / aspect)))
        for _ in range(30):  # a free place: little overlap with the objects already there
            box = (int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h)
            if all(_iou(box, o.box) < 0.1 for o in objects):
                break
        else:
            continue
        hue = rng.random() if world.colours == "object" else scene_hue
        ink, paper = _ink_and_paper(rng, hue)
        t = _texture(rng, texture, w, h)[..., None]
        patch = ink * t + paper * (1 - t)
        alpha = _mask(shape, w, h)[..., None]
        x, y = box[0], box[1]
        region = img[y:y + h, x:x + w]
        img[y:y + h, x:x + w] = alpha * patch + (1 - alpha) * region
        ys, xs = np.nonzero(alpha[..., 0] > 0.5)
        objects.append(SceneObject(category, (x + int(xs.min()), y + int(ys.min()),
                                              int(xs.max() - xs.min() + 1),
                                              int(ys.max() - ys.min() + 1))))
    img += rng.normal(0, 4, img.shape)
    scene = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    return scene.filter(ImageFilter.GaussianBlur(0.5)), objects


def scene_seed(seed: int, index: int) -> int:
    return seed * 1_000_003 + index


def write_scenes(out_dir: str, n: int, seed: int = 0, world: World = DEFAULT_WORLD,
                 quality: int = 90) -> str:
    """Write ``n`` scenes as JPEGs plus ``instances.json`` (COCO format); returns the image dir.

    Existing images are kept (the output is a pure function of the arguments)."""
    images_dir = os.path.join(out_dir, "images")
    os.makedirs(images_dir, exist_ok=True)
    coco: dict = {"images": [], "annotations": [],
                  "categories": [{"id": i + 1, "name": c} for i, c in enumerate(CATEGORIES)]}
    for i in range(n):
        name = f"scene_{i:06d}.jpg"
        path = os.path.join(images_dir, name)
        img, objects = make_scene(scene_seed(seed, i), world)
        if not os.path.exists(path):
            tmp = path + ".tmp"
            img.save(tmp, format="JPEG", quality=quality)
            os.replace(tmp, path)
        coco["images"].append({"id": i + 1, "file_name": f"images/{name}",
                               "width": world.width, "height": world.height})
        for obj in objects:
            coco["annotations"].append({
                "id": len(coco["annotations"]) + 1, "image_id": i + 1,
                "category_id": CATEGORIES.index(obj.category) + 1, "bbox": list(obj.box),
                "area": obj.box[2] * obj.box[3], "iscrowd": 0, "segmentation": [],
            })
    tmp = os.path.join(out_dir, "instances.json.tmp")
    with open(tmp, "w") as f:
        json.dump(coco, f)
    os.replace(tmp, os.path.join(out_dir, "instances.json"))
    return images_dir

"""Stage 3 sample builder: which regions of which images make one ORL sample, and their augmentation.

A :class:`SamplePlan` is a pure function of (seed, epoch, position): every random choice (the
neighbour, the mined pair, the kept box and its jitter, the global crops, and every photometric
decision and factor) is drawn here from a generator seeded with ``sample_seed``, a fixed number of
draws each, so the torch path (:mod:`loaders.orl_torch`) and the DALI path
(:mod:`loaders.dali_loader`) cut and augment the same regions the same way, on any worker, and a
resumed run sees the samples an uninterrupted one would.

The six crops of a plan (rows of ``boxes``, xywh integers in the pixels of their source image):

    0, 1  global views v, v'     random resized crop of x (BYOL)          -> crop_size
    2, 3  intra-RoI p, p'        a kept box of x, jittered                 -> patch_size
    4     inter-RoI p1           the mined pair's box in x                 -> patch_size
    5     inter-RoI p2           the mined pair's box in the neighbour     -> patch_size

Crops 0, 2, 4 use the view-1 augmentation probabilities and 1, 3, 5 the view-2 ones (the official
``patch_pipeline1`` / ``patch_pipeline2``). Fallbacks (SPEC): an image without a kept box jitters
the whole-image box; without a mined pair, p1 and p2 are both the whole image x. In the multi-crop
ablation (``orl.patches=random``) crops 2-5 are random resized crops of x.
"""

from __future__ import annotations

import math
import posixpath
from dataclasses import dataclass

import numpy as np

from loaders.sampling import sample_seed
from loaders.shards import ShardIndex
from mining.records import PairRecord, open_pairs, read_record
from orl_fast import storage
from orl_fast.config import AugmentConfig, Config, ConfigError

VIEW_OF_CROP = np.array([0, 1, 0, 1, 0, 1])
# Colour-jitter operations, in the index order of Photometric.factors / .order.
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")
JITTER_IDENTITY = np.array([1.0, 1.0, 1.0, 0.0], dtype=np.float32)
# torchvision's RandomResizedCrop tries this many draws before its centre-crop fallback.
CROP_ATTEMPTS = 10


# ----------------------------------------------------------------------------- geometry


def box_iou(boxes: np.ndarray, box: np.ndarray) -> np.ndarray:
    """IoU of each xywh row of ``boxes`` with the xywh ``box``."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    x, y, w, h = np.asarray(box, dtype=np.float64)
    iw = np.clip(np.minimum(boxes[:, 0] + boxes[:, 2], x + w) - np.maximum(boxes[:, 0], x), 0, None)
    ih = np.clip(np.minimum(boxes[:, 1] + boxes[:, 3], y + h) - np.maximum(boxes[:, 1], y), 0, None)
    inter = iw * ih
    return inter / (boxes[:, 2] * boxes[:, 3] + w * h - inter)


def clip_box(box, width: int, height: int) -> np.ndarray:
    """An xywh box clipped to the image, at least 1x1 pixel."""
    x, y, w, h = (round(float(v)) for v in box)
    x0, y0 = min(max(x, 0), width - 1), min(max(y, 0), height - 1)
    x1, y1 = min(max(x + w, x0 + 1), width), min(max(y + h, y0 + 1), height)
    return np.array([x0, y0, x1 - x0, y1 - y0], dtype=np.int32)


def whole_image(width: int, height: int) -> np.ndarray:
    return np.array([0, 0, width, height], dtype=np.int32)


def _log_uniform(u: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))


def jitter_box(rng: np.random.Generator, box, width: int, height: int, shift: float,
               area: tuple[float, float], aspect: tuple[float, float], min_iou: float,
               tries: int) -> np.ndarray:
    """The SPEC's intra-RoI box jitter: the first of ``tries`` candidates with IoU > ``min_iou``.

    A candidate moves the centre by up to ``shift`` x the width / height, scales the area by a
    uniform factor in ``area`` and sets a log-uniform aspect ratio (w / h) in ``aspect``; it is
    rounded to pixels and clipped to the image. When no candidate qualifies, the box itself is
    returned (the official code). Always consumes ``tries`` x 4 draws.
    """
    x, y, w, h = (float(v) for v in box)
    u = rng.random((tries, 4))
    new_area = (area[0] + u[:, 0] * (area[1] - area[0])) * w * h
    ratio = _log_uniform(u[:, 1], *aspect)
    nw, nh = np.sqrt(new_area * ratio), np.sqrt(new_area / ratio)
    cx = x + w / 2 + (2 * u[:, 2] - 1) * shift * w
    cy = y + h / 2 + (2 * u[:, 3] - 1) * shift * h
    x0 = np.clip(np.round(cx - nw / 2), 0, width)
    x1 = np.clip(np.round(cx + nw / 2), 0, width)
    y0 = np.clip(np.round(cy - nh / 2), 0, height)
    y1 = np.clip(np.round(cy + nh / 2), 0, height)
    candidates = np.stack([x0, y0, x1 - x0, y1 - y0], axis=1)
    ok = (candidates[:, 2] >= 1) & (candidates[:, 3] >= 1)
    ok[ok] = box_iou(candidates[ok], (x, y, w, h)) > min_iou
    if not ok.any():
        return np.asarray(box, dtype=np.int32)
    return candidates[int(np.argmax(ok))].astype(np.int32)


def random_resized_crop(rng: np.random.Generator, width: int, height: int,
                        scale: tuple[float, float], ratio: tuple[float, float]) -> np.ndarray:
    """torchvision's ``RandomResizedCrop.get_params`` as an xywh box, with a fixed number of draws."""
    u = rng.random((CROP_ATTEMPTS, 4))
    target = width * height * (scale[0] + u[:, 0] * (scale[1] - scale[0]))
    aspect = _log_uniform(u[:, 1], *ratio)
    w = np.round(np.sqrt(target * aspect))
    h = np.round(np.sqrt(target / aspect))
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    if ok.any():
        i = int(np.argmax(ok))
        cw, ch = int(w[i]), int(h[i])
        cx = min(int(u[i, 2] * (width - cw + 1)), width - cw)
        cy = min(int(u[i, 3] * (height - ch + 1)), height - ch)
        return np.array([cx, cy, cw, ch], dtype=np.int32)
    in_ratio = width / height  # fallback: the central crop with the aspect ratio clamped
    if in_ratio < ratio[0]:
        cw, ch = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        cw, ch = round(height * ratio[1]), height
    else:
        cw, ch = width, height
    return np.array([(width - cw) // 2, (height - ch) // 2, cw, ch], dtype=np.int32)


# ----------------------------------------------------------------------------- photometric


@dataclass
class Photometric:
    """Per-crop BYOL augmentation decisions (arrays over crops), in torchvision's order:
    flip -> colour jitter (``order``, with ``factors``) -> grayscale -> blur -> solarise."""

    flip: np.ndarray      # bool [n]
    jitter: np.ndarray    # bool [n]: colour jitter applied
    order: np.ndarray     # int  [n, 4]: permutation of JITTER_OPS (torchvision's random order)
    factors: np.ndarray   # float32 [n, 4]: brightness, contrast, saturation, hue (identity if off)
    gray: np.ndarray      # bool [n]
    sigma: np.ndarray     # float32 [n]: Gaussian blur sigma in pixels, 0 = no blur
    solarize: np.ndarray  # bool [n]


def draw_photometric(rng: np.random.Generator, aug: AugmentConfig,
                     views: np.ndarray = VIEW_OF_CROP) -> Photometric:
    """Draw the augmentation of len(views) crops; crop i uses the probabilities of view views[i]."""
    n = len(views)
    u = rng.random((n, 6))
    order = np.argsort(rng.random((n, 4)), axis=1)
    f = rng.random((n, 4))
    b, c, s, h = aug.color_jitter
    lo = np.array([max(0.0, 1 - b), max(0.0, 1 - c), max(0.0, 1 - s), -h])
    hi = np.array([1 + b, 1 + c, 1 + s, h])
    jitter = u[:, 1] < aug.color_jitter_p
    factors = np.where(jitter[:, None], lo + f * (hi - lo), JITTER_IDENTITY).astype(np.float32)
    blur = u[:, 3] < np.asarray(aug.blur_p)[views]
    lo_sigma, hi_sigma = aug.blur_sigma_px
    sigma = lo_sigma + u[:, 4] * (hi_sigma - lo_sigma)
    return Photometric(
        flip=u[:, 0] < aug.hflip_p, jitter=jitter, order=order, factors=factors,
        gray=u[:, 2] < aug.grayscale_p, sigma=np.where(blur, sigma, 0.0).astype(np.float32),
        solarize=u[:, 5] < np.asarray(aug.solarize_p)[views],
    )


# ----------------------------------------------------------------------------- plans


@dataclass
class SamplePlan:
    key: int
    neighbor: int         # the image crop 5 is cut from (== key when the sample has no pair)
    width: int            # size of image x
    height: int
    boxes: np.ndarray     # int32 [6, 4] xywh, the six crops of the module docstring
    photo: Photometric    # over the 6 crops
    has_pair: bool
    has_box: bool


class GroundTruthBoxes:
    """Intra-RoI boxes from a COCO instances file (Table 5d), matched to images by file name.

    Crowd boxes and boxes whose shorter side (at the stored image size) is under ``min_size`` are
    left out, as Stage 2 leaves out small proposals.
    """

    def __init__(self, path: str, min_size: int):
        coco = storage.read_json(path)
        sizes = {im["id"]: (im["file_name"], im["width"], im["height"]) for im in coco["images"]}
        boxes: dict[int, list] = {}
        for a in coco["annotations"]:
            if not a.get("iscrowd", 0):
                boxes.setdefault(a["image_id"], []).append(a["bbox"])
        self.by_name = {
            posixpath.basename(name): (np.array(boxes.get(i, []), np.float64).reshape(-1, 4), w, h)
            for i, (name, w, h) in sizes.items()}
        self.min_size = min_size

    def boxes(self, source: str, width: int, height: int) -> np.ndarray:
        """Boxes (xywh, int32, at width x height) of the image ingested from ``source``."""
        entry = self.by_name.get(posixpath.basename(source.rsplit("::", 1)[-1]))
        if entry is None:
            return np.zeros((0, 4), np.int32)
        b, w, h = entry
        b = b * np.array([width / w, height / h, width / w, height / h])
        b = b[np.minimum(b[:, 2], b[:, 3]) >= self.min_size]
        return np.array([clip_box(x, width, height) for x in b], np.int32).reshape(-1, 4)


def local_crops(cfg: Config) -> tuple[int, ...]:
    """The patch crops a run trains on: the intra pair and / or the inter pair (weight > 0)."""
    _, w_intra, w_inter = cfg.orl.loss_weights
    return (2, 3) * (w_intra > 0) + (4, 5) * (w_inter > 0)


class SampleBuilder:
    """Plans of the samples of an image shard set (``cfg.data``) with Stage 2's pairs (``cfg.pairs``)."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.images = ShardIndex(cfg.data)
        o = cfg.orl
        self.mined = o.patches == "mined"
        self.crops = (0, 1, *local_crops(cfg))
        self.uses_neighbor = self.mined and 5 in self.crops
        needs_records = self.mined and (self.uses_neighbor or (o.boxes == "mined" and 2 in self.crops))
        if needs_records and not cfg.pairs:
            raise ConfigError("pairs: required (the Stage 2 output directory: pass pairs=PATH)")
        self.pairs = open_pairs(cfg.pairs) if needs_records else None
        self.gt = (GroundTruthBoxes(o.gt_instances, cfg.mine.min_box_size)
                   if self.mined and o.boxes == "gt" else None)

    def __len__(self) -> int:
        return len(self.images)

    def size_of(self, key: int) -> tuple[int, int]:
        row = self.images.find(key)[1]
        return int(row["width"]), int(row["height"])

    def plan(self, epoch: int, position: int) -> SamplePlan:
        cfg, o = self.cfg, self.cfg.orl
        rng = np.random.default_rng(sample_seed(cfg.train.seed, epoch, position))
        row = self.images.position(position)[1]
        key, width, height = int(row["key"]), int(row["width"]), int(row["height"])
        boxes = np.zeros((6, 4), dtype=np.int32)
        for i in (0, 1):
            boxes[i] = random_resized_crop(rng, width, height, cfg.aug.crop_scale, cfg.aug.crop_ratio)
        u_neighbor, u_pair, u_box = rng.random(3)
        random_crops = [random_resized_crop(rng, width, height, o.random_scale, cfg.aug.crop_ratio)
                        for _ in range(4)]
        photo = draw_photometric(rng, cfg.aug)
        # (the box jitter below draws last: every other draw is the same in every mode)

        neighbor, has_pair, has_box = key, False, False
        if not self.mined:
            boxes[2:6] = random_crops
        else:
            record = read_record(self.pairs, key) if self.pairs is not None else None
            pair = self._pair(record, u_neighbor, u_pair) if self.uses_neighbor else None
            if pair is not None:
                neighbor, box_x, box_n = pair
                boxes[4] = clip_box(box_x, width, height)
                boxes[5] = clip_box(box_n, *self.size_of(neighbor))
                has_pair = True
            else:
                boxes[4] = boxes[5] = whole_image(width, height)
            kept = self._kept_boxes(key, record, width, height)
            has_box = len(kept) > 0
            box = (clip_box(kept[_pick(u_box, len(kept))], width, height)
                   if has_box else whole_image(width, height))
            jitter = [jitter_box(rng, box, width, height, o.jitter_shift, o.jitter_area,
                                 o.jitter_aspect, o.jitter_min_iou, o.jitter_tries)
                      for _ in range(2)]
            boxes[2] = jitter[0] if o.jitter_both else box
            boxes[3] = jitter[1]
        return SamplePlan(key, neighbor, width, height, boxes, photo, has_pair, has_box)

    def _kept_boxes(self, key: int, record: PairRecord | None, width: int,
                    height: int) -> np.ndarray:
        if self.gt is not None:
            return self.gt.boxes(self.images.meta(key).get("source", ""), width, height)
        return record.boxes if record is not None else np.zeros((0, 4), np.int32)

    def _pair(self, record: PairRecord | None, u_neighbor: float,
              u_pair: float) -> tuple[int, np.ndarray, np.ndarray] | None:
        """(neighbour key, box in x, box in the neighbour): a uniform neighbour among the first K
        that have pairs (and are in the data set), then a uniform pair among its top
        max(1, int(N x boxes)) by score."""
        if record is None or len(record.pair_neighbor) == 0:
            return None
        k = min(self.cfg.mine.knn_k, len(record.neighbors))
        slots = [s for s in range(k) if (record.pair_neighbor == s).any()
                 and self._has_image(int(record.neighbors[s]))]
        if not slots:
            return None
        slot = slots[_pick(u_neighbor, len(slots))]
        pairs = record.pairs_of(slot)
        pairs = pairs[np.argsort(-record.pair_score[pairs], kind="stable")]
        pairs = pairs[:max(1, int(self.cfg.mine.topn_frac * len(record.boxes)))]
        j = pairs[_pick(u_pair, len(pairs))]
        return int(record.neighbors[slot]), record.pair_query_box[j], record.pair_neighbor_box[j]

    def _has_image(self, key: int) -> bool:
        try:
            self.images.find(key)
        except KeyError:
            return False
        return True


def _pick(u: float, n: int) -> int:
    """A uniform index in [0, n) from a uniform draw u in [0, 1)."""
    return min(int(u * n), n - 1)

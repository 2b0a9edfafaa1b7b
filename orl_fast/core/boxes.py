"""Boxes, xywh in pixels (x, y of the top-left corner, width, height): one module for all of them.

IoU (areas w x h, as the official ORL code), clipping, the whole-image box, the intra-RoI jitter
of Stage 3, torchvision's random resized crop parameters (the global views of both stages), the
mapping of boxes of a resized image back to the original, and the ORL proposal filter of Stage 2.
"""

from __future__ import annotations

import math

import numpy as np

# torchvision's RandomResizedCrop tries this many draws before its centre-crop fallback.
CROP_ATTEMPTS = 10


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix [len(a), len(b)] of xywh boxes (areas w*h, as the official code)."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    ix = np.minimum(a[:, None, 0] + a[:, None, 2], b[None, :, 0] + b[None, :, 2]) - np.maximum(
        a[:, None, 0], b[None, :, 0])
    iy = np.minimum(a[:, None, 1] + a[:, None, 3], b[None, :, 1] + b[None, :, 3]) - np.maximum(
        a[:, None, 1], b[None, :, 1])
    inter = np.clip(ix, 0, None) * np.clip(iy, 0, None)
    union = (a[:, None, 2] * a[:, None, 3]) + (b[None, :, 2] * b[None, :, 3]) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def clip_box(box, width: int, height: int) -> np.ndarray:
    """An xywh box clipped to the image, at least 1x1 pixel."""
    x, y, w, h = (round(float(v)) for v in box)
    x0, y0 = min(max(x, 0), width - 1), min(max(y, 0), height - 1)
    x1, y1 = min(max(x + w, x0 + 1), width), min(max(y + h, y0 + 1), height)
    return np.array([x0, y0, x1 - x0, y1 - y0], dtype=np.int32)


def whole_image(width: int, height: int) -> np.ndarray:
    """The xywh box of the whole image."""
    return np.array([0, 0, width, height], dtype=np.int32)


def _log_uniform(u: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))


def jitter_box(rng: np.random.Generator, box, width: int, height: int, shift: float,
               area: tuple[float, float], aspect: tuple[float, float], min_iou: float,
               tries: int, outside: str = "reject") -> np.ndarray:
    """The intra-RoI box jitter of ORL: the first of ``tries`` candidates with IoU > ``min_iou``.

    A candidate moves the centre by up to ``shift`` x the width / height, scales the area by a
    uniform factor in ``area`` and sets a log-uniform aspect ratio (w / h) in ``aspect``; its
    width and height are rounded to pixels, then its corner. ``outside`` says what happens to a
    candidate that leaves the image: ``"reject"`` (the official code) drops it, ``"clip"`` clips
    it to the image (and then tests its IoU). When no candidate qualifies, the box itself is
    returned (the official code). Always consumes ``tries`` x 4 draws.
    """
    if outside not in ("reject", "clip"):
        raise ValueError(f"outside: {outside!r} is not reject or clip")
    x, y, w, h = (float(v) for v in box)
    u = rng.random((tries, 4))
    new_area = (area[0] + u[:, 0] * (area[1] - area[0])) * w * h
    ratio = _log_uniform(u[:, 1], *aspect)
    nw, nh = np.round(np.sqrt(new_area * ratio)), np.round(np.sqrt(new_area / ratio))
    x0 = np.round(x + w / 2 + (2 * u[:, 2] - 1) * shift * w - nw / 2)
    y0 = np.round(y + h / 2 + (2 * u[:, 3] - 1) * shift * h - nh / 2)
    x1, y1 = x0 + nw, y0 + nh
    if outside == "reject":
        inside = (x0 >= 0) & (y0 >= 0) & (x1 <= width) & (y1 <= height)
    else:
        x0, x1 = np.clip(x0, 0, width), np.clip(x1, 0, width)
        y0, y1 = np.clip(y0, 0, height), np.clip(y1, 0, height)
        inside = np.ones(tries, dtype=bool)
    candidates = np.stack([x0, y0, x1 - x0, y1 - y0], axis=1)
    ok = inside & (candidates[:, 2] >= 1) & (candidates[:, 3] >= 1)
    ok[ok] = box_iou(candidates[ok], (x, y, w, h))[:, 0] > min_iou
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


def scale_boxes(boxes: np.ndarray, sx: float, sy: float, width: int, height: int) -> np.ndarray:
    """xywh boxes of a resized image -> xywh in original pixels (corners rounded, clipped)."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    x0 = np.clip(np.rint(b[:, 0] * sx), 0, width)
    y0 = np.clip(np.rint(b[:, 1] * sy), 0, height)
    x1 = np.clip(np.rint((b[:, 0] + b[:, 2]) * sx), 0, width)
    y1 = np.clip(np.rint((b[:, 1] + b[:, 3]) * sy), 0, height)
    return np.stack([x0, y0, x1 - x0, y1 - y0], 1).astype(np.int32)


def filter_boxes(boxes: np.ndarray, min_size: int, aspect_range: tuple[float, float],
                 max_iou: float, max_boxes: int) -> np.ndarray:
    """The ORL filter on xywh boxes in ranking order; returns the kept boxes [M <= max_boxes, 4]."""
    b = np.asarray(boxes, np.int32).reshape(-1, 4)
    w, h = b[:, 2].astype(np.float64), b[:, 3].astype(np.float64)
    lo, hi = aspect_range
    ok = (np.minimum(w, h) >= min_size) & (w >= lo * h) & (w <= hi * h)
    kept = np.zeros((max_boxes, 4), np.int32)
    n = 0
    for box in b[ok]:
        if n and box_iou(box, kept[:n]).max() > max_iou:
            continue
        kept[n] = box
        n += 1
        if n == max_boxes:
            break
    return kept[:n]


def label_boxes(boxes: np.ndarray, gt_boxes: np.ndarray, gt_classes: np.ndarray,
                min_iou: float = 0.5) -> np.ndarray:
    """int64 [len(boxes)]: the class of the ground-truth box each box overlaps most, when that
    IoU is >= ``min_iou``; -1 (no label) otherwise (box labels of RoIs and proposals)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if len(boxes) == 0 or len(gt_boxes) == 0:
        return np.full(len(boxes), -1, np.int64)
    iou = box_iou(boxes, gt_boxes)
    best = iou.argmax(1)
    return np.where(iou[np.arange(len(boxes)), best] >= min_iou,
                    np.asarray(gt_classes, np.int64)[best], -1)

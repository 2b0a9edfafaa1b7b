"""Average precision for image classification, as the VOC development kit computes it.

Labels use VOC's encoding: 1 positive, -1 negative, 0 difficult (ignored: neither a true nor a
false positive, as in VOCevalcls.m). Two interpolations:

- ``area_ap``: the area under the monotone precision envelope at every recall step (VOC2010+;
  what the official ORL / Goyal et al. benchmark scripts compute, ``svm_helper.calculate_ap``):
  the headline ``mAP`` / ``AP`` of every report.
- ``voc07_ap``: the VOC2007 11-point AP, mean over t in {0, 0.1, ..., 1} of the highest precision
  at recall >= t, reported beside it as ``mAP_11point`` / ``AP_11point``.
"""

from __future__ import annotations

import numpy as np


def precision_recall(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall at each rank of the non-ignored images, highest score first."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    keep = labels != 0
    scores, positive = scores[keep], labels[keep] > 0
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(positive[order])
    fp = np.cumsum(~positive[order])
    n_pos = int(positive.sum())
    recall = tp / n_pos if n_pos else np.zeros_like(tp, dtype=np.float64)
    precision = tp / np.maximum(tp + fp, 1)
    return precision, recall


def voc07_ap(scores: np.ndarray, labels: np.ndarray) -> float:
    """VOC2007 11-point interpolated AP; NaN when there is no positive."""
    precision, recall = precision_recall(scores, labels)
    if not (np.asarray(labels) > 0).any():
        return float("nan")
    ap = 0.0
    for k in range(11):
        # k / 10 and tp / n_pos are correctly rounded quotients: a recall of exactly 3/10 is
        # >= the threshold 0.3 (np.arange(0, 1.1, 0.1)[3] = 0.30000000000000004 would miss it).
        above = precision[recall >= k / 10]
        ap += (above.max() if above.size else 0.0) / 11
    return float(ap)


def area_ap(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the interpolated (monotone) precision-recall curve; NaN without positives."""
    precision, recall = precision_recall(scores, labels)
    if not (np.asarray(labels) > 0).any():
        return float("nan")
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.where(mrec[1:] != mrec[:-1])[0] + 1
    return float(((mrec[steps] - mrec[steps - 1]) * mpre[steps]).sum())


def classification_metrics(scores: np.ndarray, labels: np.ndarray,
                           classes: tuple[str, ...] | list[str]) -> dict:
    """Per-class AP (area, the headline, and 11-point) and their means over classes with a
    positive; top-1 accuracy too when every image has exactly one present class."""
    apa = [area_ap(scores[:, c], labels[:, c]) for c in range(labels.shape[1])]
    ap11 = [voc07_ap(scores[:, c], labels[:, c]) for c in range(labels.shape[1])]
    out = {
        "mAP": _nanmean(apa) * 100,
        "mAP_11point": _nanmean(ap11) * 100,
        "AP": {c: round(a * 100, 4) for c, a in zip(classes, apa)},
        "AP_11point": {c: round(a * 100, 4) for c, a in zip(classes, ap11)},
    }
    missing = [c for c, a in zip(classes, apa) if np.isnan(a)]
    if missing:
        out["classes_without_positives"] = missing
    if ((labels == 1).sum(1) == 1).all():
        truth = (labels == 1).argmax(1)
        out["top1"] = float((scores.argmax(1) == truth).mean() * 100)
    return out


def _nanmean(values: list[float]) -> float:
    arr = np.asarray(values, dtype=np.float64)
    return float(np.nanmean(arr)) if np.isfinite(arr).any() else float("nan")

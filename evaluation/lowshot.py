"""VOC07 low-shot SVMs (Goyal et al. 2019; paper Table 2).

For n positives per class and each of ``samples`` seeded samples, every class gets its own
training set: n images drawn from its positives and (classes - 1) x n from its negatives (as
``create_voc_low_shot_challenge_samples.py``); difficult images are never drawn. One LinearSVC per
class and cost is trained and scored on the full test set (difficult images ignored) with both APs:
the area under the PR curve (the headline, the official ``calculate_ap``) and the VOC07 11-point
AP. The cost is chosen as ``aggregate_low_shot_svm_stats.py`` does: the one with the best test mAP
(area) averaged over the samples (the official scripts select on the test set: with one positive
there is nothing to cross-validate); at that cost both mAPs are reported with their mean, std,
min and max over samples. When a class has fewer than n positives (or too few negatives) all of
them are used and the class is listed under ``capped``.
"""

from __future__ import annotations

import numpy as np

from evaluation.features import l2_normalise
from evaluation.metrics import area_ap, voc07_ap
from evaluation.voc07 import parallel_map, svm
from orl_fast.core.defaults import EvalConfig


def sample(labels: np.ndarray, n: int, index: int, seed: int) -> tuple[np.ndarray, list[int]]:
    """Low-shot targets for sample ``index`` of n shots: (images x classes) int8, 1 for the drawn
    positives, -1 for the drawn negatives, 0 (unused) elsewhere; and the classes that were capped.

    The draw is a pure function of (seed, n, index, class)."""
    num_classes = labels.shape[1]
    out = np.zeros(labels.shape, dtype=np.int8)
    capped = []
    for c in range(num_classes):
        rng = np.random.default_rng([seed, n, index, c])
        pos, neg = np.flatnonzero(labels[:, c] == 1), np.flatnonzero(labels[:, c] == -1)
        n_neg = (num_classes - 1) * n
        if len(pos) < n or len(neg) < n_neg:
            capped.append(c)
        out[rng.choice(pos, min(n, len(pos)), replace=False), c] = 1
        out[rng.choice(neg, min(n_neg, len(neg)), replace=False), c] = -1
    return out, capped


def _class_aps(shared: tuple, task: tuple[int, np.ndarray]) -> list[tuple[float, float]]:
    """Test (area AP, 11-point AP) of class ``c`` for every cost, SVMs fitted on its sampled
    ``targets`` column."""
    xtr, xte, test_labels, costs, svm_cfg, seed = shared
    c, targets = task
    keep = targets != 0
    x, y = xtr[keep], targets[keep].astype(np.int32)
    out = []
    for cost in costs:
        scores = svm(cost, svm_cfg, seed).fit(x, y).decision_function(xte)
        out.append((area_ap(scores, test_labels[:, c]), voc07_ap(scores, test_labels[:, c])))
    return out


def _summary(maps: np.ndarray, prefix: str) -> dict:
    """Mean, std, min, max and the per-sample values of mAPs over samples."""
    return {f"{prefix}_mean": float(maps.mean()), f"{prefix}_std": float(maps.std()),
            f"{prefix}_min": float(maps.min()), f"{prefix}_max": float(maps.max()),
            f"{prefix}_per_sample": [round(float(v), 4) for v in maps]}


def evaluate_lowshot(train_x: np.ndarray, train_labels: np.ndarray, test_x: np.ndarray,
                     test_labels: np.ndarray, classes: tuple[str, ...], cfg: EvalConfig,
                     desc: str | None = None) -> dict:
    """Low-shot SVMs on one layer's features (``desc``: a progress bar over the fits)."""
    xtr, xte = l2_normalise(train_x), l2_normalise(test_x)
    costs = sorted(cfg.svm.costs)
    # Every (shots, sample, class) fit in one pool: the features go to each worker once.
    draws = {(n, s): sample(train_labels, n, s, cfg.seed) for n in cfg.lowshot.shots
             for s in range(cfg.lowshot.samples)}
    tasks = [(c, targets[:, c]) for targets, _ in draws.values() for c in range(len(classes))]
    aps = parallel_map(_class_aps, tasks, cfg.jobs, (xtr, xte, test_labels, costs, cfg.svm,
                                                     cfg.seed), desc, unit="class")
    # per draw: [class, cost, (area, 11-point)]
    per_draw = dict(zip(draws, np.array(aps).reshape(len(draws), len(classes), len(costs), 2)))
    shots: dict = {}
    for n in cfg.lowshot.shots:
        # mAP[sample, cost, metric]
        maps = np.stack([np.nanmean(per_draw[(n, s)], axis=0) * 100
                         for s in range(cfg.lowshot.samples)])
        capped = {c for s in range(cfg.lowshot.samples) for c in draws[(n, s)][1]}
        best = int(np.argmax(maps[:, :, 0].mean(0)))
        shots[str(n)] = {
            **_summary(maps[:, best, 0], "mAP"), **_summary(maps[:, best, 1], "mAP_11point"),
            "cost": costs[best],
            "mAP_mean_per_cost": {str(c): round(float(v), 4)
                                  for c, v in zip(costs, maps[:, :, 0].mean(0))},
            "capped": [classes[c] for c in sorted(capped)],
        }
    return {"shots": shots}


def protocol(cfg: EvalConfig) -> dict:
    return {
        "task": "VOC07 low-shot linear SVM",
        "shots": list(cfg.lowshot.shots), "samples": cfg.lowshot.samples, "seed": cfg.seed,
        "sampling": "per class: n positives and (classes - 1) x n negatives, without replacement; "
                    "difficult images never drawn; capped at what the training set has",
        "svm": f"LinearSVC as the full VOC07 SVM (class_weight {{1: {cfg.svm.pos_weight}, "
               "-1: 1}), L2-normalised features",
        "cost_selection": "the cost with the best test mAP (area) averaged over the samples "
                          "(Goyal et al. / ORL aggregate_low_shot_svm_stats.py)",
        "costs": sorted(cfg.svm.costs),
        "metric": "mAP = area under the PR curve (the official calculate_ap), mAP_11point = "
                  "VOC07 11-point, on the full test set (difficult images ignored); mean, std, "
                  "min, max over samples at the chosen cost",
    }

"""VOC07 linear SVM classification (Goyal et al. 2019 benchmark, as run by the released ORL
scripts): one-vs-rest LinearSVC per class on L2-normalised frozen features, the cost chosen per
class by k-fold cross-validated AP on the training set, difficult images negatives in training
(``eval.svm.difficult``; ``ignore`` leaves them out) and ignored at test, AP per class and mAP on
the test set: the area under the PR curve (the scripts' ``calculate_ap``) with the VOC07 11-point
AP beside it.

LinearSVC settings are those of ``train_svm_kfold.py``: squared hinge, L2 penalty, dual, tol 1e-4,
``class_weight={1: 2, -1: 1}``, intercept scaling 1, max_iter 2000; cross-validation is
scikit-learn's ``cross_val_score(cv=folds, scoring="average_precision")`` (stratified, unshuffled).
"""

from __future__ import annotations

import multiprocessing
import os
import warnings
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, TypeVar

import numpy as np
from tqdm import tqdm

from evaluation.features import l2_normalise
from evaluation.metrics import classification_metrics
from orl_fast.core.defaults import EvalConfig, SVMConfig
from orl_fast.core.extras import require

require("sklearn", "eval", "the VOC07 SVM and low-shot evaluations")
from sklearn.exceptions import ConvergenceWarning  # (after the check that names the extra)
from sklearn.model_selection import cross_val_score
from sklearn.svm import LinearSVC

T = TypeVar("T")
R = TypeVar("R")


def svm(cost: float, cfg: SVMConfig, seed: int = 0) -> LinearSVC:
    """The benchmark's LinearSVC. liblinear's dual solver visits the samples in a random order:
    ``random_state`` makes a fit, and so every report, a pure function of (features, seed)."""
    return LinearSVC(C=cost, class_weight={1: cfg.pos_weight, -1: 1}, intercept_scaling=1.0,
                     penalty="l2", loss="squared_hinge", tol=1e-4, dual=True,
                     max_iter=cfg.max_iter, random_state=seed)


def cross_validated_ap(x: np.ndarray, y: np.ndarray, cost: float, cfg: SVMConfig,
                       seed: int = 0) -> float:
    """Mean k-fold AP (scikit-learn ``average_precision``) of the SVM with this cost."""
    return float(cross_val_score(svm(cost, cfg, seed), x, y, cv=cfg.folds,
                                 scoring="average_precision").mean())


def train_class(x: np.ndarray, labels: np.ndarray, cfg: SVMConfig, seed: int = 0) -> dict:
    """One class: cost by cross-validation over ``cfg.costs`` (ties: the smaller cost), refit on
    the training images. ``labels`` is the class column (1 / 0 difficult / -1); difficult images
    are negatives (``cfg.difficult="negative"``, the official scripts: train_svm_kfold.py turns
    every label other than 1 into -1) or left out (``"ignore"``)."""
    if cfg.difficult == "negative":
        y = np.where(labels == 1, 1, -1).astype(np.int32)
    else:
        keep = labels != 0
        x, y = x[keep], labels[keep].astype(np.int32)
    n_pos = int((y == 1).sum())
    if n_pos < cfg.folds or int((y == -1).sum()) < cfg.folds:
        raise ValueError(f"{n_pos} positives and {int((y == -1).sum())} negatives: "
                         f"too few for {cfg.folds}-fold cross-validation")
    costs = sorted(cfg.costs)
    cv_ap = [cross_validated_ap(x, y, c, cfg, seed) for c in costs]
    best = costs[int(np.argmax(cv_ap))]
    clf = svm(best, cfg, seed).fit(x, y)
    return {"cost": best, "cv_ap": dict(zip(costs, cv_ap)), "coef": clf.coef_[0].copy(),
            "intercept": float(clf.intercept_[0])}


def evaluate_svm(train_x: np.ndarray, train_labels: np.ndarray, test_x: np.ndarray,
                 test_labels: np.ndarray, classes: tuple[str, ...], cfg: EvalConfig,
                 desc: str | None = None) -> dict:
    """Train the per-class SVMs on one layer's features and score the test set (``desc``: a
    progress bar over the classes, so labelled)."""
    xtr, xte = l2_normalise(train_x), l2_normalise(test_x)
    fits = parallel_map(_fit_class, range(len(classes)), cfg.jobs,
                        (xtr, train_labels, cfg.svm, cfg.seed), desc, unit="class")
    scores = np.stack([xte @ f["coef"] + f["intercept"] for f in fits], axis=1)
    out = classification_metrics(scores, test_labels, classes)
    out["cost"] = {c: f["cost"] for c, f in zip(classes, fits)}
    out["cv_ap"] = {c: {str(k): round(v * 100, 4) for k, v in f["cv_ap"].items()}
                    for c, f in zip(classes, fits)}
    out["feature_dim"] = int(train_x.shape[1])
    return out


def _fit_class(shared: tuple, c: int) -> dict:
    x, labels, svm_cfg, seed = shared
    return train_class(x, labels[:, c], svm_cfg, seed)


def protocol(cfg: EvalConfig) -> dict:
    return {
        "task": "VOC07 linear SVM (one-vs-rest, frozen features)",
        "svm": f"LinearSVC(squared hinge, L2, dual, tol 1e-4, class_weight {{1: "
               f"{cfg.svm.pos_weight:g}, -1: 1}}, max_iter {cfg.svm.max_iter}) on "
               "L2-normalised features",
        "cost_selection": f"{cfg.svm.folds}-fold cross-validated AP on the training set, per class",
        "costs": sorted(cfg.svm.costs),
        "difficult": ("negatives in training" if cfg.svm.difficult == "negative"
                      else "ignored in training") + ", ignored at test",
        "metric": "AP per class = area under the interpolated PR curve (the official scripts' "
                  "calculate_ap), mAP over classes; AP_11point / mAP_11point: the VOC07 "
                  "11-point AP beside it",
    }


def parallel_map(fn: Callable[[Any, T], R], items: Iterable[T], jobs: int,
                 shared: Any = None, desc: str | None = None, unit: str = "fit") -> list[R]:
    """``[fn(shared, x) for x in items]``, in ``jobs`` worker processes (0: one per core); with
    ``desc``, a progress bar (so labelled) over the items done.

    Processes, not threads: liblinear draws its sample order from one generator per process, so
    SVMs fitted side by side in threads of one process would take each other's random numbers
    and a report would depend on the timing. Each worker receives ``shared`` once; ``fn`` must be
    a module-level function. LinearSVC's convergence warnings (max_iter 2000 is the protocol's)
    are silenced."""
    items = list(items)
    workers = min(jobs or os.cpu_count() or 1, max(len(items), 1))
    with tqdm(total=len(items), desc=desc, unit=unit, disable=desc is None,
              dynamic_ncols=True) as bar:
        if workers == 1:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                out = []
                for x in items:
                    out.append(fn(shared, x))
                    bar.update()
                return out
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_init_worker, initargs=(shared,)) as pool:
            futures = [pool.submit(_call, fn, x) for x in items]
            for _ in as_completed(futures):
                bar.update()
            return [f.result() for f in futures]


_SHARED: Any = None


def _init_worker(shared: Any) -> None:
    global _SHARED
    _SHARED = shared
    warnings.simplefilter("ignore", ConvergenceWarning)


def _call(fn: Callable[[Any, T], R], item: T) -> R:
    return fn(_SHARED, item)

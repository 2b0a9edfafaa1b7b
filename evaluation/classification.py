"""The frozen-feature classification evaluations end to end: weights (checkpoint + random-init
baseline) -> cached features of the train and test sets -> VOC07 SVM / low-shot / kNN / linear
probe per layer -> report (JSON + Markdown).

``run("voc07", cfg, data, train, test, out)`` is what ``orl-fast eval voc07|lowshot|knn|linear``
calls; ``cfg.ckpt`` names the checkpoint (``random`` for the baseline alone).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from evaluation import backbones, datasets, lowshot, probes, report, voc07
from evaluation.features import cached_features, resolve_device
from evaluation.metrics import classification_metrics
from orl_fast.core import storage
from orl_fast.core.defaults import Config, EvalConfig

# (train features, train labels, test features, test labels, classes, config, progress label)
Evaluate = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple, EvalConfig,
                     str | None], dict]


def _knn(train_x, train_labels, test_x, test_labels, classes, cfg: EvalConfig,
         desc: str | None = None) -> dict:
    scores = probes.knn_scores(train_x, train_labels, test_x, cfg.knn.k, cfg.knn.temperature,
                               resolve_device(cfg.device))
    return classification_metrics(scores, test_labels, classes)


def _linear(train_x, train_labels, test_x, test_labels, classes, cfg: EvalConfig,
            desc: str | None = None) -> dict:
    scores = probes.linear_probe_scores(train_x, train_labels, test_x, cfg)
    return classification_metrics(scores, test_labels, classes)


TASKS: dict[str, tuple[Evaluate, Callable[[EvalConfig], dict]]] = {
    "voc07": (voc07.evaluate_svm, voc07.protocol),
    "lowshot": (lowshot.evaluate_lowshot, lowshot.protocol),
    "knn": (_knn, probes.knn_protocol),
    "linear": (_linear, probes.linear_protocol),
}


def run(task: str, cfg: Config, data: str, train: str, test: str | None, out: str,
        progress: bool = True) -> dict:
    """Evaluate ``cfg.ckpt`` and the random-init baseline; write ``OUT/<task>.json|md``."""
    evaluate, protocol = TASKS[task]
    ec = cfg.eval
    t0 = time.perf_counter()
    train_set, test_set, split = datasets.train_test(data, train, test, ec.holdout_frac, ec.seed)
    models = backbones.with_baseline(cfg.ckpt or backbones.RANDOM, cfg.model.backbone, ec.seed)
    cache = ec.cache_dir or storage.join(out, "feature-cache")
    results = {}
    for w in models:
        t_model = time.perf_counter()
        ftr, info_tr = cached_features(w, train_set.ids, train_set.paths, ec, cache, progress)
        fte, info_te = cached_features(w, test_set.ids, test_set.paths, ec, cache, progress)
        layers = {}
        for layer in ec.layers:
            t_layer = time.perf_counter()
            layers[layer] = evaluate(ftr[layer], train_set.labels, fte[layer], test_set.labels,
                                     train_set.classes, ec,
                                     f"{task} {layer} ({w.name})" if progress else None)
            layers[layer]["seconds"] = round(time.perf_counter() - t_layer, 2)
        results[w.name] = {
            "weights": {"source": w.source, "arch": w.arch, "stage": w.stage, "step": w.step,
                        "digest": w.digest},
            "features": {"train": info_tr, "test": info_te},
            "layers": layers, "seconds": round(time.perf_counter() - t_model, 2),
        }
        if progress:
            print(f"[eval {task}] {w.name}: " + ", ".join(
                f"{layer} {_headline(task, r)}" for layer, r in layers.items()))
    rep = {
        "task": task, "protocol": protocol(ec),
        "features": {"resize": ec.resize, "crop": ec.crop, "view": ec.view,
                     "layers": list(ec.layers),
                     "pooling": ec.pooling, "precision": ec.precision,
                     "normalisation": "ImageNet mean/std"},
        "dataset": {"split": split, "train": train_set.summary(), "test": test_set.summary()},
        "results": results, "eval_config": cfg.to_dict()["eval"],
        "environment": report.environment(),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    rep["files"] = dict(zip(("json", "markdown"),
                            report.write(out, task, rep, markdown(rep))))
    return rep


def _headline(task: str, r: dict) -> str:
    if task == "lowshot":
        return " ".join(f"n={n}: {report.fmt(v['mAP_mean'])}" for n, v in r["shots"].items())
    s = f"mAP {report.fmt(r['mAP'])} (11-point {report.fmt(r['mAP_11point'])})"
    return s + (f", top-1 {report.fmt(r['top1'])}" if "top1" in r else "")


def markdown(rep: dict) -> str:
    task, results = rep["task"], rep["results"]
    feats, data = rep["features"], rep["dataset"]
    lines = [f"# {rep['protocol']['task']}\n", f"{data['split']}.\n",
             (f"Train: {data['train']['images']} images, test: {data['test']['images']} images; "
              f"features {feats['layers']} ({feats['pooling']} pooling, resize {feats['resize']}, "
              f"{_view(feats)}).\n")]
    if task == "lowshot":
        shots = [str(n) for n in rep["protocol"]["shots"]]
        for metric, title in (("mAP", "mAP (area under the PR curve)"),
                              ("mAP_11point", "mAP (VOC07 11-point)")):
            rows = [[name, layer] + [f"{report.fmt(r['shots'][n][metric + '_mean'])} ± "
                                     f"{report.fmt(r['shots'][n][metric + '_std'])}"
                                     for n in shots]
                    for name, res in results.items() for layer, r in res["layers"].items()]
            lines.append(f"{title}, mean ± std over samples:\n")
            lines.append(report.table(["weights", "layer"] + [f"n={n}" for n in shots], rows))
    else:
        single = any("top1" in r for res in results.values() for r in res["layers"].values())
        headers = ["weights", "layer", "mAP (area)", "mAP (11-point)"] + (["top-1"] if single
                                                                          else [])
        rows = [[name, layer, report.fmt(r["mAP"]), report.fmt(r["mAP_11point"])]
                + ([report.fmt(r.get("top1"))] if single else [])
                for name, res in results.items() for layer, r in res["layers"].items()]
        lines.append(report.table(headers, rows))
        if task == "voc07":
            names = list(results)
            layer = rep["features"]["layers"][-1]
            classes = rep["dataset"]["train"]["classes"]
            rows = [[c] + [report.fmt(results[n]["layers"][layer]["AP"][c]) for n in names]
                    for c in classes]
            lines.append(f"\nPer-class AP (area, {layer}):\n")
            lines.append(report.table(["class"] + names, rows))
    lines.append("".join(f"- {name}: {res['weights']['source']} ({res['weights']['arch']})\n"
                         for name, res in results.items()))
    return "\n".join(lines)


def _view(feats: dict) -> str:
    if feats.get("view", "center_crop") == "resize":
        return f"squashed to {feats['crop']}x{feats['crop']}"
    return f"centre crop {feats['crop']}"

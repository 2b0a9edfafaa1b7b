"""Benchmark: the VOC07 evaluation on ../shared/data/voc07 (or any VOCdevkit / labels.csv set).

Measures, in one run:
1. the time of each evaluation (VOC07 SVM with the full cost grid and 3-fold cross-validation,
   low-shot with 8 shot counts x 5 samples, kNN, linear probe) and its numbers, for the weights
   given and the random-init baseline (features extracted by the first task, then cached);
2. feature extraction (frozen backbone, the configured view and pooling: by default resize 256
   then 224x224, res5 Goyal pooling) in
   images/s with the evaluation's batched DataLoader path, against a naive baseline on the same
   first ``--baseline-images`` images (one image at a time, decode + forward in the main
   process) whose features must equal the batched ones, best of ``--rounds`` interleaved
   rounds (``--tasks ""`` measures only this).

    python benchmarks/eval_voc07.py --ckpt random --out /tmp/bench
    python benchmarks/eval_voc07.py --ckpt runs/stage1 eval.device=cuda     # on a GPU machine

Writes OUT/benchmark.json and the reports of each task (OUT/<task>.json|md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_common import SHARED_DATA

from evaluation import backbones, classification, datasets, report
from evaluation.features import EvalImages, PooledFeatures, extract, resolve_device
from loaders.augment import normalize
from orl_fast.core.config import load_config
from orl_fast.core.defaults import IMAGENET_MEAN, IMAGENET_STD

DEFAULT_DATA = str(SHARED_DATA / "voc07")


@torch.no_grad()
def naive_features(w, paths, cfg) -> np.ndarray:
    """The baseline: one image at a time, decoded and run in the main process."""
    device = resolve_device(cfg.device)
    model = PooledFeatures(w.build(), ("res5",), cfg.pooling).to(device).eval()
    images = EvalImages(paths, cfg.resize, cfg.crop, cfg.view)
    out = []
    for i in range(len(images)):
        x = normalize(images[i][None].to(device), IMAGENET_MEAN, IMAGENET_STD)
        out.append(model(x)["res5"].cpu().numpy())
    return np.concatenate(out)


def timed(fn):
    t0 = time.perf_counter()
    value = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return value, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=os.path.normpath(DEFAULT_DATA))
    p.add_argument("--train", default="train")
    p.add_argument("--test", default=None)
    p.add_argument("--ckpt", default="random", help="checkpoint, or random (the default)")
    p.add_argument("--tasks", default="voc07,lowshot,knn,linear")
    p.add_argument("--baseline-images", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3, help="interleaved extraction rounds")
    p.add_argument("--out", default="bench-eval-voc07")
    p.add_argument("overrides", nargs="*", metavar="FIELD=VALUE")
    args = p.parse_args()

    cfg = load_config("paper", [f"ckpt={args.ckpt}", *args.overrides])
    ec = cfg.eval
    device = resolve_device(ec.device)
    torch.set_num_threads(os.cpu_count() or 1)
    full = datasets.load(args.data, args.train)
    w = backbones.resolve(args.ckpt, cfg.model.backbone, ec.seed)
    machine = {"host": platform.node(), "cpus": os.cpu_count(), "device": str(device),
               "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
               "torch": torch.__version__, "threads": torch.get_num_threads()}
    print(f"[bench] {len(full)} images, {w.arch} ({w.source}), {machine}")

    # 1. The evaluations; the first one extracts (and caches) the features of every image.
    tasks = {}
    for task in filter(None, args.tasks.split(",")):
        rep, seconds = timed(lambda task=task: classification.run(
            task, cfg, args.data, args.train, args.test, args.out, progress=False))
        tasks[task] = {"seconds": seconds, "report": rep["files"]["json"], "results": {
            name: {"seconds": r["seconds"], "features": r["features"],
                   **{layer: _numbers(task, v) for layer, v in r["layers"].items()}}
            for name, r in rep["results"].items()}}
        print(f"[bench] {task}: {seconds:.1f} s " + json.dumps(
            {k: {kk: vv for kk, vv in v.items() if kk != "features"}
             for k, v in tasks[task]["results"].items()}))

    # 2. Extraction speed, like for like on the first images: the evaluation's batched
    # DataLoader path vs the naive loop (whose features must be equal). Both warmed up, then
    # timed in interleaved rounds; the best round of each counts (the VM is shared and noisy).
    n = min(args.baseline_images, len(full))
    paths = full.paths[:n]
    naive_features(w, paths[:1], ec)
    t_naive, t_batched = [], []
    for _ in range(args.rounds):
        naive, t = timed(lambda: naive_features(w, paths, ec))
        t_naive.append(t)
        batched, t = timed(lambda: extract(w, paths, ec)["res5"])
        t_batched.append(t)
    max_diff = float(np.abs(batched - naive).max())
    extraction = {"images": n, "rounds": args.rounds, "batch_size": ec.batch_size,
                  "num_workers": ec.num_workers, "images_per_s": n / min(t_batched),
                  "baseline_images_per_s": n / min(t_naive),
                  "speedup": min(t_naive) / min(t_batched), "max_abs_diff_vs_baseline": max_diff,
                  "round_seconds": {"batched": t_batched, "naive": t_naive}}
    if tasks:  # the first task's extraction of the whole set (train + test)
        first = tasks[next(iter(tasks))]["results"][w.name]["features"].values()
        timed_sets = [f for f in first if not f["cached"]]
        if timed_sets:
            extraction["full_set_images_per_s"] = len(full) / sum(
                f["extract_seconds"] for f in timed_sets)
    print(f"[bench] extraction ({n} images, best of {args.rounds}): "
          f"{extraction['images_per_s']:.1f} img/s batched vs "
          f"{extraction['baseline_images_per_s']:.1f} img/s naive "
          f"(x{extraction['speedup']:.2f}); max |diff| {max_diff:.2e}")
    assert max_diff < 1e-3, "the batched features differ from the baseline's"
    out = {"machine": machine, "extraction": extraction, "tasks": tasks,
           "environment": report.environment(), "eval_config": cfg.to_dict()["eval"]}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "benchmark.json"), "w") as f:
        json.dump(out, f, indent=1)
    print(f"[bench] {os.path.join(args.out, 'benchmark.json')}")


def _numbers(task: str, r: dict) -> dict:
    if task == "lowshot":
        return {n: [round(v["mAP_mean"], 2), round(v["mAP_std"], 2),
                    round(v["mAP_11point_mean"], 2)]
                for n, v in r["shots"].items()} | {"seconds": r["seconds"]}
    return {k: round(r[k], 2) for k in ("mAP", "mAP_11point", "seconds") if k in r}


if __name__ == "__main__":
    main()

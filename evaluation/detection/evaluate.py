"""COCO evaluation of the detection transfer (pycocotools COCOeval on boxes and masks) and the
transfer end to end: ``run`` fine-tunes from the checkpoint and from random initialisation with
the engine of ``eval.detection.engine`` (``torchvision``: :func:`transfer` here; ``detectron2``:
:mod:`evaluation.detection.detectron2_engine`), evaluates both and writes one report,
``OUT/detection.json|md``, whichever engine ran."""

from __future__ import annotations

import contextlib
import io
import os
import time
from collections.abc import Callable
from dataclasses import asdict

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from evaluation import backbones, report
from evaluation.backbones import Weights
from evaluation.detection.data import CocoInstances, DetectionData, coco_api, collate, load_data
from evaluation.detection.schedule import schedule, stop_iter
from evaluation.detection.train import train
from orl_fast.core import storage
from orl_fast.core.defaults import Config, DetectionConfig
from orl_fast.core.distributed import Runtime, barrier, init_runtime
from orl_fast.core.extras import require
from orl_fast.core.locks import out_lock

require("pycocotools", "eval", "the detection transfer (COCO masks and metrics)")
from pycocotools import mask as mask_utils  # (after the check that names the extra)
from pycocotools.cocoeval import COCOeval

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


@torch.no_grad()
def predict(model: nn.Module, data: DetectionData, dc: DetectionConfig, rt: Runtime,
            progress: bool = True) -> tuple[list[dict], list[dict]]:
    """COCO-format box and mask results for the validation images (this rank's share)."""
    dataset = CocoInstances(data.val, data.val_root, dc.masks, train=False)
    model.eval()
    model.transform.min_size = (dc.min_size_test,)
    boxes, masks = [], []
    positions = list(range(rt.rank, len(dataset), rt.world_size))
    loader = DataLoader(torch.utils.data.Subset(dataset, positions), batch_size=1,
                        num_workers=0, collate_fn=collate)
    for images, metas in tqdm(loader, desc="detection: validation images", unit="img",
                              disable=not (progress and rt.is_main), dynamic_ncols=True):
        out = model([im.to(rt.device) for im in images])
        for o, meta in zip(out, metas):
            xyxy = o["boxes"].float().cpu().numpy()
            scores = o["scores"].float().cpu().numpy().tolist()
            cats = [dataset.category_of[int(lab)] for lab in o["labels"].cpu()]
            for (x0, y0, x1, y1), s, c in zip(xyxy.tolist(), scores, cats):
                boxes.append({"image_id": meta["image_id"], "category_id": c, "score": s,
                              "bbox": [x0, y0, x1 - x0, y1 - y0]})
            if "masks" in o:
                binary = (o["masks"][:, 0] > 0.5).cpu().numpy().astype(np.uint8)
                for m, s, c in zip(binary, scores, cats):
                    rle = mask_utils.encode(np.asfortranarray(m))
                    rle["counts"] = rle["counts"].decode()
                    masks.append({"image_id": meta["image_id"], "category_id": c, "score": s,
                                  "segmentation": rle})
    model.transform.min_size = tuple(dc.min_size_train)
    return boxes, masks


def coco_evaluate(gt: dict, results: list[dict], iou_type: str) -> dict:
    """pycocotools COCOeval: AP, AP50, AP75, APs, APm, APl (percent). No detections: all 0."""
    if not results:
        return {k: 0.0 for k in METRICS} | {"detections": 0}
    api = coco_api(gt)
    with contextlib.redirect_stdout(io.StringIO()) as text:
        dt = api.loadRes(results)
        ev = COCOeval(api, dt, iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = {k: float(v) * 100 if v >= 0 else float("nan") for k, v in zip(METRICS, ev.stats)}
    return stats | {"detections": len(results), "summary": text.getvalue().strip().splitlines()}


def _gather(items: list, rt: Runtime) -> list:
    if not rt.distributed:
        return items
    parts: list = [None] * rt.world_size
    dist.all_gather_object(parts, items)
    return [x for part in parts for x in part]


# An engine fine-tunes a detector from the weights in run_dir (resuming what is there) and
# evaluates it on the validation set: on rank 0 {"metrics": {"bbox": ..., "segm": ...},
# "backbone_norm": the normalisation class that ran}, None on the other ranks.
Transfer = Callable[[Weights, DetectionData, Config, str, Runtime, bool], dict | None]

# What the report says each engine ran.
PROTOCOL = {
    "torchvision": {
        "model": "torchvision Mask R-CNN, maskrcnn_resnet50_fpn_v2-style heads (FPN + BN, "
                 "{rpn_convs}-conv RPN head, 4conv1fc box head, 4-conv mask head) on the weights' "
                 "{arch}, all layers trained",
        "metric": "pycocotools COCOeval (bbox, segm): AP, AP50, AP75, APs, APm, APl",
    },
    "detectron2": {
        "model": "detectron2 GeneralizedRCNN on the exported config and weights (ResNet-FPN, "
                 "StandardRPNHead with {rpn_convs} conv, 4conv1fc box head, 4-conv mask head, "
                 "BatchNorm in FPN and heads) on the weights' {arch}, all layers trained by "
                 "detectron2's DefaultTrainer",
        "metric": "detectron2 COCOEvaluator (bbox, segm): AP, AP50, AP75, APs, APm, APl",
    },
}


def engine(name: str) -> Transfer:
    """The engine's transfer function; detectron2's is imported here, so that a missing
    detectron2 stops the run at start-up with one line saying how to install it."""
    if name == "detectron2":
        from evaluation.detection import detectron2_engine

        return detectron2_engine.transfer
    return transfer


def transfer(w: Weights, data: DetectionData, cfg: Config, run_dir: str, rt: Runtime,
             progress: bool = True) -> dict | None:
    """The torchvision engine: fine-tune on the one training loop, pycocotools COCOeval."""
    dc = cfg.eval.detection
    model = train(w, data, cfg, run_dir, rt, progress)
    boxes, masks = (_gather(r, rt) for r in predict(model, data, dc, rt, progress))
    if not rt.is_main:
        return None
    metrics = {"bbox": coco_evaluate(data.val, boxes, "bbox")}
    if dc.masks:
        metrics["segm"] = coco_evaluate(data.val, masks, "segm")
    # What normalisation actually ran (e.g. SyncBatchNorm under DDP).
    return {"metrics": metrics, "backbone_norm": type(model.backbone.body.bn1).__name__}


def run(cfg: Config, train_json: str, val_json: str | None, out: str,
        train_images: str | None = None, val_images: str | None = None,
        progress: bool = True) -> dict:
    """Fine-tune from ``cfg.ckpt`` and from random initialisation with the engine of
    ``eval.detection.engine``, evaluate both on the
    validation set; rank 0 writes ``OUT/detection.json|md``, holding OUT's lock. Works under
    torchrun (DDP)."""
    main = os.environ.get("RANK", "0") == "0"
    with out_lock(out, "orl-fast eval detection") if main else contextlib.nullcontext():
        return _run(cfg, train_json, val_json, out, train_images, val_images, progress)


def _run(cfg: Config, train_json: str, val_json: str | None, out: str,
         train_images: str | None, val_images: str | None, progress: bool) -> dict:
    dc, ec = cfg.eval.detection, cfg.eval
    fine_tune = engine(dc.engine)
    rt = init_runtime(ec.device)
    data = load_data(train_json, val_json, dc.masks, ec.holdout_frac, ec.seed, train_images,
                     val_images)
    results = {}
    t0 = time.perf_counter()
    weights = backbones.with_baseline(cfg.ckpt or backbones.RANDOM, cfg.model.backbone, ec.seed)
    for w in weights:
        t_model = time.perf_counter()
        run_dir = storage.join(out, w.name.replace(" ", "-"))
        done = fine_tune(w, data, cfg, run_dir, rt, progress)
        if rt.is_main:
            metrics = done["metrics"]
            results[w.name] = {"weights": {"source": w.source, "arch": w.arch, "stage": w.stage,
                                           "step": w.step,
                                           "digest": w.digest},
                               "run_dir": run_dir, "metrics": metrics,
                               "backbone_norm": done["backbone_norm"],
                               "seconds": round(time.perf_counter() - t_model, 2)}
            if progress:
                print(f"[detection] {w.name}: APbb {report.fmt(metrics['bbox']['AP'])}"
                      + (f", APmk {report.fmt(metrics['segm']['AP'])}" if dc.masks else ""))
        barrier(rt)
    if not rt.is_main:
        return {}
    rep = {
        "task": "detection",
        "protocol": {
            "task": f"{'Mask' if dc.masks else 'Faster'} R-CNN {fpn_name(weights[0].arch)} "
                    "transfer",
            "engine": dc.engine,
            "model": PROTOCOL[dc.engine]["model"].format(rpn_convs=dc.rpn_convs,
                                                          arch=weights[0].arch),
            "norm": dc.norm, "schedule": asdict(schedule(dc)), "stopped_at": stop_iter(dc),
            "world_size": rt.world_size, "input": {"min_size_train": list(dc.min_size_train),
                                                   "min_size_test": dc.min_size_test,
                                                   "max_size": dc.max_size, "hflip": 0.5},
            "precise_bn_iters": dc.precise_bn_iters if dc.norm == "sync" else 0,
            "metric": PROTOCOL[dc.engine]["metric"],
        },
        "dataset": {"split": data.split, "train_images": len(data.train["images"]),
                    "val_images": len(data.val["images"]), "classes": data.num_classes},
        "results": results, "eval_config": cfg.to_dict()["eval"],
        "environment": report.environment(), "seconds": round(time.perf_counter() - t0, 2),
    }
    rep["files"] = dict(zip(("json", "markdown"),
                            report.write(out, "detection", rep, markdown(rep))))
    return rep


def fpn_name(arch: str) -> str:
    """detectron2's name of the detector's backbone: resnet50 -> R50-FPN, resnet18 -> R18-FPN,
    wide_resnet50_2 -> WRN50-2-FPN."""
    if arch.startswith("wide_resnet"):
        depth, width = arch[len("wide_resnet"):].split("_")
        return f"WRN{depth}-{width}-FPN"
    return f"R{arch[len('resnet'):]}-FPN" if arch.startswith("resnet") else f"{arch}-FPN"


def markdown(rep: dict) -> str:
    types = [t for t in ("bbox", "segm") if any(t in r["metrics"] for r in rep["results"].values())]
    headers = ["weights"] + [f"{k}{'bb' if t == 'bbox' else 'mk'}" for t in types
                             for k in ("AP", "AP50", "AP75")]
    rows = [[name] + [report.fmt(r["metrics"][t][k]) for t in types for k in ("AP", "AP50", "AP75")]
            for name, r in rep["results"].items()]
    p = rep["protocol"]
    return (f"# {p['task']}\n\n{rep['dataset']['split']}.\n\n"
            f"{rep['dataset']['train_images']} training, {rep['dataset']['val_images']} validation "
            f"images; {p['stopped_at']} of {p['schedule']['max_iter']} iterations at batch "
            f"{p['schedule']['batch_size']}, norm {p['norm']}, engine {p['engine']}.\n\n"
            + report.table(headers, rows))

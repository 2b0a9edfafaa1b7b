"""Mask R-CNN R50-FPN transfer (paper Table 4): torchvision Mask R-CNN with the heads of
``maskrcnn_resnet50_fpn_v2`` (FPN, 2-conv RPN head, 4conv1fc box head and 4-conv mask head, all
with BatchNorm), the ResNet backbone initialised from an orl-fast checkpoint, every layer trained.

Normalisation (``eval.detection.norm``): "sync" keeps BatchNorm everywhere, synchronised across
GPUs under DDP (torchrun), as the paper's detectron2 config (``NORM: SyncBN``); "frozen" freezes the
backbone's BatchNorm at the checkpoint's statistics. Schedule as detectron2 (see
:func:`schedule`): SGD momentum 0.9, weight decay 1e-4 (none on norm parameters), linear warm-up,
x0.1 steps; multi-scale training (shorter side from ``min_size_train``, longer side <= 1333,
horizontal flip), test at 800; precise BatchNorm statistics before evaluation. Evaluation:
pycocotools COCOeval, boxes (APbb) and masks (APmk), AP / AP50 / AP75 / APs / APm / APl.

Training resumes from ``OUT/<model>/checkpoints`` (orl_fast.checkpoint) when a run was stopped.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, RPNHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads
from torchvision.models.detection.rpn import AnchorGenerator
from torchvision.ops.misc import FrozenBatchNorm2d

from evaluation import backbones, report
from evaluation.backbones import Weights
from evaluation.datasets import parent
from loaders.sampling import StepBatchSampler, sample_seed
from loaders.torch_loader import make_loader
from orl_fast import checkpoint, storage
from orl_fast.config import IMAGENET_MEAN, IMAGENET_STD, Config, DetectionConfig
from orl_fast.distributed import (
    Runtime,
    barrier,
    convert_sync_batchnorm,
    init_runtime,
    mean_across_ranks,
)
from orl_fast.extras import require
from orl_fast.runlog import RunLog

require("pycocotools", "eval", "the detection transfer (COCO masks and metrics)")
from pycocotools import mask as mask_utils  # (after the check that names the extra)
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

# detectron2's 1x schedule at its reference batch of 16 images.
REFERENCE_BATCH, ITERS_1X, STEPS_1X = 16, 90_000, (60_000, 80_000)
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


# ----------------------------------------------------------------------------- schedule


@dataclass(frozen=True)
class Schedule:
    batch_size: int
    max_iter: int
    steps: tuple[int, int]
    base_lr: float
    warmup_iters: int
    warmup_factor: float

    def lr(self, it: int) -> float:
        """detectron2 WarmupMultiStepLR: linear warm-up from base x factor, x0.1 at each step."""
        lr = self.base_lr * 0.1 ** sum(it >= s for s in self.steps)
        if it < self.warmup_iters:
            alpha = it / self.warmup_iters
            lr *= self.warmup_factor * (1 - alpha) + alpha
        return lr


def schedule(dc: DetectionConfig) -> Schedule:
    """detectron2's 1x (90k iterations at batch 16, steps 60k / 80k, 1000 warm-up iterations)
    times ``dc.schedule``; a batch other than 16 scales lr up and iterations down linearly (as
    detectron2's ``REFERENCE_WORLD_SIZE``). Warm-up shrinks with schedules shorter than 1x."""
    scale = dc.batch_size / REFERENCE_BATCH
    it = lambda n: max(1, round(n * dc.schedule / scale))
    return Schedule(dc.batch_size, it(ITERS_1X), (it(STEPS_1X[0]), it(STEPS_1X[1])),
                    dc.base_lr * scale,
                    round(dc.warmup_iters * min(1.0, dc.schedule) / scale), dc.warmup_factor)


# ----------------------------------------------------------------------------- data


def read_coco(json_path: str) -> dict:
    with storage.open_file(json_path, "rb") as f:
        return json.load(f)


def _has_masks(anns: list[dict]) -> bool:
    return all(a.get("segmentation") for a in anns)


def select_images(coco: dict, masks: bool, train: bool) -> list[int]:
    """Image ids to use: with masks, only images whose every object has a mask (pycocotools
    cannot rasterise an empty ``segmentation``); for training, only images with a non-crowd
    object (detectron2 FILTER_EMPTY_ANNOTATIONS)."""
    by_image: dict[int, list[dict]] = {im["id"]: [] for im in coco["images"]}
    for a in coco["annotations"]:
        by_image[a["image_id"]].append(a)
    keep = []
    for img_id, anns in sorted(by_image.items()):
        if masks and not _has_masks(anns):
            continue
        if train and not any(not a.get("iscrowd", 0) for a in anns):
            continue
        keep.append(img_id)
    return keep


def subset(coco: dict, image_ids: list[int]) -> dict:
    ids = set(image_ids)
    return {**coco, "images": [im for im in coco["images"] if im["id"] in ids],
            "annotations": [a for a in coco["annotations"] if a["image_id"] in ids]}


def coco_api(coco: dict) -> COCO:
    api = COCO()
    api.dataset = copy.deepcopy(coco)
    with contextlib.redirect_stdout(io.StringIO()):
        api.createIndex()
    return api


class CocoInstances(Dataset):
    """COCO-format instances -> (float image CHW in [0, 1], target) for torchvision detectors.

    Training items are (epoch, position) from :class:`StepBatchSampler`; the flip of each sample is
    seeded by (seed, epoch, position). Evaluation items are positions."""

    def __init__(self, coco: dict, images_root: str, masks: bool, train: bool, seed: int = 0):
        self.api = coco_api(coco)
        self.ids = sorted(self.api.imgs)
        self.root, self.masks, self.train, self.seed = images_root, masks, train, seed
        cats = sorted(self.api.cats)
        self.label_of = {c: i + 1 for i, c in enumerate(cats)}  # 0 is background
        self.category_of = {i: c for c, i in self.label_of.items()}

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, item):
        epoch, pos = item if self.train else (0, item)
        img_id = self.ids[pos]
        info = self.api.imgs[img_id]
        data = storage.read_bytes(storage.join(self.root, info["file_name"]))
        img = Image.open(io.BytesIO(data)).convert("RGB")
        image = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255
        if not self.train:
            return image, {"image_id": img_id}
        anns = [a for a in self.api.imgToAnns[img_id] if not a.get("iscrowd", 0)
                and a["bbox"][2] >= 1 and a["bbox"][3] >= 1]
        boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)],
                             dtype=torch.float32).reshape(-1, 4)
        target = {"boxes": boxes, "image_id": img_id,
                  "labels": torch.tensor([self.label_of[a["category_id"]] for a in anns],
                                         dtype=torch.int64)}
        if self.masks:
            h, w = image.shape[1:]
            target["masks"] = torch.from_numpy(np.stack(
                [self.api.annToMask(a) for a in anns]) if anns else np.zeros((0, h, w), np.uint8))
        rng = np.random.default_rng(sample_seed(self.seed, epoch, pos))
        if rng.random() < 0.5:
            image = image.flip(-1)
            width = image.shape[-1]
            target["boxes"] = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0],
                                           boxes[:, 3]], dim=1)
            if self.masks:
                target["masks"] = target["masks"].flip(-1)
        return image, target


def collate(batch):
    return tuple(zip(*batch))


# ----------------------------------------------------------------------------- model


def build_model(weights: Weights, num_classes: int, dc: DetectionConfig) -> nn.Module:
    """Mask R-CNN (Faster R-CNN when ``dc.masks`` is off) with v2-style heads on an FPN over the
    ResNet of ``weights``; every layer trainable. ``num_classes`` excludes the background."""
    resnet = weights.build()
    if dc.norm == "frozen":
        resnet = freeze_batchnorm(resnet)
    body = _resnet_fpn_extractor(resnet, trainable_layers=5, norm_layer=nn.BatchNorm2d)
    anchors = AnchorGenerator(((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5)
    common = {
        "num_classes": num_classes + 1, "min_size": tuple(dc.min_size_train),
        "max_size": dc.max_size, "image_mean": list(IMAGENET_MEAN),
        "image_std": list(IMAGENET_STD), "rpn_anchor_generator": anchors,
        "rpn_head": RPNHead(body.out_channels, anchors.num_anchors_per_location()[0],
                            conv_depth=2),
        # Per FPN level before NMS (torchvision defaults = detectron2's 2000 / 1000), per image
        # after NMS (detectron2 FPN: 1000 / 1000).
        "rpn_post_nms_top_n_train": dc.rpn_post_nms_topk_train,
        "rpn_post_nms_top_n_test": dc.rpn_post_nms_topk_test,
        "box_batch_size_per_image": dc.roi_batch_size_per_image,
        "box_detections_per_img": dc.detections_per_image,
        "box_head": FastRCNNConvFCHead((body.out_channels, 7, 7), [256] * 4, [1024],
                                       norm_layer=nn.BatchNorm2d),
    }
    if not dc.masks:
        return FasterRCNN(body, **common)
    return MaskRCNN(body, mask_head=MaskRCNNHeads(body.out_channels, [256] * 4, 1,
                                                  norm_layer=nn.BatchNorm2d), **common)


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Every BatchNorm2d -> FrozenBatchNorm2d with the same statistics and affine parameters."""
    if isinstance(module, nn.BatchNorm2d):
        frozen = FrozenBatchNorm2d(module.num_features, module.eps)
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(frozen, name).copy_(getattr(module, name).detach())
        return frozen
    for name, child in module.named_children():
        setattr(module, name, freeze_batchnorm(child))
    return module


def make_optimizer(model: nn.Module, dc: DetectionConfig, lr: float) -> torch.optim.SGD:
    """SGD; normalisation parameters use ``weight_decay_norm`` (detectron2 WEIGHT_DECAY_NORM)."""
    norm, other = [], []
    for module in model.modules():
        for p in module.parameters(recurse=False):
            if p.requires_grad:
                (norm if isinstance(module, nn.modules.batchnorm._NormBase) else other).append(p)
    return torch.optim.SGD([{"params": other, "weight_decay": dc.weight_decay},
                            {"params": norm, "weight_decay": dc.weight_decay_norm}],
                           lr=lr, momentum=dc.momentum)


# ----------------------------------------------------------------------------- train / test


@dataclass
class DetectionData:
    train: dict
    val: dict
    train_root: str
    val_root: str
    split: str  # how train / val were made, for the report

    @property
    def num_classes(self) -> int:
        return len(self.train["categories"])


def load_data(train_json: str, val_json: str | None, masks: bool, holdout_frac: float,
              seed: int, train_images: str | None = None,
              val_images: str | None = None) -> DetectionData:
    train = read_coco(train_json)
    train_root = train_images or parent(train_json)
    if val_json:
        val = read_coco(val_json)
        val_root = val_images or parent(val_json)
        split = f"train {train_json}, validation {val_json}"
    else:
        ids = sorted(im["id"] for im in train["images"])
        perm = np.random.default_rng(seed).permutation(len(ids))
        n_val = round(holdout_frac * len(ids))
        val = subset(train, [ids[i] for i in perm[:n_val]])
        train = subset(train, [ids[i] for i in perm[n_val:]])
        val_root = train_root
        split = (f"one annotation file given: seeded held-out protocol, {n_val} of {len(ids)} "
                 f"images of {train_json} (fraction {holdout_frac}, seed {seed}) are the "
                 "validation set, the rest the training set")
    train = subset(train, select_images(train, masks, train=True))
    val = subset(val, select_images(val, masks, train=False))
    if [c["id"] for c in sorted(train["categories"], key=lambda c: c["id"])] != [
            c["id"] for c in sorted(val["categories"], key=lambda c: c["id"])]:
        raise ValueError("train and validation files have different categories")
    if not train["images"] or not val["images"]:
        raise ValueError(f"no usable images ({len(train['images'])} train, "
                         f"{len(val['images'])} validation)")
    return DetectionData(train, val, train_root, val_root, split)


def train(weights: Weights, data: DetectionData, cfg: Config, out: str, rt: Runtime,
          progress: bool = True) -> nn.Module:
    """Fine-tune a detector from ``weights``; resumes from ``out`` if it holds a checkpoint."""
    dc, ec = cfg.eval.detection, cfg.eval
    sched = schedule(dc)
    stop = min(sched.max_iter, dc.max_iter) if dc.max_iter else sched.max_iter
    torch.manual_seed(ec.seed)  # the new heads' initialisation: the same on every rank and run
    model = build_model(weights, data.num_classes, dc).to(rt.device)
    if rt.distributed and dc.norm == "sync":
        model = convert_sync_batchnorm(model, rt.device).to(rt.device)
    optimizer = make_optimizer(model, dc, sched.base_lr)
    it = 0
    resumed = checkpoint.resolve(out) if storage.exists(checkpoint.ckpt_dir(out)) else None
    if resumed:
        state = checkpoint.load(resumed, map_location=rt.device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        it = state["step"]
        if rt.is_main and progress:
            print(f"[detection] {weights.name}: resumed from {resumed} at iteration {it}/{stop}")
    # The RPN / RoI samplers draw from torch's RNG: seeded by (seed, rank, first iteration).
    torch.manual_seed(sample_seed(ec.seed, rt.rank, it))

    dataset = CocoInstances(data.train, data.train_root, dc.masks, train=True, seed=ec.seed)
    sampler = StepBatchSampler(len(dataset), dc.batch_size, rt.rank, rt.world_size, ec.seed,
                               it, stop)
    loader = make_loader(dataset, sampler, ec.num_workers, pin_memory=rt.device.type == "cuda",
                         collate_fn=collate)
    train_model = model
    if rt.distributed:
        train_model = DistributedDataParallel(
            model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16,
                              enabled=rt.device.type == "cuda" and ec.precision == "bf16")

    def save(at: int) -> None:
        if rt.is_main:
            checkpoint.save(out, at, {
                "stage": "detection", "step": at, "total_steps": sched.max_iter,
                "config": cfg.to_dict(), "config_hash": cfg.hash(), "weights": weights.source,
                "model": model.state_dict(), "optimizer": optimizer.state_dict()},
                keep_last=1)

    # OUT/metrics.jsonl: appended in place (local OUT) or staged and uploaded (remote OUT).
    log = RunLog(out, key="iter", resumed_at=it, enabled=rt.is_main)
    try:
        model.train()
        t0, images = time.perf_counter(), 0
        for images_batch, targets in loader:
            lr = sched.lr(it)
            for g in optimizer.param_groups:
                g["lr"] = lr
            images_batch = [im.to(rt.device, non_blocking=True) for im in images_batch]
            targets = [_to(t, rt.device) for t in targets]
            with autocast:
                losses = train_model(images_batch, targets)
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                raise FloatingPointError(f"[detection] loss is {loss.item()} at iteration {it}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            it += 1
            images += dc.batch_size
            if it % dc.log_every_iters == 0 or it == stop:
                scalars = mean_across_ranks({"loss": loss.item(), **{k: v.item() for k, v in
                                                                     losses.items()}}, rt)
                scalars.update(lr=lr, img_per_s=images / (time.perf_counter() - t0))
                if rt.is_main:
                    _log(log, it, scalars, progress)
                t0, images = time.perf_counter(), 0
            if it % dc.ckpt_every_iters == 0 or it == stop:
                save(it)
                log.sync()
    finally:
        log.close()
    barrier(rt)
    if dc.precise_bn_iters and dc.norm == "sync":
        precise_bn(model, dataset, dc, rt, autocast)
    return model


def _to(target: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v
            for k, v in target.items()}


def _log(log: RunLog, it: int, scalars: dict, progress: bool) -> None:
    log.log(it, scalars)
    line = {"iter": it, **{k: round(v, 6) for k, v in scalars.items()}}
    if progress:
        print("[detection] " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                        for k, v in line.items()), flush=True)


@torch.no_grad()
def precise_bn(model: nn.Module, dataset: CocoInstances, dc: DetectionConfig, rt: Runtime,
               autocast) -> None:
    """detectron2 PreciseBN: BatchNorm running statistics = the mean of the batch statistics of
    ``precise_bn_iters`` training batches (weights unchanged)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    sampler = StepBatchSampler(len(dataset), dc.batch_size, rt.rank, rt.world_size,
                               seed=1_000_003, start_step=0, stop_step=dc.precise_bn_iters)
    model.train()
    with torch.random.fork_rng(devices=[rt.device.index] if rt.device.type == "cuda" else []):
        torch.manual_seed(1_000_003 + rt.rank)  # the RoI sampling, hence the statistics
        for images, targets in make_loader(dataset, sampler, 0, False, collate_fn=collate):
            with autocast:
                model([im.to(rt.device) for im in images], [_to(t, rt.device) for t in targets])
    for m, momentum in zip(bns, saved):
        m.momentum = momentum


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
    for images, metas in loader:
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


def run(cfg: Config, train_json: str, val_json: str | None, out: str,
        train_images: str | None = None, val_images: str | None = None,
        progress: bool = True) -> dict:
    """Fine-tune from ``cfg.ckpt`` and from random initialisation, evaluate both on the
    validation set; rank 0 writes ``OUT/detection.json|md``. Works under torchrun (DDP)."""
    dc, ec = cfg.eval.detection, cfg.eval
    rt = init_runtime(ec.device)
    data = load_data(train_json, val_json, dc.masks, ec.holdout_frac, ec.seed, train_images,
                     val_images)
    results = {}
    t0 = time.perf_counter()
    for w in backbones.with_baseline(cfg.ckpt or backbones.RANDOM, cfg.model.backbone, ec.seed):
        t_model = time.perf_counter()
        run_dir = storage.join(out, w.name.replace(" ", "-"))
        model = train(w, data, cfg, run_dir, rt, progress)
        boxes, masks = (_gather(r, rt) for r in predict(model, data, dc, rt, progress))
        if rt.is_main:
            metrics = {"bbox": coco_evaluate(data.val, boxes, "bbox")}
            if dc.masks:
                metrics["segm"] = coco_evaluate(data.val, masks, "segm")
            results[w.name] = {"weights": {"source": w.source, "arch": w.arch, "stage": w.stage,
                                           "digest": w.digest},
                               "run_dir": run_dir, "metrics": metrics,
                               # what normalisation actually ran (e.g. SyncBatchNorm under DDP)
                               "backbone_norm": type(model.backbone.body.bn1).__name__,
                               "seconds": round(time.perf_counter() - t_model, 2)}
            if progress:
                print(f"[detection] {w.name}: APbb {report.fmt(metrics['bbox']['AP'])}"
                      + (f", APmk {report.fmt(metrics['segm']['AP'])}" if dc.masks else ""))
        barrier(rt)
    if not rt.is_main:
        return {}
    sched = schedule(dc)
    rep = {
        "task": "detection",
        "protocol": {
            "task": "Mask R-CNN R50-FPN transfer" if dc.masks else "Faster R-CNN R50-FPN transfer",
            "model": "torchvision Mask R-CNN, maskrcnn_resnet50_fpn_v2-style heads (FPN + BN, "
                     "2-conv RPN head, 4conv1fc box head, 4-conv mask head), backbone from the "
                     "weights, all layers trained",
            "norm": dc.norm, "schedule": asdict(sched),
            "stopped_at": min(sched.max_iter, dc.max_iter) if dc.max_iter else sched.max_iter,
            "world_size": rt.world_size, "input": {"min_size_train": list(dc.min_size_train),
                                                   "min_size_test": dc.min_size_test,
                                                   "max_size": dc.max_size, "hflip": 0.5},
            "precise_bn_iters": dc.precise_bn_iters if dc.norm == "sync" else 0,
            "metric": "pycocotools COCOeval (bbox, segm): AP, AP50, AP75, APs, APm, APl",
        },
        "dataset": {"split": data.split, "train_images": len(data.train["images"]),
                    "val_images": len(data.val["images"]), "classes": data.num_classes},
        "results": results, "eval_config": cfg.to_dict()["eval"],
        "environment": report.environment(), "seconds": round(time.perf_counter() - t0, 2),
    }
    rep["files"] = dict(zip(("json", "markdown"),
                            report.write(out, "detection", rep, markdown(rep))))
    return rep


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
            f"{p['schedule']['batch_size']}, norm {p['norm']}.\n\n"
            + report.table(headers, rows))

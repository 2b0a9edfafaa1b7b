"""Classifiers trained on images from the weights, on the one training loop
(:func:`orl_fast.training.engine.fit`), beside the random-init baseline: the two protocols of the
paper that train on augmented images rather than on cached features.

- ``semisup`` (paper Table 3, ``orl-fast eval semisup``): for each label fraction (1% and 10%), a
  seeded per-class subset of the training labels; every layer fine-tuned with a new Linear
  classifier on the pooled res5 (:class:`orl_fast.core.defaults.SemiSupConfig`).
- ``linear-official`` (``orl-fast eval linear-official``): the official linear classification
  protocol: the backbone frozen, one head per layer (Goyal et al. pooling, BatchNorm without
  affine parameters, Linear), trained together on every training label
  (:class:`orl_fast.core.defaults.LinearOfficialConfig`). The quick probe on cached features is
  :mod:`evaluation.probes`.

Every sample's augmentation is drawn from ``sample_seed(eval.seed, epoch, position)`` and the
batches from :class:`loaders.sampling.StepBatchSampler`, so an interrupted run resumes from its
checkpoint (``OUT/<protocol>/<weights>/<labels>/``) into the very same training, and a finished
one is only evaluated again. Test images: Resize 256 + CenterCrop 224 (the protocol's
``resize`` / ``crop``). Metrics: top-1 / top-5
accuracy on single-label sets, mAP (area under the PR curve; 11-point beside it) on multi-label
sets (e.g. VOC07, whose loss is the per-class logistic loss with difficult labels left out).
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from evaluation import backbones, datasets, report
from evaluation.backbones import Weights
from evaluation.datasets import LabelledImages
from evaluation.features import EvalImages, goyal_pool, stages
from evaluation.metrics import classification_metrics
from evaluation.probes import label_loss
from loaders.augment import normalize
from loaders.images import decode_rgb
from loaders.orl_torch import cut
from loaders.sampling import StepBatchSampler, sample_seed
from loaders.torch_loader import make_loader
from orl_fast.core import storage
from orl_fast.core.boxes import random_resized_crop
from orl_fast.core.defaults import IMAGENET_MEAN, IMAGENET_STD, Config
from orl_fast.core.distributed import Runtime, barrier, convert_sync_batchnorm, init_runtime
from orl_fast.training.engine import RunSpec, fit
from orl_fast.training.schedules import step_decay

PROTOCOLS = ("semisup", "linear-official")
# AlexNet's PCA lighting noise of the official pipeline (ImageNet RGB eigenvalues / vectors,
# on images in [0, 1]).
LIGHTING_EIGVAL = np.array([0.2175, 0.0188, 0.0045])
LIGHTING_EIGVEC = np.array([[-0.5675, 0.7192, 0.4009],
                            [-0.5808, -0.0045, -0.8140],
                            [-0.5836, -0.6948, 0.4203]])
STAGE_INDEX = {"conv1": 0, "res2": 1, "res3": 2, "res4": 3, "res5": 4}


def label_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a seeded per-class ``fraction`` of the labelled images.

    Each class gets max(1, round(fraction x its positives)) positives: the classes in order of
    increasing positives, each topped up with images drawn (seeded by (seed, fraction, class))
    among its positives not yet taken. On a single-label set that is exactly the quota of every
    class; on a multi-label set an image counts for all its classes."""
    chosen = np.zeros(len(labels), dtype=bool)
    positives = labels == 1
    code = round(fraction * 1_000_000)
    for c in sorted(range(labels.shape[1]), key=lambda c: (positives[:, c].sum(), c)):
        pool = np.flatnonzero(positives[:, c])
        if not len(pool):
            continue
        need = max(1, round(fraction * len(pool))) - int(chosen[pool].sum())
        free = pool[~chosen[pool]]
        if need > 0:
            rng = np.random.default_rng([seed, code, c])
            chosen[rng.choice(free, min(need, len(free)), replace=False)] = True
    return np.flatnonzero(chosen)


class TrainViews(Dataset):
    """Items (epoch, position) -> (uint8 [3, crop, crop] view, int8 label row, float32 [3]
    lighting offset): RandomResizedCrop (scale 0.08-1, ratio 3/4-4/3, bilinear) and a flip, then
    (``color_jitter``) torchvision's ColorJitter in a random order; the offset is the PCA
    lighting noise to add to the image in [0, 1] (zeros without). Drawn per sample from
    ``sample_seed(seed, epoch, position)``."""

    def __init__(self, images: LabelledImages, crop: int, seed: int,
                 color_jitter: tuple[float, float, float] | None = None,
                 lighting_std: float = 0.0):
        self.images, self.crop, self.seed = images, crop, seed
        self.color_jitter, self.lighting_std = color_jitter, lighting_std

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor,
                                                           torch.Tensor]:
        import torchvision.transforms.v2.functional as F

        epoch, position = item
        rng = np.random.default_rng(sample_seed(self.seed, epoch, position))
        image = decode_rgb(storage.read_bytes(self.images.paths[position]))
        box = random_resized_crop(rng, image.shape[2], image.shape[1], (0.08, 1.0),
                                  (3 / 4, 4 / 3))
        view = cut(image, box, self.crop, "bilinear")
        u = rng.random(4)
        if u[0] < 0.5:
            view = F.horizontal_flip(view)
        if self.color_jitter is not None:
            ops = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation)
            for op in rng.permutation(3):
                strength = self.color_jitter[op]
                if strength > 0:
                    lo = max(0.0, 1 - strength)
                    view = ops[op](view, float(lo + u[1 + op] * (1 + strength - lo)))
        offset = np.zeros(3)
        if self.lighting_std > 0:
            alpha = rng.normal(0.0, self.lighting_std, 3)
            offset = LIGHTING_EIGVEC @ (alpha * LIGHTING_EIGVAL)
        return (view, torch.from_numpy(self.images.labels[position].astype(np.int8)),
                torch.from_numpy(offset.astype(np.float32)))


class Classifier(nn.Module):
    """Semi-supervised fine-tuning: the backbone (pooled res5) and a new Linear classifier."""

    def __init__(self, backbone: nn.Module, dim: int, num_classes: int):
        super().__init__()
        self.backbone, self.fc = backbone, nn.Linear(dim, num_classes)
        nn.init.normal_(self.fc.weight, 0.0, 0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.fc(self.backbone(x))]


class LayerHeads(nn.Module):
    """The official linear protocol: the frozen backbone (always in eval mode) and, per layer,
    Goyal et al. pooling -> BatchNorm (no affine, momentum 0.1) -> Linear."""

    def __init__(self, backbone: nn.Module, layers: tuple[str, ...], num_classes: int,
                 crop: int):
        super().__init__()
        self.backbone, self.layers = backbone.requires_grad_(False), tuple(layers)
        with torch.no_grad():
            maps = stages(backbone.eval(), torch.zeros(1, 3, crop, crop), stem=True)
        self.norms, self.fcs = nn.ModuleList(), nn.ModuleList()
        for name in self.layers:
            pooled = goyal_pool(name, maps[STAGE_INDEX[name]])
            self.norms.append(nn.BatchNorm2d(pooled.shape[1], momentum=0.1, affine=False))
            fc = nn.Linear(pooled[0].numel(), num_classes)
            nn.init.normal_(fc.weight, 0.0, 0.01)
            nn.init.zeros_(fc.bias)
            self.fcs.append(fc)

    def train(self, mode: bool = True) -> LayerHeads:
        super().train(mode)
        self.backbone.eval()  # frozen: its BatchNorm statistics stay the weights'
        return self

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        with torch.no_grad():
            maps = stages(self.backbone, x, stem=True)
        return [fc(norm(goyal_pool(name, maps[STAGE_INDEX[name]])).flatten(1))
                for name, norm, fc in zip(self.layers, self.norms, self.fcs)]


# (base lr, epochs, milestones, gamma, max steps) of a protocol
StepScheduleArgs = tuple[float, int, tuple[int, ...], float, int]


class StepSchedule:
    """The loop's schedule of these protocols: step decay by epoch, no EMA target."""

    def __init__(self, base_lr: float, epochs: int, steps_per_epoch: int,
                 milestones: tuple[int, ...], gamma: float, max_steps: int = 0):
        self.base_lr, self.milestones, self.gamma = base_lr, tuple(milestones), gamma
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = epochs * steps_per_epoch
        self.stop_step = min(self.total_steps, max_steps) if max_steps else self.total_steps

    def lr(self, step: int) -> float:
        return step_decay(step, self.steps_per_epoch, self.base_lr, self.milestones, self.gamma)

    def tau(self, step: int) -> None:
        return None


def build(protocol: str, weights: Weights, num_classes: int, cfg: Config,
          weight_decay: float) -> tuple[nn.Module, torch.optim.SGD, StepScheduleArgs]:
    """The model, its optimiser and the schedule's (lr, epochs, milestones, gamma, max steps)."""
    ec = cfg.eval
    net = weights.build()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ec.seed)  # the new heads: the same on every rank and run
        if protocol == "semisup":
            sc = ec.semisup
            with torch.no_grad():
                dim = net(torch.zeros(1, 3, 64, 64)).shape[1]
            model = Classifier(net, dim, num_classes)
            groups = [{"params": list(model.backbone.parameters())},
                      {"params": list(model.fc.parameters()), "lr_scale": sc.head_lr_mult}]
            opt = torch.optim.SGD(groups, lr=sc.lr, momentum=sc.momentum,
                                  weight_decay=weight_decay)
            return model, opt, (sc.lr, sc.epochs, sc.milestones, sc.gamma, sc.max_steps)
        lc = ec.linear_official
        model = LayerHeads(net, lc.layers, num_classes, lc.crop)
        # (the heads' BatchNorm has no parameter: weight decay applies to the Linears only)
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lc.lr,
                              momentum=lc.momentum, nesterov=lc.nesterov,
                              weight_decay=lc.weight_decay)
        return model, opt, (lc.lr, lc.epochs, lc.milestones, lc.gamma, lc.max_steps)


def train(protocol: str, weights: Weights, images: LabelledImages, cfg: Config, out: str,
          rt: Runtime, weight_decay: float = 0.0, progress: bool = True) -> tuple[nn.Module, dict]:
    """Train one classifier of ``protocol`` on ``images``; resumes from ``out``. Returns the model
    and what ran (batch, steps)."""
    ec = cfg.eval
    pc = ec.semisup if protocol == "semisup" else ec.linear_official
    batch = min(pc.batch_size, len(images)) // rt.world_size * rt.world_size
    if batch == 0:
        raise ValueError(f"{len(images)} training images for {rt.world_size} ranks: too few")
    model, optimizer, (lr, epochs, milestones, gamma, max_steps) = build(
        protocol, weights, images.labels.shape[1], cfg, weight_decay)
    model.to(rt.device)
    if rt.distributed:
        model = convert_sync_batchnorm(model, rt.device).to(rt.device)
    sched = StepSchedule(lr, epochs, len(images) // batch, milestones, gamma, max_steps)
    dataset = TrainViews(images, pc.crop, ec.seed,
                         getattr(pc, "color_jitter", None), getattr(pc, "lighting_std", 0.0))
    single = images.single_label

    def loader_fn(start: int, stop: int):
        sampler = StepBatchSampler(len(dataset), batch, rt.rank, rt.world_size, ec.seed, start,
                                   stop)
        return make_loader(dataset, sampler, ec.num_workers, pin_memory=rt.device.type == "cuda")

    def prepare(b, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        views, labels, offset = (t.to(device, non_blocking=True) for t in b)
        x = views.float() + 255.0 * offset[:, :, None, None]  # lighting, in [0, 255] units
        return normalize(x, IMAGENET_MEAN, IMAGENET_STD), labels

    def forward(net: nn.Module, inputs) -> tuple[torch.Tensor, dict]:
        x, labels = inputs
        losses = [label_loss(logits.float(), labels, single) for logits in net(x)]
        return sum(losses), {f"loss_{i}": v.detach() for i, v in enumerate(losses)}

    run = RunSpec(out, protocol, cfg, batch, pc.log_every_steps, pc.ckpt_every_steps,
                  keep_last=1, precision=ec.precision, tensorboard=False, progress=progress,
                  broadcast_buffers=True, extra={"weights": weights.source})
    fit(model, optimizer, sched, loader_fn, prepare, rt, run, forward)
    barrier(rt)
    return model, {"batch_size": batch, "steps_per_epoch": sched.steps_per_epoch,
                   "total_steps": sched.total_steps, "stopped_at": sched.stop_step}


@torch.no_grad()
def predict(protocol: str, model: nn.Module, images: LabelledImages, cfg: Config,
            device: torch.device) -> list[np.ndarray]:
    """Test logits (images x classes) of every head: Resize 256, CenterCrop 224 (the protocol's
    ``resize`` and ``crop``)."""
    ec = cfg.eval
    pc = ec.semisup if protocol == "semisup" else ec.linear_official
    model.eval()
    loader = DataLoader(EvalImages(images.paths, pc.resize, pc.crop, "center_crop"),
                        batch_size=ec.batch_size, num_workers=ec.num_workers)
    out: list[list[np.ndarray]] = []
    for x in loader:
        logits = model(normalize(x.to(device), IMAGENET_MEAN, IMAGENET_STD))
        out.append([t.float().cpu().numpy() for t in logits])
    return [np.concatenate(head) for head in zip(*out)]


def metrics(scores: np.ndarray, labels: np.ndarray, classes: tuple[str, ...]) -> dict:
    """classification_metrics (AP per class, mAP; top-1 on single-label sets) and top-5."""
    out = classification_metrics(scores, labels, classes)
    if "top1" in out:
        k = min(5, scores.shape[1])
        truth = (labels == 1).argmax(1)
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        out["top5"] = float((top == truth[:, None]).any(1).mean() * 100)
    return out


def run(protocol: str, cfg: Config, data: str, train_split: str, test_split: str | None,
        out: str, progress: bool = True) -> dict:
    """``protocol`` for ``cfg.ckpt`` and the random-init baseline; writes ``OUT/<protocol>.json|md``
    (rank 0). Works under torchrun (DDP)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol {protocol!r}: expected one of {PROTOCOLS}")
    ec = cfg.eval
    rt = init_runtime(ec.device)
    t0 = time.perf_counter()
    train_set, test_set, split = datasets.train_test(data, train_split, test_split,
                                                     ec.holdout_frac, ec.seed)
    if protocol == "semisup":
        plans = [(f"{100 * f:g}%", label_subset(train_set.labels, f, ec.seed), wd)
                 for f, wd in zip(ec.semisup.fractions, ec.semisup.weight_decay)]
    else:
        plans = [("100%", np.arange(len(train_set)), ec.linear_official.weight_decay)]
    results = {}
    for w in backbones.with_baseline(cfg.ckpt or backbones.RANDOM, cfg.model.backbone, ec.seed):
        runs = {}
        for name, index, wd in plans:
            t_run = time.perf_counter()
            subset = train_set.subset(index, f"{train_set.source} ({name} of the labels)")
            run_dir = storage.join(out, protocol, w.name.replace(" ", "-"),
                                   name.replace("%", "pct"))
            model, ran = train(protocol, w, subset, cfg, run_dir, rt, wd, progress)
            if not rt.is_main:
                continue
            heads = predict(protocol, model, test_set, cfg, rt.device)
            names = (ec.linear_official.layers if protocol == "linear-official" else ("res5",))
            per_layer = {n: metrics(s, test_set.labels, test_set.classes)
                         for n, s in zip(names, heads)}
            best = max(per_layer, key=lambda n: _headline(per_layer[n]))
            runs[name] = {"images": len(subset), "positives": subset.summary()["positives"],
                          "weight_decay": wd, **ran, "run_dir": run_dir, "layers": per_layer,
                          "best_layer": best, "seconds": round(time.perf_counter() - t_run, 2)}
            if progress:
                print(f"[eval {protocol}] {w.name}, {name} of the labels: best {best} "
                      f"{_headline_text(per_layer[best])}")
        results[w.name] = {"weights": {"source": w.source, "arch": w.arch, "stage": w.stage,
                                       "digest": w.digest}, "runs": runs}
    barrier(rt)
    if not rt.is_main:
        return {}
    rep = {"task": protocol, "protocol": protocol_of(protocol, cfg),
           "dataset": {"split": split, "train": train_set.summary(), "test": test_set.summary()},
           "results": results, "eval_config": cfg.to_dict()["eval"],
           "environment": report.environment(), "seconds": round(time.perf_counter() - t0, 2)}
    rep["files"] = dict(zip(("json", "markdown"), report.write(out, protocol, rep, markdown(rep))))
    return rep


def protocol_of(protocol: str, cfg: Config) -> dict:
    ec = cfg.eval
    if protocol == "semisup":
        sc = ec.semisup
        return {"task": "semi-supervised fine-tuning (all layers)",
                "labels": {f"{100 * f:g}%": {"weight_decay": wd} for f, wd in
                           zip(sc.fractions, sc.weight_decay)},
                "subset": f"per class max(1, round(fraction x positives)), seed {ec.seed}",
                "model": "the backbone, all layers trained, + Linear on the pooled res5 "
                         "(normal init, std 0.01)",
                "optimiser": f"SGD momentum {sc.momentum}, batch {sc.batch_size}, lr {sc.lr} "
                             f"(classifier x {sc.head_lr_mult:g}), x {sc.gamma} at epochs "
                             f"{list(sc.milestones)}, {sc.epochs} epochs",
                "augmentation": f"RandomResizedCrop {sc.crop} + flip; test Resize 256 + "
                                "CenterCrop 224",
                "metric": _metric_text()}
    lc = ec.linear_official
    return {"task": "linear classification, official protocol (frozen backbone, a head per "
                    "layer)",
            "layers": list(lc.layers),
            "heads": "Goyal et al. average pooling -> BatchNorm (no affine) -> Linear (normal "
                     "init, std 0.01), trained together (sum of the losses)",
            "optimiser": f"SGD {'Nesterov ' if lc.nesterov else ''}momentum {lc.momentum}, lr "
                         f"{lc.lr}, weight decay {lc.weight_decay}, batch {lc.batch_size}, x "
                         f"{lc.gamma} at epochs {list(lc.milestones)}, {lc.epochs} epochs",
            "augmentation": f"RandomResizedCrop {lc.crop} + flip + ColorJitter"
                            f"{tuple(lc.color_jitter)} + PCA lighting (std {lc.lighting_std}); "
                            "test Resize 256 + CenterCrop 224",
            "metric": _metric_text() + "; the best layer is the headline"}


def _metric_text() -> str:
    return ("top-1 / top-5 accuracy (single-label sets) or mAP (area under the PR curve, "
            "11-point beside it; multi-label sets, difficult labels ignored)")


def _headline(m: dict) -> float:
    return m["top1"] if "top1" in m else m["mAP"]


def _headline_text(m: dict) -> str:
    if "top1" in m:
        return f"top-1 {report.fmt(m['top1'])}, top-5 {report.fmt(m['top5'])}"
    return f"mAP {report.fmt(m['mAP'])} (11-point {report.fmt(m['mAP_11point'])})"


def markdown(rep: dict) -> str:
    data = rep["dataset"]
    lines = [f"# {rep['protocol']['task']}\n", f"{data['split']}.\n"]
    rows = []
    for name, res in rep["results"].items():
        for labels, r in res["runs"].items():
            for layer, m in r["layers"].items():
                rows.append([name, labels, str(r["images"]), layer + (" (best)" if layer ==
                             r["best_layer"] and len(r["layers"]) > 1 else ""),
                             _headline_text(m), str(r["stopped_at"])])
    lines.append(report.table(["weights", "labels", "images", "layer", "test", "steps"], rows))
    return "\n".join(lines)

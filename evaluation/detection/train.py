"""Fine-tuning of the detector on the one training loop (:func:`orl_fast.training.engine.fit`),
then detectron2's precise BatchNorm statistics."""

from __future__ import annotations

import torch
from torch import nn
from tqdm import tqdm

from evaluation.backbones import Weights
from evaluation.detection.data import CocoInstances, DetectionData, collate
from evaluation.detection.model import build_model, make_optimizer
from evaluation.detection.schedule import Schedule, schedule, stop_iter
from loaders.sampling import StepBatchSampler, sample_seed
from loaders.torch_loader import make_loader
from orl_fast.core.config import flatten
from orl_fast.core.defaults import Config, DetectionConfig
from orl_fast.core.distributed import Runtime, barrier, convert_sync_batchnorm
from orl_fast.training.engine import RunSpec, autocast_for, fit

# eval.detection fields a resumed fine-tuning may change: where it stops, its log / save cadence
# and the BN re-estimation that follows it.
RESUME_MAY_CHANGE = ("max_iter", "ckpt_every_iters", "log_every_iters", "precise_bn_iters")


def train(weights: Weights, data: DetectionData, cfg: Config, out: str, rt: Runtime,
          progress: bool = True) -> nn.Module:
    """Fine-tune a detector from ``weights``; resumes from ``out`` if it holds a checkpoint."""
    dc, ec = cfg.eval.detection, cfg.eval
    sched, stop = schedule(dc), stop_iter(dc)
    torch.manual_seed(ec.seed)  # the new heads' initialisation: the same on every rank and run
    model = build_model(weights, data.num_classes, dc).to(rt.device)
    if rt.distributed and dc.norm == "sync":
        model = convert_sync_batchnorm(model, rt.device).to(rt.device)
    optimizer = make_optimizer(model, dc, sched.base_lr)
    dataset = CocoInstances(data.train, data.train_root, dc.masks, train=True, seed=ec.seed)

    def loader_fn(start: int, stop: int):
        sampler = StepBatchSampler(len(dataset), dc.batch_size, rt.rank, rt.world_size, ec.seed,
                                   start, stop)
        return make_loader(dataset, sampler, ec.num_workers, pin_memory=rt.device.type == "cuda",
                           collate_fn=collate)

    def prepare(batch, device: torch.device) -> tuple[list, list]:
        images, targets = batch
        return ([im.to(device, non_blocking=True) for im in images],
                [_to(t, device) for t in targets])

    def forward(detector: nn.Module, inputs) -> tuple[torch.Tensor, dict]:
        losses = detector(*inputs)
        return sum(losses.values()), losses

    def on_start(it: int) -> None:
        # The RPN / RoI samplers draw from torch's RNG: seeded by (seed, rank, first iteration).
        torch.manual_seed(sample_seed(ec.seed, rt.rank, it))

    # OUT/metrics.jsonl ("iter"), appended in place (local OUT) or staged and uploaded. A
    # resume continues only the fine-tuning of the same weights with the same recipe.
    recipe = {k: v for k, v in flatten(cfg.to_dict()["eval"]["detection"],
                                       "eval.detection.").items()
              if k.rsplit(".", 1)[1] not in RESUME_MAY_CHANGE}
    identity = {"stage": "detection", "weights": weights.digest, "eval.seed": ec.seed,
                "eval.precision": ec.precision, **recipe}
    run = RunSpec(out, "detection", cfg, dc.batch_size, dc.log_every_iters, dc.ckpt_every_iters,
                  keep_last=1, precision=ec.precision, log_key="iter", tensorboard=False,
                  progress=progress, broadcast_buffers=True, extra={"weights": weights.source},
                  identity=identity)
    fit(model, optimizer, FitSchedule(sched, stop), loader_fn, prepare, rt, run, forward,
        on_start)
    barrier(rt)
    if dc.precise_bn_iters and dc.norm == "sync":
        precise_bn(model, dataset, dc, rt, autocast_for(ec.precision, rt.device),
                   progress and rt.is_main)
    return model


class FitSchedule:
    """The detection schedule as the training loop reads it: lr per iteration, no EMA target,
    no epochs, a stop at ``eval.detection.max_iter`` (the lr schedule unchanged)."""

    steps_per_epoch = 0

    def __init__(self, sched: Schedule, stop: int):
        self.sched, self.total_steps, self.stop_step = sched, sched.max_iter, stop

    def lr(self, it: int) -> float:
        return self.sched.lr(it)

    def tau(self, it: int) -> None:
        return None


def _to(target: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v
            for k, v in target.items()}


@torch.no_grad()
def precise_bn(model: nn.Module, dataset: CocoInstances, dc: DetectionConfig, rt: Runtime,
               autocast, progress: bool = False) -> None:
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
        batches = make_loader(dataset, sampler, 0, False, collate_fn=collate)
        for images, targets in tqdm(batches, desc="precise BN", unit="batch",
                                    disable=not progress, dynamic_ncols=True):
            with autocast:
                model([im.to(rt.device) for im in images], [_to(t, rt.device) for t in targets])
    for m, momentum in zip(bns, saved):
        m.momentum = momentum

"""The training loop shared by Stage 1 (BYOL) and Stage 3 (ORL).

One optimiser step, readable in one screen (:func:`fit`): set lr -> forward under autocast ->
backward -> SGD step -> EMA target update with tau(step) -> log / checkpoint. Data order and
augmentations are pure functions of (seed, step), so resuming from a checkpoint continues the very
same run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from orl_fast import checkpoint, storage
from orl_fast.config import Config, OptimConfig
from orl_fast.distributed import Runtime, convert_sync_batchnorm, mean_across_ranks
from orl_fast.models import online_target_distance
from orl_fast.runlog import RunLog
from orl_fast.schedules import ema_tau, learning_rate


def make_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.SGD:
    """SGD over trainable parameters; BN parameters and biases optionally without weight decay."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            is_norm = isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm,
                                          nn.LayerNorm))
            (no_decay if cfg.exclude_bn_bias_from_wd and (is_norm or name == "bias")
             else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return torch.optim.SGD(groups, lr=cfg.base_lr, momentum=cfg.momentum)


class Schedule:
    """Step counts and per-step lr / tau of a run."""

    def __init__(self, cfg: Config, num_images: int):
        t = cfg.train
        self.steps_per_epoch = num_images // t.batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(f"train.batch_size={t.batch_size} is larger than the dataset "
                             f"({num_images} images); lower it")
        self.total_steps = t.epochs * self.steps_per_epoch
        self.stop_step = min(self.total_steps, t.max_steps) if t.max_steps else self.total_steps
        self.base_lr = cfg.optim.base_lr * t.batch_size / cfg.optim.lr_base_batch
        self.warmup_steps = round(cfg.optim.warmup_epochs * self.steps_per_epoch)
        self._optim = cfg.optim
        self._tau_base = t.tau_base

    def lr(self, step: int) -> float:
        o = self._optim
        return learning_rate(step, self.total_steps, self.base_lr, self.warmup_steps,
                             o.warmup_start_factor, o.min_lr)

    def tau(self, step: int) -> float:
        return ema_tau(step, self.total_steps, self._tau_base)


def train_step(train_model: nn.Module, model: nn.Module, optimizer: torch.optim.Optimizer,
               inputs: tuple, lr: float, tau: float, autocast,
               diagnostics: bool = False) -> tuple[torch.Tensor, dict]:
    """One optimiser step: lr -> forward (autocast) -> backward -> SGD -> EMA target update.

    ``train_model`` is what runs the forward (DDP / compiled wrapper of ``model``); with
    ``diagnostics`` the model also returns its collapse monitors (on logging steps only).
    """
    for group in optimizer.param_groups:
        group["lr"] = lr
    with autocast:
        loss, metrics = train_model(*inputs, diagnostics=diagnostics)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    model.update_target(tau)
    return loss, metrics


def cpu_bf16_supported() -> bool:
    """The CPU has native bf16 matrix instructions (AVX512-BF16 / AMX) that oneDNN uses: bf16
    autocast there halves the time of a training step; without them it is emulated and slow."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_for(precision: str, device: torch.device):
    """bf16 autocast on CUDA, and on CPUs with native bf16 (elsewhere the run is fp32)."""
    enabled = precision == "bf16" and (device.type == "cuda" or (device.type == "cpu"
                                                                  and cpu_bf16_supported()))
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def fit(cfg: Config, model: nn.Module, num_images: int,
        loader_fn: Callable[[int, int], Iterable[Any]],
        prepare: Callable[[Any, torch.device], tuple], rt: Runtime, stage: str) -> str:
    """Train ``model`` (``model(*inputs) -> (loss, metrics)``, ``model.update_target(tau)``).

    ``loader_fn(start_step, stop_step)`` yields the batches of those steps for this rank and
    ``prepare(batch, device)`` turns one into model inputs. Resumes from ``cfg.out`` when it
    holds a checkpoint. Returns the path of the last checkpoint.
    """
    t = cfg.train
    sched = Schedule(cfg, num_images)
    dtype = torch.float64 if t.precision == "fp64" else torch.float32
    model.to(rt.device, dtype)
    if t.channels_last and rt.device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    if rt.distributed and cfg.model.sync_bn:
        model = convert_sync_batchnorm(model, rt.device).to(rt.device)
    optimizer = make_optimizer(model, cfg.optim)

    step = 0
    resumed = checkpoint.resolve(cfg.out) if storage.exists(checkpoint.ckpt_dir(cfg.out)) else None
    if resumed:
        state = checkpoint.load(resumed, map_location=rt.device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        checkpoint.set_rng_state(state["rng"])
        step = state["step"]
        if rt.is_main:
            print(f"[{stage}] resumed from {resumed} at step {step}/{sched.stop_step}")

    train_model = model
    if rt.distributed:
        train_model = DistributedDataParallel(
            model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None,
            broadcast_buffers=False)
    if t.compile:
        train_model = torch.compile(train_model)
    autocast = autocast_for(t.precision, rt.device)

    # Scalars go to TensorBoard (OUT/tb) and OUT/metrics.jsonl (staged and uploaded when OUT is
    # remote: see RunLog).
    log = RunLog(cfg.out, key="step", tb_prefix=stage, resumed_at=step, enabled=rt.is_main)
    bar = tqdm(total=sched.stop_step, initial=step, desc=stage, unit="step",
               disable=not rt.is_main, dynamic_ncols=True)
    last_ckpt = resumed or ""

    def save(at_step: int) -> str:
        payload = {
            "stage": stage, "step": at_step, "epoch": at_step / sched.steps_per_epoch,
            "total_steps": sched.total_steps, "config": cfg.to_dict(), "config_hash": cfg.hash(),
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "rng": checkpoint.rng_state(),
        }
        return checkpoint.save(cfg.out, at_step, payload, t.keep_last) if rt.is_main else ""

    model.train()
    try:
        window_start, window_images, data_wait = time.perf_counter(), 0, 0.0
        fetch_start = time.perf_counter()
        for batch in loader_fn(step, sched.stop_step):
            inputs = tuple(x.to(dtype) if x.is_floating_point() else x
                           for x in prepare(batch, rt.device))
            data_wait += time.perf_counter() - fetch_start
            lr, tau = sched.lr(step), sched.tau(step)
            logging = (step + 1) % t.log_every_steps == 0 or step + 1 == sched.stop_step
            loss, metrics = train_step(train_model, model, optimizer, inputs, lr, tau, autocast,
                                       diagnostics=logging)
            step += 1
            window_images += t.batch_size
            bar.update(1)

            if logging:
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"[{stage}] loss is {loss.item()} at step {step}")
                scalars = {"loss": loss.item(), **{k: float(v) for k, v in metrics.items()},
                           "online_target_dist": online_target_distance(model)}
                scalars = mean_across_ranks(scalars, rt)
                elapsed = time.perf_counter() - window_start
                scalars.update(lr=lr, tau=tau, img_per_s=window_images / elapsed,
                               data_wait_frac=data_wait / elapsed)
                log.log(step, scalars)
                if rt.is_main:
                    bar.set_postfix(loss=f"{scalars['loss']:.4f}",
                                    img_s=f"{scalars['img_per_s']:.0f}")
                window_start, window_images, data_wait = time.perf_counter(), 0, 0.0

            if (step % t.ckpt_every_steps == 0 or step % sched.steps_per_epoch == 0
                    or step == sched.stop_step):
                last_ckpt = save(step) or last_ckpt
                log.sync()  # a remote OUT gets the log up to this checkpoint
            fetch_start = time.perf_counter()

    finally:
        bar.close()
        log.close()
    return last_ckpt

"""The training loop of every run: Stage 1 (BYOL), Stage 3 (ORL) and detection fine-tuning.

One optimiser step, readable in one screen (:func:`fit`): set lr(step) -> forward under autocast
-> backward -> SGD step -> EMA target update with tau(step) when the schedule has one -> log /
checkpoint. Resuming, autocast, DDP, checkpoints and logs are done here once. Data order and
augmentations are pure functions of (seed, step), so resuming from a checkpoint continues the very
same run.

A resume checks what it resumes (:func:`resume_state`): every checkpoint records the run's
identity (its config without the fields of :data:`RESUME_MAY_CHANGE`, and its inputs: the SHA-256
of the shards' and pairs' ``index.json``, which lists every shard with its key range and bytes,
so the same data moved elsewhere is the same input); a run whose identity differs is refused,
naming the fields, unless
``train.resume_anyway`` (``--resume-anyway``) says to continue it with the new config; a checkpoint
that does not fit the model is refused either way.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from orl_fast.core import checkpoint, storage
from orl_fast.core.config import ConfigError, flatten
from orl_fast.core.defaults import Config, OptimConfig
from orl_fast.core.distributed import Runtime, convert_sync_batchnorm, mean_across_ranks
from orl_fast.core.errors import InputError
from orl_fast.core.models import online_target_distance
from orl_fast.core.runlog import RunLog
from orl_fast.training.lars import LARS
from orl_fast.training.schedules import ema_tau, learning_rate


def make_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """SGD over trainable parameters; BN parameters and biases optionally without weight decay.
    ``optim.optimizer=lars``: :class:`~orl_fast.training.lars.LARS` over them (its own rule for
    BN parameters and biases)."""
    if cfg.optimizer == "lars":
        return LARS([p for p in model.parameters() if p.requires_grad], lr=cfg.base_lr,
                    weight_decay=cfg.weight_decay, momentum=cfg.momentum,
                    trust_coefficient=cfg.lars_trust)
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


class LoopSchedule(Protocol):
    """What :func:`fit` asks of a schedule: its step counts, lr(step) and, for a run with an EMA
    target, tau(step) (None: no target update)."""

    total_steps: int   # the schedule's length (lr and tau span it)
    stop_step: int     # where this run stops (<= total_steps)
    steps_per_epoch: int  # a checkpoint at the end of every epoch (0: no epochs)

    def lr(self, step: int) -> float: ...

    def tau(self, step: int) -> float | None: ...


class Schedule:
    """Step counts and per-step lr / tau of a Stage 1 or Stage 3 run."""

    def __init__(self, cfg: Config, num_images: int):
        t = cfg.train
        self.steps_per_epoch = num_images // t.batch_size
        if self.steps_per_epoch == 0:
            raise ConfigError(f"train.batch_size: {t.batch_size} is larger than the data set "
                              f"({num_images} images in data={cfg.data}); lower it")
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
               inputs: Any, lr: float, tau: float | None, autocast,
               forward: Callable[..., tuple[torch.Tensor, dict]] | None = None,
               diagnostics: bool = False) -> tuple[torch.Tensor, dict]:
    """One optimiser step: lr -> forward (autocast) -> backward -> SGD -> EMA target update.

    ``train_model`` is what runs the forward (DDP / compiled wrapper of ``model``);
    ``forward(train_model, inputs)`` returns (loss, metrics) (default :func:`call`); with
    ``diagnostics`` it is called with ``diagnostics=True`` and adds the model's monitors. A
    parameter group with an ``lr_scale`` gets lr x that (e.g. a new classifier's larger lr).
    """
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    forward = forward or call
    with autocast:
        loss, metrics = (forward(train_model, inputs, diagnostics=True) if diagnostics
                         else forward(train_model, inputs))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if tau is not None:
        model.update_target(tau)
    return loss, metrics


def cpu_bf16_supported() -> bool:
    """The CPU has native bf16 matrix instructions (AVX512-BF16 or AMX): bf16 autocast there
    halves the time of a training step. oneDNN also reports bf16 "supported" on plain AVX-512,
    where it is emulated and a step takes 2.6x as long as in fp32, so that is not asked."""
    cpu = torch.cpu
    return any(bool(getattr(cpu, name, lambda: False)())
               for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def autocast_for(precision: str, device: torch.device):
    """bf16 autocast on CUDA, and on CPUs with native bf16 (elsewhere the run is fp32)."""
    enabled = precision == "bf16" and (device.type == "cuda" or (device.type == "cpu"
                                                                  and cpu_bf16_supported()))
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


@dataclass
class RunSpec:
    """A run as the loop sees it, besides its model, optimiser, schedule and data."""

    out: str              # checkpoints, metrics.jsonl (and tb/) go here; resumed from here
    stage: str            # the checkpoints' "stage", the TensorBoard prefix, the progress label
    config: Config        # saved in every checkpoint
    batch_size: int       # global batch, for images/s
    log_every: int
    ckpt_every: int
    keep_last: int
    precision: str = "fp32"  # "bf16": autocast on CUDA (and CPUs with native bf16)
    compile: bool = False
    log_key: str = "step"    # the step's name in metrics.jsonl
    tensorboard: bool = True
    progress: bool = True
    broadcast_buffers: bool = False  # DDP: SyncBN keeps buffers equal; True for other BNs
    extra: dict = field(default_factory=dict)  # more entries of every checkpoint
    # Log the model's collapse monitors (forward(..., diagnostics=True) on logging steps) and
    # the online-target distance (models with an EMA target).
    monitors: bool = False
    # What a checkpoint of this run must match to be resumed (see resume_state); None: any.
    identity: dict | None = None
    resume_anyway: bool = False

    @classmethod
    def of_stage(cls, cfg: Config, stage: str, inputs: dict | None = None) -> RunSpec:
        """A Stage 1 / Stage 3 run; ``inputs``: the digests of its input paths (data, pairs,
        ckpt), which stand for those paths in its identity (default: the absolute paths)."""
        t, config = cfg.train, cfg.to_dict()
        return cls(cfg.out, stage, cfg, t.batch_size, t.log_every_steps, t.ckpt_every_steps,
                   t.keep_last, t.precision, t.compile, monitors=True,
                   identity=run_identity(stage, config, inputs or input_paths(config)),
                   resume_anyway=t.resume_anyway)


# What a resumed Stage 1 / Stage 3 run may change; every other field must be what its checkpoint
# was trained with. Exact names, or section prefixes ending in ".".
RESUME_MAY_CHANGE = (
    "out",                         # the run's directory, wherever it is now
    "train.epochs",                # train longer: the schedule is recomputed over the new length
    "train.max_steps",             # where this invocation stops (schedules span all epochs)
    "train.log_every_steps", "train.ckpt_every_steps", "train.keep_last",  # log / save cadence
    # Where and how the same steps run: data order and augmentations are pure functions of
    # (seed, step), whatever the workers, device, loader or number of ranks (the batch is global).
    "train.num_workers", "train.prefetch_factor", "train.device", "train.compile",
    "train.channels_last", "train.deterministic", "train.launcher", "train.ray_workers",
    "train.ray_cpus_per_worker", "train.ray_gpus_per_worker", "train.ray_address",
    "train.ray_max_failures", "orl.loader",
    "train.resume_anyway",         # the switch itself
    "ingest.", "eval.",            # other steps' settings
    "mine.",                       # Stage 2's: the pairs it made are compared by content
)
# The input paths of a run: compared by the digests the stage gives (RunSpec.of_stage).
INPUT_FIELDS = ("data", "pairs", "ckpt")


def _may_change(name: str) -> bool:
    return any(name == f or (f.endswith(".") and name.startswith(f)) for f in RESUME_MAY_CHANGE)


def run_identity(stage: str, config: dict, inputs: dict) -> dict:
    """What a checkpoint of a ``stage`` run with ``config`` (a to_dict) and ``inputs`` (input
    field -> content digest or path) stands for: the fields that may not change, flattened."""
    ident = {k: v for k, v in flatten(config).items()
             if not _may_change(k) and k not in INPUT_FIELDS}
    return {"stage": stage, **ident, **inputs}


def input_paths(config: dict) -> dict:
    """The input fields as absolute paths: the identity of checkpoints that carry none."""
    return {k: os.path.abspath(v) if v and "://" not in v and v != "random" else v
            for k, v in config.items() if k in INPUT_FIELDS}


def resume_state(run: RunSpec, model: nn.Module) -> dict | None:
    """The checkpoint of ``run.out`` to resume from (on the CPU), checked; None for a new run.

    ConfigError naming the fields when the checkpoint's run differs from ``run`` in anything but
    :data:`RESUME_MAY_CHANGE` (unless ``run.resume_anyway``); InputError when its weights do not
    fit ``model`` (whatever the switch)."""
    path = checkpoint.resolve(run.out) if storage.exists(checkpoint.ckpt_dir(run.out)) else None
    if path is None:
        return None
    state = checkpoint.load(path)
    if run.identity is not None and not run.resume_anyway:
        old, new = state.get("identity"), run.identity
        if old is None and state.get("stage") in ("stage1", "stage3"):  # an earlier version's
            old = run_identity(state["stage"], state["config"], input_paths(state["config"]))
            new = run_identity(run.stage, run.config.to_dict(),
                               input_paths(run.config.to_dict()))
        if old is not None:
            differ = sorted(k for k in old.keys() & new.keys() if old[k] != new[k])
            if differ:
                raise ConfigError(_refusal(run, state, differ, old, new))
    _check_fits(path, state["model"], model)
    return state


def _refusal(run: RunSpec, state: dict, differ: list[str], old: dict, new: dict) -> str:
    def show(v: Any) -> str:
        text = str(v)
        return text[:12] + "..." if len(text) > 40 else text

    changes = "; ".join(f"{k}: {show(old[k])} -> {show(new[k])}" for k in differ[:4])
    more = f"; {len(differ) - 4} more" if len(differ) > 4 else ""
    return (f"out: {run.out} holds a {state.get('stage', '?')} run at step {state.get('step')} "
            f"that differs in {', '.join(differ)} ({changes}{more}): use another out, or "
            "--resume-anyway (train.resume_anyway=true) to continue it with this config")


def _check_fits(path: str, saved: dict, model: nn.Module) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in saved]
    unexpected = [k for k in saved if k not in own]
    shapes = [k for k in own if k in saved and tuple(saved[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = [f"{len(v)} {what}, e.g. {v[0]}" for v, what in
                 ((missing, "weights missing"), (unexpected, "unexpected weights"),
                  (shapes, "of other shapes")) if v]
        raise InputError(f"out: {path}: the checkpoint does not fit this model "
                         f"({'; '.join(parts)})")


def setup_model(cfg: Config, model: nn.Module, rt: Runtime) -> tuple[nn.Module, torch.optim.SGD]:
    """A stage's model on the device (dtype of ``train.precision``, channels_last on CUDA, SyncBN
    when distributed) and its optimiser."""
    t = cfg.train
    model.to(rt.device, dtype_of(t.precision))
    if t.channels_last and rt.device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    if rt.distributed and cfg.model.sync_bn:
        model = convert_sync_batchnorm(model, rt.device).to(rt.device)
    return model, make_optimizer(model, cfg.optim)


def dtype_of(precision: str) -> torch.dtype:
    """The parameters' dtype: fp64 for numerical verification, else fp32 (bf16 is autocast)."""
    return torch.float64 if precision == "fp64" else torch.float32


def cast(inputs: Any, dtype: torch.dtype) -> Any:
    """Floating tensors of (nested tuples, lists, dicts of) model inputs in ``dtype``."""
    if torch.is_tensor(inputs):
        return inputs.to(dtype) if inputs.is_floating_point() else inputs
    if isinstance(inputs, dict):
        return {k: cast(v, dtype) for k, v in inputs.items()}
    if isinstance(inputs, (list, tuple)):
        return type(inputs)(cast(v, dtype) for v in inputs)
    return inputs


def call(model: nn.Module, inputs: Any, **kwargs: Any) -> tuple[torch.Tensor, dict]:
    """``model(**inputs)`` for a dict of named inputs, else ``model(*inputs)``."""
    return model(**inputs, **kwargs) if isinstance(inputs, dict) else model(*inputs, **kwargs)


def fit(model: nn.Module, optimizer: torch.optim.Optimizer, sched: LoopSchedule,
        loader_fn: Callable[[int, int], Iterable[Any]],
        prepare: Callable[[Any, torch.device], Any], rt: Runtime, run: RunSpec,
        forward: Callable[[nn.Module, Any], tuple[torch.Tensor, dict]] = call,
        on_start: Callable[[int], None] | None = None, resume: dict | None = None) -> str:
    """Train ``model`` (placed on ``rt.device``) from ``run.out``'s checkpoint, if any.

    ``loader_fn(start_step, stop_step)`` yields the batches of those steps for this rank,
    ``prepare(batch, device)`` turns one into model inputs and ``forward(model, inputs)`` returns
    (loss, metrics) (default: the model called with them). ``model.update_target(tau)`` runs after
    every step whose ``sched.tau`` is not None. ``on_start(step)`` runs once the resume point is
    known. ``resume``: the checkpoint :func:`resume_state` gave the caller (else it is looked
    up and checked here). Returns the path of the last checkpoint.
    """
    dtype = next(model.parameters()).dtype
    step = 0
    state = resume if resume is not None else resume_state(run, model)
    resumed = checkpoint.resolve(run.out) if state is not None else None
    if state is not None:
        model.load_state_dict(state["model"])
        try:
            optimizer.load_state_dict(state["optimizer"])
        except ValueError as e:  # other parameter groups (another optim config, resumed anyway)
            raise InputError(f"out: {resumed}: the optimiser state does not fit this run ({e})"
                             ) from None
        checkpoint.set_rng_state(state["rng"])
        step = state["step"]
        if rt.is_main and run.progress:
            note = "" if step < sched.stop_step else " (nothing left to train)"
            print(f"[{run.stage}] resumed from {resumed} at step {step}/{sched.stop_step}{note}")
    if on_start is not None:
        on_start(step)

    train_model = model
    if rt.distributed:
        train_model = DistributedDataParallel(
            model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None,
            broadcast_buffers=run.broadcast_buffers)
    if run.compile:
        train_model = torch.compile(train_model)
    autocast = autocast_for(run.precision, rt.device)

    # Scalars go to OUT/metrics.jsonl and TensorBoard (OUT/tb) (staged and uploaded when OUT is
    # remote: see RunLog).
    log = RunLog(run.out, key=run.log_key, tb_prefix=run.stage if run.tensorboard else None,
                 resumed_at=step, enabled=rt.is_main)
    bar = tqdm(total=sched.stop_step, initial=step, desc=run.stage, unit="step",
               disable=not (rt.is_main and run.progress), dynamic_ncols=True)
    last_ckpt = resumed or ""

    def save(at_step: int) -> str:
        payload = {
            "stage": run.stage, "step": at_step, "total_steps": sched.total_steps,
            "config": run.config.to_dict(), "config_hash": run.config.hash(),
            **({} if run.identity is None else {"identity": run.identity}),
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "rng": checkpoint.rng_state(), **run.extra,
        }
        if sched.steps_per_epoch:
            payload["epoch"] = at_step / sched.steps_per_epoch
        return checkpoint.save(run.out, at_step, payload, run.keep_last) if rt.is_main else ""

    model.train()
    try:
        window_start, window_images, data_wait = time.perf_counter(), 0, 0.0
        fetch_start = time.perf_counter()
        for batch in loader_fn(step, sched.stop_step):
            inputs = cast(prepare(batch, rt.device), dtype)
            data_wait += time.perf_counter() - fetch_start
            lr, tau = sched.lr(step), sched.tau(step)
            logging = (step + 1) % run.log_every == 0 or step + 1 == sched.stop_step
            loss, metrics = train_step(train_model, model, optimizer, inputs, lr, tau, autocast,
                                       forward, diagnostics=logging and run.monitors)
            step += 1
            window_images += run.batch_size
            bar.update(1)

            if logging:
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"[{run.stage}] loss is {loss.item()} at step {step}")
                scalars = {"loss": loss.item(), **{k: float(v.detach() if torch.is_tensor(v) else v)
                                                   for k, v in metrics.items()}}
                if run.monitors and tau is not None:
                    scalars["online_target_dist"] = online_target_distance(model)
                scalars = mean_across_ranks(scalars, rt)
                elapsed = time.perf_counter() - window_start
                scalars.update(lr=lr, **({} if tau is None else {"tau": tau}),
                               img_per_s=window_images / elapsed,
                               data_wait_frac=data_wait / elapsed)
                log.log(step, scalars)
                if rt.is_main:
                    bar.set_postfix(loss=f"{scalars['loss']:.4f}",
                                    img_s=f"{scalars['img_per_s']:.0f}")
                window_start, window_images, data_wait = time.perf_counter(), 0, 0.0

            if (step % run.ckpt_every == 0 or step == sched.stop_step
                    or (sched.steps_per_epoch and step % sched.steps_per_epoch == 0)):
                last_ckpt = save(step) or last_ckpt
                log.sync()  # a remote OUT gets the log up to this checkpoint
            fetch_start = time.perf_counter()

    finally:
        bar.close()
        log.close()
    return last_ckpt

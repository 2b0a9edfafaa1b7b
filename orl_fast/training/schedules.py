"""Per-step schedules: linear warm-up + cosine learning rate, step decay, and BYOL's cosine EMA
rate."""

from __future__ import annotations

import math


def learning_rate(step: int, total_steps: int, base_lr: float, warmup_steps: int,
                  warmup_start_factor: float = 1e-4, min_lr: float = 0.0) -> float:
    """lr at optimiser step ``step`` (0-based): linear warm-up, then cosine decay to ``min_lr``.

    The cosine runs over the whole schedule (as OpenSelfSup's CosineAnnealing with warm-up), and
    the warm-up scales the cosine value from ``warmup_start_factor`` to 1 over ``warmup_steps``.
    """
    progress = min(step / max(total_steps, 1), 1.0)
    lr = min_lr + (base_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
    if step < warmup_steps:
        k = (1 - step / warmup_steps) * (1 - warmup_start_factor)
        lr = lr * (1 - k)
    return lr


def ema_tau(step: int, total_steps: int, tau_base: float) -> float:
    """BYOL: tau_k = 1 - (1 - tau_base) * (cos(pi k / K) + 1) / 2."""
    progress = min(step / max(total_steps, 1), 1.0)
    return 1 - (1 - tau_base) * (math.cos(math.pi * progress) + 1) / 2


def step_decay(step: int, steps_per_epoch: int, base_lr: float, milestones: tuple[int, ...],
               gamma: float) -> float:
    """lr at optimiser step ``step``: ``base_lr`` x ``gamma`` per milestone epoch reached (mmcv's
    'step' policy, by epoch: the lr of epoch e is base x gamma^#{m <= e})."""
    epoch = step // max(steps_per_epoch, 1)
    return base_lr * gamma ** sum(epoch >= m for m in milestones)

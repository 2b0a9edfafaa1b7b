"""detectron2's training schedule for the detection transfer (pure: no pycocotools, no torch)."""

from __future__ import annotations

from dataclasses import dataclass

from orl_fast.core.defaults import DetectionConfig

# detectron2's 1x schedule at its reference batch of 16 images.
REFERENCE_BATCH, ITERS_1X, STEPS_1X = 16, 90_000, (60_000, 80_000)


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


def stop_iter(dc: DetectionConfig) -> int:
    """Where training stops: ``dc.max_iter`` when set and sooner than the schedule's end (the lr
    schedule is unchanged), else the schedule's ``max_iter``."""
    end = schedule(dc).max_iter
    return min(end, dc.max_iter) if dc.max_iter else end

"""Process-group setup (torchrun / Ray Train env vars) and synchronised BatchNorm on any device.

torch's ``nn.SyncBatchNorm`` only runs on accelerators; :class:`CrossRankBatchNorm` computes the
same global batch statistics with a differentiable all-reduce, so CPU runs under gloo train with
SyncBN semantics too (the tests use it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Runtime:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


# True when init_runtime created the process group (torchrun); a group made by someone else
# (Ray Train) is left for its owner to destroy.
_OWN_GROUP = False


def init_runtime(device: str = "auto") -> Runtime:
    """Join the process group named by the environment (RANK, WORLD_SIZE, ...), if any.

    Under torchrun the group is created here; under Ray Train it already exists (Ray sets the
    same variables) and is used as it is.
    """
    global _OWN_GROUP
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_available() and dist.is_initialized():
        world, rank = dist.get_world_size(), dist.get_rank()
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but CUDA is not available")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo",
                                device_id=dev if use_cuda else None)
        _OWN_GROUP = True
    return Runtime(rank, world, local_rank, dev)


def shutdown() -> None:
    global _OWN_GROUP
    if _OWN_GROUP and dist.is_initialized():
        dist.destroy_process_group()
        _OWN_GROUP = False


def barrier(rt: Runtime) -> None:
    if rt.distributed:
        dist.barrier()


def mean_across_ranks(values: dict[str, float], rt: Runtime) -> dict[str, float]:
    if not rt.distributed or not values:
        return values
    t = torch.tensor(list(values.values()), dtype=torch.float64,
                     device=rt.device if rt.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return dict(zip(values, (t / rt.world_size).tolist()))


@torch.no_grad()
def gather_rows(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(the rows of every rank concatenated in rank order, this rank), without gradient; one
    process (no process group): (x, 0). Every rank passes the same shape."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return x, 0
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts), dist.get_rank()


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; the gradient of a sum is the sum of the gradients."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class CrossRankBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are computed over the batch of every rank."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        synced = (self.training and dist.is_available() and dist.is_initialized()
                  and dist.get_world_size() > 1)
        if not synced:
            return F.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias,
                self.training or not self.track_running_stats, self.momentum or 0.0, self.eps)
        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        shape = [1, c] + [1] * (x.dim() - 2)
        xf = x.to(torch.promote_types(x.dtype, torch.float32))  # bf16/fp16 -> fp32, fp64 stays
        # Two passes, each one all-reduce: the global mean, then the global sum of squares about
        # it (E[x^2] - mean^2 in fp32 loses the variance of channels whose mean dwarfs it).
        count = torch.full((1,), xf.numel() / c, dtype=xf.dtype, device=x.device)
        sums = _AllReduceSum.apply(torch.cat([xf.sum(dims), count]))
        total = sums[-1]
        mean = sums[:c] / total
        centred = xf - mean.view(shape)
        var = _AllReduceSum.apply((centred * centred).sum(dims)) / total
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(
                    self.num_batches_tracked)
                unbiased = var.detach() * total / (total - 1).clamp_min(1)
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), m)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), m)
        y = centred * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """SyncBN for every BatchNorm: torch's on CUDA, :class:`CrossRankBatchNorm` elsewhere."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(
            module, CrossRankBatchNorm):
        ref = next(iter(module.parameters()), module.running_mean)
        new = CrossRankBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                 module.track_running_stats,
                                 device=None if ref is None else ref.device,
                                 dtype=None if ref is None else ref.dtype)
        if module.affine:
            with torch.no_grad():
                new.weight.copy_(module.weight)
                new.bias.copy_(module.bias)
        if module.track_running_stats:
            new.running_mean.copy_(module.running_mean)
            new.running_var.copy_(module.running_var)
            new.num_batches_tracked.copy_(module.num_batches_tracked)
        new.train(module.training)
        new.requires_grad_(any(p.requires_grad for p in module.parameters()))
        return new
    for name, child in module.named_children():
        module.add_module(name, convert_sync_batchnorm(child, device))
    return module

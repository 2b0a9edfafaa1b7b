"""The weights an evaluation runs on: an orl-fast checkpoint, a torchvision or timm ResNet weights
file (a state dict; ``.safetensors`` too), or random initialisation (the baseline every
evaluation reports beside a checkpoint).

A :class:`Weights` carries the torchvision ResNet state dict (``fc`` excluded), the architecture
name, the input normalisation the weights were trained with (a checkpoint's ``aug.mean`` /
``aug.std``; ImageNet's otherwise) and a content digest of the tensors: the feature cache is keyed
by that digest, so the same weights hit the same cache whichever file they were read from.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

import torch
from torch import nn

from orl_fast.core import checkpoint, storage
from orl_fast.core.defaults import IMAGENET_MEAN, IMAGENET_STD
from orl_fast.core.errors import NotFound
from orl_fast.core.models import build_backbone, check_resnet, read_weights, resnet_weights

RANDOM = "random"


@dataclass(frozen=True)
class Weights:
    name: str  # shown in reports: "checkpoint" or "random init"
    source: str  # the checkpoint path, or "random (seed N)"
    arch: str  # torchvision ResNet name, e.g. resnet50
    state_dict: dict[str, torch.Tensor]
    digest: str  # sha256 over (arch, key, dtype, shape, bytes) of every tensor
    stage: str = ""  # the checkpoint's stage (stage1, stage3), if any
    stem: str = "imagenet"  # model.stem of the checkpoint
    # Input normalisation (RGB in [0, 1]) of the training that gave the weights (aug.mean / std).
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    step: int | None = None  # the checkpoint's optimiser step, if any

    def build(self) -> nn.Module:
        """The backbone (``fc`` = Identity) with these weights, in eval mode."""
        net, _ = build_backbone(self.arch, self.stem)
        net.load_state_dict(self.state_dict, strict=True)
        return net.eval()


def digest(arch: str, state_dict: dict[str, torch.Tensor], stem: str = "imagenet") -> str:
    h = hashlib.sha256(arch.encode() if stem == "imagenet" else f"{arch}|{stem}".encode())
    for key in sorted(state_dict):
        t = state_dict[key].detach().cpu()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def random_init(arch: str, seed: int, stem: str = "imagenet", init: str = "torchvision") -> Weights:
    """A seeded random initialisation of ``arch`` (the caller's RNG is untouched): torchvision's
    default, or ``init="official"`` (``model.init``, what training starts from)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net, _ = build_backbone(arch, stem, init)
    sd = net.state_dict()
    return Weights("random init", f"random (seed {seed})", arch, sd, digest(arch, sd, stem),
                   stem=stem)


@torch.no_grad()
def recalibrate_bn(weights: Weights, images: torch.Tensor, batch_size: int = 128) -> Weights:
    """``weights`` with every BatchNorm's running statistics re-estimated on ``images`` (uint8
    [N, 3, H, W], normalised with ImageNet's mean and std), the rest unchanged.

    A randomly initialised network evaluated as it is has running statistics mean 0, variance 1
    (each BatchNorm the identity); any training replaces them by the data's. This isolates what
    training did to the other weights (PreciseBN-style cumulative averages over the batches)."""
    from loaders.augment import normalize

    net = weights.build()
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    net.train()
    for start in range(0, len(images), batch_size):
        net(normalize(images[start:start + batch_size], IMAGENET_MEAN, IMAGENET_STD))
    sd = {k: v.detach().clone() for k, v in net.state_dict().items()}
    return Weights(f"{weights.name}, BN re-estimated", f"{weights.source} (BN statistics "
                   f"re-estimated on {len(images)} images)", weights.arch, sd,
                   digest(weights.arch, sd, weights.stem), weights.stage, weights.stem,
                   weights.mean, weights.std)


def load(path: str, arch: str = "resnet50") -> Weights:
    """An orl-fast checkpoint (file or run directory; its config names the architecture) or a
    torchvision / timm ResNet weights file (``arch`` names it; ``fc.*`` is dropped)."""
    fs, fs_path = storage.url_to_fs(path)
    resolved = path if fs.isfile(fs_path) else checkpoint.resolve(path)
    if resolved is None:
        raise NotFound(f"ckpt: {path}: no checkpoint here (expected an orl-fast checkpoint, "
                       "its run directory, or a torchvision state dict file)")
    state = read_weights(resolved)
    stage, stem, mean, std, step = "", "imagenet", IMAGENET_MEAN, IMAGENET_STD, None
    if isinstance(state, dict) and state.get("format") == checkpoint.FORMAT:
        sd = checkpoint.backbone_state_dict(state)
        model_cfg = state.get("config", {}).get("model", {})
        arch = model_cfg.get("backbone", arch)
        stem = model_cfg.get("stem", stem)
        stage = str(state.get("stage", ""))
        aug_cfg = state.get("config", {}).get("aug", {})
        mean = tuple(float(v) for v in aug_cfg.get("mean", mean))
        std = tuple(float(v) for v in aug_cfg.get("std", std))
        step = int(state["step"]) if "step" in state else None
        check_resnet(sd, arch, resolved, stem)
    else:
        sd = resnet_weights(state, arch, resolved, stem)
    return Weights("checkpoint", resolved, arch, sd, digest(arch, sd, stem), stage, stem, mean,
                   std, step)


def resolve(path: str, arch: str, seed: int) -> Weights:
    """``random`` -> random init of ``arch``; anything else -> :func:`load`."""
    return random_init(arch, seed) if path == RANDOM else load(path, arch)


def with_baseline(path: str, arch: str, seed: int) -> list[Weights]:
    """[checkpoint, random init of the same architecture and input normalisation]; only the
    baseline for ``random``."""
    w = resolve(path, arch, seed)
    if path == RANDOM:
        return [w]
    return [w, replace(random_init(w.arch, seed, w.stem), mean=w.mean, std=w.std)]

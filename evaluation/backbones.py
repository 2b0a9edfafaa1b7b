"""The weights an evaluation runs on: an orl-fast checkpoint, a torchvision state dict, or random
initialisation (the baseline every evaluation reports beside a checkpoint).

A :class:`Weights` carries the torchvision ResNet state dict (``fc`` excluded), the architecture
name and a content digest of the tensors: the feature cache is keyed by that digest, so the same
weights hit the same cache whichever file they were read from.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import torch
from torch import nn

from orl_fast.core import checkpoint, storage
from orl_fast.core.models import build_backbone

RANDOM = "random"


@dataclass(frozen=True)
class Weights:
    name: str  # shown in reports: "checkpoint" or "random init"
    source: str  # the checkpoint path, or "random (seed N)"
    arch: str  # torchvision ResNet name, e.g. resnet50
    state_dict: dict[str, torch.Tensor]
    digest: str  # sha256 over (arch, key, dtype, shape, bytes) of every tensor
    stage: str = ""  # the checkpoint's stage (stage1, stage3), if any

    def build(self) -> nn.Module:
        """The backbone (``fc`` = Identity) with these weights, in eval mode."""
        net, _ = build_backbone(self.arch)
        net.load_state_dict(self.state_dict, strict=True)
        return net.eval()


def digest(arch: str, state_dict: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256(arch.encode())
    for key in sorted(state_dict):
        t = state_dict[key].detach().cpu()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def random_init(arch: str, seed: int) -> Weights:
    """torchvision's default initialisation of ``arch``, seeded (the caller's RNG is untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net, _ = build_backbone(arch)
    sd = net.state_dict()
    return Weights("random init", f"random (seed {seed})", arch, sd, digest(arch, sd))


def load(path: str, arch: str = "resnet50") -> Weights:
    """An orl-fast checkpoint (file or run directory; its config names the architecture) or a
    torchvision ResNet state dict file (``arch`` names it; ``fc.*`` is dropped)."""
    fs, fs_path = storage.url_to_fs(path)
    resolved = path if fs.isfile(fs_path) else checkpoint.resolve(path)
    if resolved is None:
        raise FileNotFoundError(f"no checkpoint at {path!r} (expected an orl-fast checkpoint, "
                                "its run directory, or a torchvision state dict file)")
    with storage.open_file(resolved, "rb") as f:
        state = torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)
    stage = ""
    if isinstance(state, dict) and state.get("format") == checkpoint.FORMAT:
        sd = checkpoint.backbone_state_dict(state)
        arch = state.get("config", {}).get("model", {}).get("backbone", arch)
        stage = str(state.get("stage", ""))
    elif isinstance(state, dict) and state and all(isinstance(v, torch.Tensor)
                                                   for v in state.values()):
        sd = {k: v for k, v in state.items() if not k.startswith("fc.")}
    else:
        raise ValueError(f"{resolved}: neither an orl-fast checkpoint nor a state dict of tensors")
    _check_keys(sd, arch, resolved)
    return Weights("checkpoint", resolved, arch, sd, digest(arch, sd), stage)


def resolve(path: str, arch: str, seed: int) -> Weights:
    """``random`` -> random init of ``arch``; anything else -> :func:`load`."""
    return random_init(arch, seed) if path == RANDOM else load(path, arch)


def with_baseline(path: str, arch: str, seed: int) -> list[Weights]:
    """[checkpoint, random init of the same architecture]; only the baseline for ``random``."""
    w = resolve(path, arch, seed)
    return [w] if path == RANDOM else [w, random_init(w.arch, seed)]


def _check_keys(sd: dict[str, torch.Tensor], arch: str, where: str) -> None:
    expected = build_backbone(arch)[0].state_dict()
    missing, unexpected = sorted(set(expected) - set(sd)), sorted(set(sd) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{where}: not a torchvision {arch} backbone (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")

"""Networks: torchvision ResNet backbone, BYOL projector/predictor MLPs, online/target encoders.

State-dict layout (every checkpoint of every stage uses it):
``online.backbone.*``, ``online.projector.*``, ``predictor.*``, ``target.backbone.*``,
``target.projector.*``; Stage 3 adds ``intra_predictor.*`` and ``inter_predictor.*``.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from orl_fast.core import checkpoint, storage
from orl_fast.core.config import ConfigError
from orl_fast.core.defaults import ModelConfig
from orl_fast.core.errors import InputError
from orl_fast.core.extras import require
from orl_fast.core.losses import regression_loss

# ORL's loss weights that leave the image term alone: BYOL, Stage 1.
IMAGE_ONLY = (1.0, 0.0, 0.0)


def official_init_(module: nn.Module) -> nn.Module:
    """The official ORL (OpenSelfSup) initialisation, in place: every ``Linear`` and ``Conv2d``
    kaiming-normal with fan_in and the ReLU gain (std sqrt(2 / fan_in)), biases 0; every norm
    layer weight 1, bias 0 (the necks' ``init_weights(init_linear='kaiming')`` and the ResNet's
    ``init_weights(pretrained=None)``, zero_init_residual off)."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return module


def build_backbone(name: str, stem: str = "imagenet",
                   init: str = "torchvision") -> tuple[nn.Module, int]:
    """A torchvision ResNet with ``fc`` removed: images -> global-average-pooled features.

    ``stem="small"`` replaces the 7x7 stride-2 convolution and the max-pool by one 3x3 stride-1
    convolution (the small-input stem of solo-learn and lightly). ``init``: "torchvision" keeps
    torchvision's initialisation (convolutions kaiming normal with fan_out; the new stem too),
    "official" re-initialises as the official ORL ResNet (:func:`official_init_`: fan_in)."""
    net = getattr(torchvision.models, name)(weights=None)
    if stem == "small":
        net.conv1 = nn.Conv2d(3, net.conv1.out_channels, 3, 1, 1, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        net.maxpool = nn.Identity()
    elif stem != "imagenet":
        raise ValueError(f"unknown stem {stem!r} (imagenet or small)")
    dim = net.fc.in_features
    net.fc = nn.Identity()
    if init == "official":
        official_init_(net)
    elif init != "torchvision":
        raise ValueError(f"unknown init {init!r} (official or torchvision)")
    return net, dim


def resnet_weights(state: Any, arch: str, where: str,
                   stem: str = "imagenet") -> dict[str, torch.Tensor]:
    """The backbone weights of a torchvision or timm ResNet state dict (also under a
    ``state_dict`` or ``model`` entry, keys with or without ``module.``), ``fc.*`` dropped, checked
    against ``arch``: InputError naming ``where`` and the first keys that differ."""
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not (isinstance(state, dict) and state
            and all(isinstance(v, torch.Tensor) for v in state.values())):
        raise InputError(f"{where}: neither an orl-fast checkpoint nor a state dict of tensors")
    sd = {k.removeprefix("module."): v for k, v in state.items()}
    sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    check_resnet(sd, arch, where, stem)
    return sd


def check_resnet(sd: dict[str, torch.Tensor], arch: str, where: str,
                 stem: str = "imagenet") -> None:
    """InputError unless ``sd`` holds exactly the weights of ``arch`` (``fc`` excluded)."""
    expected = build_backbone(arch, stem)[0].state_dict()
    missing, unexpected = sorted(set(expected) - set(sd)), sorted(set(sd) - set(expected))
    wrong = [k for k in sorted(set(expected) & set(sd)) if expected[k].shape != sd[k].shape]
    if missing or unexpected or wrong:
        raise InputError(f"{where}: not a torchvision {arch} backbone ({stem} stem; missing "
                         f"{missing[:3]}, unexpected {unexpected[:3]}, other shapes {wrong[:3]})")


def read_weights(path: str) -> Any:
    """What a weights file holds (``torch.load(weights_only=True)``; ``.safetensors`` too), local
    or any fsspec URL. No download from a model hub: a file."""
    if path.endswith(".safetensors"):
        return require("safetensors.torch", "eval", "reading .safetensors weights").load(
            storage.read_bytes(path))
    return checkpoint.read_torch(path)


def init_backbone_(model: nn.Module, path: str, cfg: ModelConfig) -> None:
    """``model.init_weights``: the online and target backbones of ``model`` from a torchvision
    or timm ResNet weights file, or the online backbone of an orl-fast checkpoint (file or run
    directory); the projector and predictors keep their initialisation. Errors are one
    ConfigError naming the field."""
    field = "model.init_weights"
    try:
        file = path if storage.isfile(path) else checkpoint.resolve(path)
        if file is None:
            raise FileNotFoundError("no such file")
        state = read_weights(file)
        if isinstance(state, dict) and state.get("format") == checkpoint.FORMAT:
            sd = checkpoint.backbone_state_dict(state)
            check_resnet(sd, cfg.backbone, file, cfg.stem)
        else:
            sd = resnet_weights(state, cfg.backbone, file, cfg.stem)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ConfigError(f"{field}: {path}: {e}") from None
    for branch in (model.online, model.target):
        branch.backbone.load_state_dict(sd, strict=True)


class MLP(nn.Sequential):
    """BYOL MLP: Linear(in, hidden) -> BN -> ReLU -> Linear(hidden, out).

    No biases, as the official ORL neck (OpenSelfSup NonLinearNeckSimCLR, with_bias=False; its
    first Linear keeps a bias, which the BatchNorm after it cancels exactly, so it is left out).
    ``init``: "official" (:func:`official_init_`, the necks' ``init_linear='kaiming'``) or
    "torchvision" (PyTorch's defaults)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, init: str = "official"):
        super().__init__(
            nn.Linear(in_dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim, bias=False),
        )
        if init == "official":
            official_init_(self)
        elif init != "torchvision":
            raise ValueError(f"unknown init {init!r} (official or torchvision)")


class Encoder(nn.Module):
    """Backbone + projector (shared by the global and the local branches in ORL)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.backbone, self.feat_dim = build_backbone(cfg.backbone, cfg.stem, cfg.init)
        self.projector = MLP(self.feat_dim, cfg.proj_hidden_dim, cfg.proj_dim, cfg.init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(x))


@torch.no_grad()
def effective_rank(x: torch.Tensor) -> torch.Tensor:
    """exp(entropy) of the normalised singular values of the centred rows of ``x`` (Roy &
    Vetterli 2007): between 1 (collapse to a line) and min(rows - 1, columns)."""
    x = x.detach().double()
    s = torch.linalg.svdvals(x - x.mean(0))
    p = s / s.sum().clamp_min(1e-12)
    p = p[p > 0]
    return torch.exp(-(p * p.log()).sum())


@torch.no_grad()
def monitors(features: torch.Tensor, projections: torch.Tensor) -> dict[str, torch.Tensor]:
    """Collapse monitors of a batch: ``proj_std``, the mean over dimensions of the batch std of
    the L2-normalised projector outputs (1 / sqrt(dim) for outputs spread evenly on the sphere,
    0 at collapse), and ``feature_rank``, the effective rank of the backbone features."""
    z = F.normalize(projections.detach().float(), dim=1)
    return {"proj_std": z.std(0).mean(), "feature_rank": effective_rank(features)}


@torch.no_grad()
def online_target_distance(model: nn.Module) -> float:
    """||online - target|| / ||target|| over the encoder parameters: how far the EMA lags."""
    diff = total = 0.0
    for o, t in zip(model.online.parameters(), model.target.parameters()):
        diff += float((o.detach().double() - t.double()).pow(2).sum())
        total += float(t.double().pow(2).sum())
    return (diff / max(total, 1e-30)) ** 0.5


@torch.no_grad()
def ema_update_(target: nn.Module, online: nn.Module, tau: float) -> None:
    """target <- tau * target + (1 - tau) * online, over parameters (BYOL momentum update)."""
    t = [p for p in target.parameters()]
    o = [p.detach() for p in online.parameters()]
    torch._foreach_lerp_(t, o, 1.0 - tau)


class BYOL(nn.Module):
    """Stage 1: image-level BYOL. ``forward(v1, v2)`` returns the symmetrised loss and metrics."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.online = Encoder(cfg)
        self.predictor = MLP(cfg.proj_dim, cfg.pred_hidden_dim, cfg.proj_dim, cfg.init)
        self.target = copy.deepcopy(self.online)
        self.target.requires_grad_(False)

    def pair_loss(self, predictor: nn.Module, v1: torch.Tensor, v2: torch.Tensor,
                  diagnostics: dict | None = None) -> torch.Tensor:
        """Symmetric BYOL loss of two views through ``predictor``: L(q(v1), z'(v2)) + L(q(v2), z'(v1)).

        With a ``diagnostics`` dict, also adds the collapse monitors of the first view's batch
        (:func:`monitors`)."""
        f1, f2 = self.online.backbone(v1), self.online.backbone(v2)
        z1, z2 = self.online.projector(f1), self.online.projector(f2)
        p1, p2 = predictor(z1), predictor(z2)
        with torch.no_grad():
            t1 = self.target(v1)
            t2 = self.target(v2)
        if diagnostics is not None:
            diagnostics.update(monitors(f1, z1))
        return regression_loss(p1, t2) + regression_loss(p2, t1)

    def forward(self, v1: torch.Tensor, v2: torch.Tensor,
                diagnostics: bool = False) -> tuple[torch.Tensor, dict]:
        extra: dict | None = {} if diagnostics else None
        loss = self.pair_loss(self.predictor, v1, v2, extra)
        return loss, {"loss_image": loss.detach(), **(extra or {})}

    def update_target(self, tau: float) -> None:
        ema_update_(self.target, self.online, tau)


class ORL(BYOL):
    """Stage 3: L = l1 L_image + l2 L_intra + l3 L_inter, each term symmetric.

    One backbone + projector (``online``) and one EMA ``target`` serve the global views and the
    patches; the three predictors are separate. A term with weight 0 has no predictor (so DDP sees
    no unused parameter) and takes no patches: with :data:`IMAGE_ONLY` the modules and their keys
    are BYOL's (Stage 1).

    ``forward(v1, v2, intra=(p, p'), inter=(p1, p2))``: the two global views of x; the intra-RoI
    pair (a kept box of x and its jitter); the inter-RoI pair (a mined box of x and its match in
    the neighbour). ``intra`` / ``inter`` are given exactly when their weight is > 0.
    """

    TERMS = (("image", "predictor"), ("intra", "intra_predictor"), ("inter", "inter_predictor"))

    def __init__(self, cfg: ModelConfig, loss_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)):
        super().__init__(cfg)  # online, target and the image predictor
        self.loss_weights = tuple(float(w) for w in loss_weights)
        w_image, w_intra, w_inter = self.loss_weights
        self.intra_predictor = (MLP(cfg.proj_dim, cfg.pred_hidden_dim, cfg.proj_dim, cfg.init)
                                if w_intra > 0 else None)
        self.inter_predictor = (MLP(cfg.proj_dim, cfg.pred_hidden_dim, cfg.proj_dim, cfg.init)
                                if w_inter > 0 else None)
        if w_image == 0:
            self.predictor = None

    def forward(self, v1: torch.Tensor, v2: torch.Tensor,
                intra: tuple[torch.Tensor, torch.Tensor] | None = None,
                inter: tuple[torch.Tensor, torch.Tensor] | None = None,
                diagnostics: bool = False) -> tuple[torch.Tensor, dict]:
        pairs = {"image": (v1, v2), "intra": intra, "inter": inter}
        loss, metrics = 0.0, {}
        extra: dict | None = {} if diagnostics else None
        for (name, attr), weight in zip(self.TERMS, self.loss_weights):
            pair = pairs[name]
            if name != "image" and (pair is None) != (weight == 0):
                raise ValueError(f"{name}: {'missing' if pair is None else 'given'} with loss "
                                 f"weight {weight} (loss weights {self.loss_weights})")
            if weight == 0:
                continue
            term = self.pair_loss(getattr(self, attr), *pair,
                                  diagnostics=extra if name == "image" else None)
            loss = loss + weight * term
            metrics[f"loss_{name}"] = term.detach()
        return loss, {**metrics, **(extra or {})}

"""Networks: torchvision ResNet backbone, BYOL projector/predictor MLPs, online/target encoders.

State-dict layout (every checkpoint of every stage uses it):
``online.backbone.*``, ``online.projector.*``, ``predictor.*``, ``target.backbone.*``,
``target.projector.*``; Stage 3 adds ``intra_predictor.*`` and ``inter_predictor.*``.
"""

from __future__ import annotations

import copy

import torch
import torchvision
from torch import nn

from orl_fast.core.defaults import ModelConfig
from orl_fast.core.losses import regression_loss

# ORL's loss weights that leave the image term alone: BYOL, Stage 1.
IMAGE_ONLY = (1.0, 0.0, 0.0)


def build_backbone(name: str) -> tuple[nn.Module, int]:
    """A torchvision ResNet with ``fc`` removed: images -> global-average-pooled features."""
    net = getattr(torchvision.models, name)(weights=None)
    dim = net.fc.in_features
    net.fc = nn.Identity()
    return net, dim


class MLP(nn.Sequential):
    """BYOL MLP: Linear(in, hidden) -> BN -> ReLU -> Linear(hidden, out).

    No biases, as the official ORL neck (OpenSelfSup NonLinearNeckSimCLR, with_bias=False).
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__(
            nn.Linear(in_dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim, bias=False),
        )


class Encoder(nn.Module):
    """Backbone + projector (shared by the global and the local branches in ORL)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.backbone, self.feat_dim = build_backbone(cfg.backbone)
        self.projector = MLP(self.feat_dim, cfg.proj_hidden_dim, cfg.proj_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(x))


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
        self.predictor = MLP(cfg.proj_dim, cfg.pred_hidden_dim, cfg.proj_dim)
        self.target = copy.deepcopy(self.online)
        self.target.requires_grad_(False)

    def pair_loss(self, predictor: nn.Module, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
        """Symmetric BYOL loss of two views through ``predictor``: L(q(v1), z'(v2)) + L(q(v2), z'(v1))."""
        p1 = predictor(self.online(v1))
        p2 = predictor(self.online(v2))
        with torch.no_grad():
            z1 = self.target(v1)
            z2 = self.target(v2)
        return regression_loss(p1, z2) + regression_loss(p2, z1)

    def forward(self, v1: torch.Tensor, v2: torch.Tensor) -> tuple[torch.Tensor, dict]:
        loss = self.pair_loss(self.predictor, v1, v2)
        return loss, {"loss_image": loss.detach()}

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
        self.intra_predictor = (MLP(cfg.proj_dim, cfg.pred_hidden_dim, cfg.proj_dim)
                                if w_intra > 0 else None)
        self.inter_predictor = (MLP(cfg.proj_dim, cfg.pred_hidden_dim, cfg.proj_dim)
                                if w_inter > 0 else None)
        if w_image == 0:
            self.predictor = None

    def forward(self, v1: torch.Tensor, v2: torch.Tensor,
                intra: tuple[torch.Tensor, torch.Tensor] | None = None,
                inter: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, dict]:
        pairs = {"image": (v1, v2), "intra": intra, "inter": inter}
        loss, metrics = 0.0, {}
        for (name, attr), weight in zip(self.TERMS, self.loss_weights):
            pair = pairs[name]
            if name != "image" and (pair is None) != (weight == 0):
                raise ValueError(f"{name}: {'missing' if pair is None else 'given'} with loss "
                                 f"weight {weight} (loss weights {self.loss_weights})")
            if weight == 0:
                continue
            term = self.pair_loss(getattr(self, attr), *pair)
            loss = loss + weight * term
            metrics[f"loss_{name}"] = term.detach()
        return loss, metrics

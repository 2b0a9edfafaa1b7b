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

from orl_fast.config import ModelConfig
from orl_fast.losses import regression_loss


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

    def forward(self, v1: torch.Tensor, v2: torch.Tensor) -> tuple[torch.Tensor, dict]:
        p1 = self.predictor(self.online(v1))
        p2 = self.predictor(self.online(v2))
        with torch.no_grad():
            z1 = self.target(v1)
            z2 = self.target(v2)
        loss = regression_loss(p1, z2) + regression_loss(p2, z1)
        return loss, {"loss_image": loss.detach()}

    def update_target(self, tau: float) -> None:
        ema_update_(self.target, self.online, tau)

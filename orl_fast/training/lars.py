"""LARS as MoCo-v3 (and OPERA) train with it: the layer-wise trust ratio for weights, plain
momentum SGD for the parameters of at most one dimension (BatchNorm, biases).

Per parameter p with gradient g, learning rate lr, weight decay wd, momentum m and trust
coefficient eta::

    p.ndim > 1:  d = g + wd p;  d = eta ||p|| / ||d|| x d  (the ratio is 1 when a norm is 0)
    otherwise:   d = g          (no weight decay, no trust ratio)
    mu = m mu + d  (mu starts at 0);  p = p - lr mu

No learning-rate clipping and no exclusion list: the rule is the dimensionality alone.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class LARS(torch.optim.Optimizer):
    def __init__(self, params: Iterable, lr: float = 0.0, weight_decay: float = 0.0,
                 momentum: float = 0.9, trust_coefficient: float = 0.001):
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay, "momentum": momentum,
                                  "trust_coefficient": trust_coefficient})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if p.ndim > 1:
                    d = d.add(p, alpha=group["weight_decay"])
                    p_norm, d_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(d)
                    ratio = group["trust_coefficient"] * p_norm / d_norm.clamp_min(1e-30)
                    d = d * torch.where((p_norm > 0) & (d_norm > 0), ratio,
                                        torch.ones_like(ratio))
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(group["momentum"]).add_(d)
                p.add_(mu, alpha=-group["lr"])
        return loss

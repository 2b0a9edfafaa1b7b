"""BYOL loss, EMA update, tau and lr schedules against hand-computed values; the network."""

from __future__ import annotations

import math

import pytest
import torch

from orl_fast.core.config import load_config
from orl_fast.core.losses import regression_loss
from orl_fast.core.models import BYOL, MLP, ema_update_
from orl_fast.training.engine import Schedule, make_optimizer
from orl_fast.training.schedules import ema_tau, learning_rate


def test_regression_loss_hand_computed():
    p = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])
    z = torch.tensor([[1.0, 0.0], [0.0, -1.0], [4.0, 3.0]])
    # cosines: 1, -1, 24/25 -> 2 - 2cos: 0, 4, 0.08 -> mean 4.08 / 3
    assert regression_loss(p, z).item() == pytest.approx(4.08 / 3, abs=1e-6)
    # scale invariant, and no gradient reaches the target
    z.requires_grad_(True)
    p2 = (p * 7).requires_grad_(True)
    loss = regression_loss(p2, z)
    loss.backward()
    assert loss.item() == pytest.approx(4.08 / 3, abs=1e-6)
    assert z.grad is None and p2.grad is not None


def test_ema_tau_schedule_hand_computed():
    assert ema_tau(0, 100, 0.99) == pytest.approx(0.99)
    assert ema_tau(50, 100, 0.99) == pytest.approx(0.995)
    assert ema_tau(100, 100, 0.99) == pytest.approx(1.0)
    # tau = 1 - 0.01 (cos(pi k/K) + 1) / 2 at k = 25
    assert ema_tau(25, 100, 0.99) == pytest.approx(1 - 0.01 * (math.cos(math.pi / 4) + 1) / 2)


def test_learning_rate_warmup_then_cosine():
    base, total, warm = 0.4, 1000, 100
    assert learning_rate(0, total, base, warm, 1e-4) == pytest.approx(base * 1e-4)
    # half-way through warm-up: cosine value x (1 - 0.5 (1 - 1e-4))
    cos50 = base * 0.5 * (1 + math.cos(math.pi * 50 / total))
    assert learning_rate(50, total, base, warm, 1e-4) == pytest.approx(cos50 * (0.5 + 0.5e-4))
    cos100 = base * 0.5 * (1 + math.cos(math.pi * 0.1))
    assert learning_rate(100, total, base, warm) == pytest.approx(cos100)
    assert learning_rate(500, total, base, warm) == pytest.approx(base / 2)
    assert learning_rate(total, total, base, warm) == pytest.approx(0.0, abs=1e-12)


def test_schedule_scales_lr_with_batch_and_counts_steps():
    cfg = load_config("paper")
    s = Schedule(cfg, num_images=118_287)
    assert s.steps_per_epoch == 118_287 // 512
    assert s.total_steps == 800 * s.steps_per_epoch
    assert s.base_lr == pytest.approx(0.4)
    assert s.warmup_steps == 4 * s.steps_per_epoch
    with pytest.raises(ValueError, match="train.batch_size"):
        Schedule(cfg, num_images=100)


def test_ema_update_hand_computed():
    t, o = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    with torch.no_grad():
        t.weight.fill_(1.0), t.bias.fill_(0.0)
        o.weight.fill_(3.0), o.bias.fill_(2.0)
    ema_update_(t, o, 0.9)
    assert torch.allclose(t.weight, torch.full((1, 2), 0.9 * 1 + 0.1 * 3))
    assert torch.allclose(t.bias, torch.full((1,), 0.2))


def test_mlp_is_byol_shaped():
    mlp = MLP(2048, 4096, 256)
    kinds = [type(m).__name__ for m in mlp]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert (mlp[0].in_features, mlp[0].out_features, mlp[3].out_features) == (2048, 4096, 256)


def test_byol_gradients_flow_only_to_online_and_predictor():
    torch.manual_seed(0)
    cfg = load_config("small", ["model.proj_hidden_dim=32", "model.proj_dim=16",
                                "model.pred_hidden_dim=32"]).model
    model = BYOL(cfg)
    v1, v2 = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)
    loss, metrics = model(v1, v2)
    assert 0 <= loss.item() <= 8  # two terms, each in [0, 4]
    loss.backward()
    assert all(p.grad is not None for p in model.online.parameters())
    assert all(p.grad is not None for p in model.predictor.parameters())
    assert all(p.grad is None and not p.requires_grad for p in model.target.parameters())
    assert model.online.backbone(v1).shape == (4, 512)
    assert set(metrics) == {"loss_image"}


def test_byol_loss_is_symmetric_in_the_views():
    torch.manual_seed(0)
    cfg = load_config("small", ["model.proj_hidden_dim=32", "model.proj_dim=16",
                                "model.pred_hidden_dim=32"]).model
    model = BYOL(cfg).eval()  # eval: BN uses running stats, so the forward is per-sample
    v1, v2 = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert model(v1, v2)[0].item() == pytest.approx(model(v2, v1)[0].item(), rel=1e-5)


def test_optimizer_weight_decay_groups():
    model = BYOL(load_config("small").model)
    cfg = load_config("paper").optim
    opt = make_optimizer(model, cfg)
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["weight_decay"] == 1e-4
    assert opt.param_groups[0]["momentum"] == 0.9
    n_trainable = sum(1 for p in model.parameters() if p.requires_grad)
    assert len(opt.param_groups[0]["params"]) == n_trainable
    cfg2 = load_config("paper", ["optim.exclude_bn_bias_from_wd=true"]).optim
    opt2 = make_optimizer(model, cfg2)
    decay, no_decay = opt2.param_groups
    assert no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 1 for p in no_decay["params"])  # BN weights/biases
    assert all(p.dim() > 1 for p in decay["params"])

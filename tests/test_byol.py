"""BYOL loss, EMA update, tau and lr schedules against hand-computed values; the network."""

from __future__ import annotations

import math

import pytest
import torch

from orl_fast.core.config import load_config
from orl_fast.core.losses import regression_loss
from orl_fast.core.models import BYOL, MLP, ema_update_
from orl_fast.training.engine import Schedule, autocast_for, make_optimizer
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


def _std_ratio(weight: torch.Tensor, fan: int) -> float:
    """The std of ``weight`` over the kaiming-normal std for that fan, sqrt(2 / fan)."""
    return weight.detach().double().std().item() / math.sqrt(2 / fan)


def test_initialisation_is_the_official_one():
    """The official ORL init (Jiahao000/ORL): the projector and the three predictors
    ``init_weights(init_linear='kaiming')`` (openselfsup/models/orl.py:67,72-74), which is
    ``kaiming_init(m, mode='fan_in', nonlinearity='relu')`` on every Linear / Conv2d and weight
    1, bias 0 on every BatchNorm (openselfsup/models/necks.py:10-24); the ResNet's
    ``init_weights(pretrained=None)``: every Conv2d ``kaiming_init(mode='fan_in')``, every
    BatchNorm ``constant_init(1)``, zero_init_residual False (openselfsup/models/backbones/
    resnet.py:386-402). mmcv's kaiming_init draws kaiming_normal_ (distribution 'normal') and
    sets the bias to 0 (open-mmlab/mmcv mmcv/cnn/weight_init.py). The target is a copy of the
    online network (orl.py:68-70). ``model.init=torchvision`` keeps torchvision's convolutions
    (fan_out) and PyTorch's Linear default."""
    from orl_fast.core.models import ORL

    assert load_config("paper").model.init == "official"
    torch.manual_seed(0)
    cfg = load_config("small", ["model.proj_hidden_dim=512", "model.proj_dim=128",
                                "model.pred_hidden_dim=512"]).model
    model = ORL(cfg)
    mlps = [model.online.projector, model.predictor, model.intra_predictor, model.inter_predictor]
    for mlp in mlps:
        for linear in (mlp[0], mlp[3]):
            w = linear.weight
            assert _std_ratio(w, w.shape[1]) == pytest.approx(1.0, abs=0.03)  # fan_in
            assert abs(w.mean().item()) < 0.05 * w.std().item()
            # normal, not uniform: the excess kurtosis of a normal is 0, of a uniform -1.2
            z = (w.double() - w.double().mean()) / w.double().std()
            assert (z ** 4).mean().item() - 3 == pytest.approx(0.0, abs=0.15)
        assert (mlp[1].weight == 1).all() and (mlp[1].bias == 0).all()
    net = model.online.backbone  # ResNet-18 (the small config)
    # fan_in and fan_out differ where the channels change: 1x1 64 -> 128 and 3x3 64 -> 128
    down, conv = net.layer2[0].downsample[0], net.layer2[0].conv1
    assert _std_ratio(down.weight, 64) == pytest.approx(1.0, abs=0.06)
    assert _std_ratio(conv.weight, 64 * 9) == pytest.approx(1.0, abs=0.03)
    assert _std_ratio(net.conv1.weight, 3 * 7 * 7) == pytest.approx(1.0, abs=0.1)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            assert (m.weight == 1).all() and (m.bias == 0).all()
    assert all(torch.equal(o, t) for o, t in zip(model.online.state_dict().values(),
                                                 model.target.state_dict().values()))

    tv = ORL(load_config("small", ["model.init=torchvision", "model.proj_hidden_dim=512",
                                   "model.proj_dim=128", "model.pred_hidden_dim=512"]).model)
    net = tv.online.backbone
    assert _std_ratio(net.layer2[0].conv1.weight, 128 * 9) == pytest.approx(1.0, abs=0.03)
    w = tv.predictor[0].weight  # kaiming uniform with a = sqrt(5): std 1 / sqrt(3 fan_in)
    assert w.std().item() == pytest.approx(1 / math.sqrt(3 * w.shape[1]), rel=0.03)


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


@pytest.mark.parametrize("avx512_bf16, amx, enabled", [(False, False, False), (True, False, True),
                                                       (False, True, True)])
def test_cpu_autocast_only_with_native_bf16(monkeypatch, avx512_bf16, amx, enabled):
    """bf16 autocast on a CPU needs AVX512-BF16 or AMX: oneDNN's emulation on plain AVX-512
    (which it reports as bf16 support) is 2.6x slower than fp32."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True,
                        raising=False)
    cpu = torch.device("cpu")
    assert autocast_for("bf16", cpu)._enabled is enabled
    assert autocast_for("fp32", cpu)._enabled is False

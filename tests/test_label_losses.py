"""The label-aware losses against hand-computed values: MoCo-v3's InfoNCE (one process and two
gloo ranks), OPERA's combination and masked class loss, multi-label forms, LARS, SCAN's term;
the gradient routing of OPERA's class head and the MoCo-v3 modules."""

from __future__ import annotations

import math

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from orl_fast.core.config import load_config
from orl_fast.core.defaults import LabelConfig, ModelConfig
from orl_fast.core.losses import class_loss, infonce_loss
from orl_fast.core.models import ORL, MoCoProjector
from orl_fast.core.ray_runtime import free_port
from orl_fast.training.engine import make_optimizer
from orl_fast.training.lars import LARS

I2 = torch.eye(2, dtype=torch.float64)
LOGITS = torch.tensor([[2.0, 0.0, 0.0]], dtype=torch.float64)
ONE_HOT = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
KNOWN = torch.ones(1, 3, dtype=torch.float64)
CE = math.log(1 + 2 * math.exp(-2))  # CE([2, 0, 0], 0) = 0.239545


def test_infonce_and_opera_total_hand_computed():
    # T = 1, q = k = I2: each direction 2T ln(1 + e^-1) = 0.626523, both 1.253047
    con = infonce_loss(I2, I2, 1.0) + infonce_loss(I2, I2, 1.0)
    assert con.item() == pytest.approx(4 * math.log(1 + math.exp(-1)), abs=1e-12)
    assert con.item() == pytest.approx(1.253047, abs=1e-6)
    ce = class_loss(LOGITS, ONE_HOT, KNOWN)
    assert ce.item() == pytest.approx(0.239545, abs=1e-6)
    # OPERA as released: 0.5 loss_con + 0.5 CE(v1) + 0.5 CE(v2)
    assert (0.5 * con + 0.5 * ce + 0.5 * ce).item() == pytest.approx(0.866068, abs=1e-6)
    # T = 0.2: 2T scaling
    con = 2 * infonce_loss(I2, I2, 0.2)
    assert con.item() == pytest.approx(0.005372, abs=1e-6)
    assert (0.5 * con + ce).item() == pytest.approx(0.242231, abs=1e-6)
    # scale-invariant in the query; no gradient reaches the keys
    q = (3 * I2).requires_grad_(True)
    k = I2.clone().requires_grad_(True)
    infonce_loss(q, k, 1.0).backward()
    assert q.grad is not None and k.grad is None


def _rank_worker(rank: int, port: int, queue) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    try:
        torch.manual_seed(0)
        q, k = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
        local = slice(3 * rank, 3 * rank + 3)
        # rank r holds rows 3r..3r+2; its positives are the gathered keys' columns 3r + i
        queue.put((rank, infonce_loss(q[local], k[local], 0.5).item(),
                   infonce_loss(I2[1:2], I2[rank:rank + 1], 1.0).item()))
    finally:
        dist.destroy_process_group()


def test_infonce_gathers_keys_across_two_gloo_ranks():
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_rank_worker, args=(r, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = {r: (a, b) for r, a, b in (queue.get(timeout=120) for _ in procs)}
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    torch.manual_seed(0)
    q, k = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    # the mean over ranks of the local means is the one-process loss of the global batch
    whole = infonce_loss(q, k, 0.5).item()
    assert (results[0][0] + results[1][0]) / 2 == pytest.approx(whole, abs=1e-12)
    # rank 1 holds q = e2, the gathered keys are I2: its label is column 1 -> 0.626523
    assert results[1][1] == pytest.approx(2 * math.log(1 + math.exp(-1)), abs=1e-12)


def test_multi_label_and_masked_class_losses_hand_computed():
    zero = torch.zeros(1, 2, dtype=torch.float64)
    assert class_loss(zero, torch.tensor([[1.0, 0.0]]), torch.ones(1, 2), "bce").item() == (
        pytest.approx(math.log(2), abs=1e-12))
    zero3 = torch.zeros(1, 3, dtype=torch.float64)
    tags = torch.tensor([[1.0, 1.0, 0.0]])  # softmax CE against [.5, .5, 0]
    assert class_loss(zero3, tags, torch.ones(1, 3)).item() == pytest.approx(math.log(3), 1e-12)
    assert class_loss(LOGITS, tags, KNOWN).item() == pytest.approx(1.239545, abs=1e-6)
    # BCE: mean over the classes (0.504407); class 2 unknown: over the known two (0.410038)
    assert class_loss(LOGITS, ONE_HOT, KNOWN, "bce").item() == pytest.approx(0.504407, abs=1e-6)
    partly = torch.tensor([[1.0, 1.0, 0.0]])
    assert class_loss(LOGITS, ONE_HOT, partly, "bce").item() == pytest.approx(0.410038, abs=1e-6)
    # masked: a labelled row and an unlabelled one; normalised by the labelled count or batch
    logits = torch.tensor([[2.0, 0, 0], [0.0, 3, 0]], dtype=torch.float64)
    tags = torch.tensor([[1.0, 0, 0], [0.0, 0, 0]])
    known = torch.tensor([[1.0, 1, 1], [0.0, 0, 0]])
    assert class_loss(logits, tags, known).item() == pytest.approx(CE, abs=1e-12)
    assert class_loss(logits, tags, known, normalize="batch").item() == pytest.approx(
        CE / 2, abs=1e-12)


def test_all_unlabelled_batch_is_zero_and_masked_labels_change_nothing():
    head = nn.Linear(4, 3)
    x = torch.randn(5, 4)
    for kind in ("softmax", "bce"):
        loss = class_loss(head(x), torch.rand(5, 3).round(), torch.zeros(5, 3), kind)
        assert loss.item() == 0 and torch.isfinite(loss)
        head.zero_grad()
        loss.backward()
        assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in head.parameters())
    known = torch.tensor([[1.0] * 3, [0.0] * 3, [1.0] * 3, [0.0] * 3, [1.0, 0.0, 1.0]])
    tags = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1], [1, 1, 0]])
    other = tags.clone()
    other[1], other[3], other[4, 1] = torch.tensor([1.0, 1, 1]), 0.0, 0.0  # only masked entries
    logits = head(x)
    for kind in ("softmax", "bce"):
        a = class_loss(logits, tags, known, kind)
        b = class_loss(logits, other, known, kind)
        assert a.item() > 0 and torch.equal(a, b)  # bit-identical


def test_lars_one_step_hand_computed():
    w = nn.Parameter(torch.tensor([[3.0, 4.0]]))
    b = nn.Parameter(torch.tensor([3.0, 4.0]))
    w.grad, b.grad = torch.tensor([[0.6, 0.8]]), torch.tensor([0.6, 0.8])
    LARS([w, b], lr=1.0, weight_decay=0.0, momentum=0.9).step()
    # 2-D: trust ratio 1e-3 x 5 / 1 = 0.005; 1-D: plain step (no trust ratio, no weight decay)
    assert torch.allclose(w.data, torch.tensor([[2.997, 3.996]]))
    assert torch.allclose(b.data, torch.tensor([2.4, 3.2]))
    w = nn.Parameter(torch.tensor([[3.0, 4.0]]))
    w.grad = torch.zeros(1, 2)
    opt = LARS([w], lr=1.0, weight_decay=0.1, momentum=0.9)
    opt.step()  # d = 0.1 p, trust = 1e-3 x 5 / 0.5 = 0.01 -> p - 0.001 p
    assert torch.allclose(w.data, torch.tensor([[2.997, 3.996]]))
    z = nn.Parameter(torch.zeros(1, 2))
    z.grad = torch.tensor([[0.6, 0.8]])
    LARS([z], lr=1.0).step()  # ||p|| = 0: ratio 1
    assert torch.allclose(z.data, -torch.tensor([[0.6, 0.8]]))
    # the engine builds it from the config; the released recipe's values ship as configs/mocov3
    cfg = load_config("mocov3")
    assert (cfg.optim.optimizer, cfg.optim.base_lr, cfg.optim.weight_decay,
            cfg.optim.warmup_epochs, cfg.model.temperature, cfg.train.tau_base) == (
        "lars", 0.3, 1e-6, 10.0, 1.0, 0.99)
    opt = make_optimizer(nn.Linear(2, 2), cfg.optim)
    assert isinstance(opt, LARS) and opt.param_groups[0]["trust_coefficient"] == 0.001


TINY = ModelConfig(backbone="resnet18", proj_hidden_dim=16, proj_dim=8, pred_hidden_dim=16)
OPERA = LabelConfig(mode="opera", head_hidden_dim=6)


def _opera_model(method: str = "mocov3") -> ORL:
    torch.manual_seed(0)
    cfg = ModelConfig(**{**TINY.__dict__, "method": method})
    return ORL(cfg, (1.0, 0.0, 0.0), OPERA, num_classes=3).double()


def _batch(n: int = 4):
    torch.manual_seed(1)
    v1, v2 = torch.randn(n, 3, 32, 32).double(), torch.randn(n, 3, 32, 32).double()
    tags = torch.zeros(n, 3, dtype=torch.float64)
    tags[torch.arange(n), torch.arange(n) % 3] = 1
    return v1, v2, {"tags": tags, "known": torch.ones(n, 3, dtype=torch.float64)}


def test_mocov3_modules_as_released():
    model = _opera_model()
    proj = model.online.projector
    assert isinstance(proj, MoCoProjector) and isinstance(proj[-1], nn.BatchNorm1d)
    assert not proj[-1].affine and all(not m.bias for m in proj if isinstance(m, nn.Linear))
    assert not isinstance(model.predictor[-1], nn.BatchNorm1d)  # no last BN on the predictor
    head = model.class_head  # Linear(8, 6) -> BN -> ReLU -> Linear(6, 3), no biases
    assert [type(m) for m in head] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert head[0].weight.shape == (6, 8) and head[3].weight.shape == (3, 6)
    assert head[0].bias is None and head[3].bias is None
    # the momentum encoder is backbone + projector: no copy of predictor or class head
    assert {k.split(".")[1] for k in model.state_dict() if k.startswith("target.")} == {
        "backbone", "projector"}


def test_class_head_gradient_routing():
    model = _opera_model()
    seen = {}
    model.predictor.register_forward_hook(lambda m, i, o: seen.setdefault("pred", []).append(o))
    model.class_head.register_forward_pre_hook(
        lambda m, i: seen.setdefault("head", []).append(i[0]))
    v1, v2, labels = _batch()
    out = model.losses(v1, v2, labels=labels)
    # the head's input is the predictor output tensor itself (before normalisation)
    assert len(seen["head"]) == 2 and all(h is p for h, p in zip(seen["head"], seen["pred"]))
    out["class"].backward(retain_graph=True)
    grads = {n: p.grad for n, p in model.named_parameters()}
    for prefix in ("class_head.", "predictor.", "online.projector.", "online.backbone."):
        assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items()
                   if n.startswith(prefix)), prefix
    assert all(p.grad is None for p in model.target.parameters())
    model.zero_grad(set_to_none=True)
    out["self"].backward()
    assert all(p.grad is None for p in model.class_head.parameters())
    assert all(p.grad is None for p in model.target.parameters())
    assert any(p.grad is not None for p in model.predictor.parameters())


def test_opera_total_is_the_released_combination_on_both_methods():
    for method in ("mocov3", "byol"):
        model = _opera_model(method)
        v1, v2, labels = _batch()
        torch.manual_seed(2)
        loss, metrics = model(v1, v2, labels=labels)
        assert loss.item() == pytest.approx(
            0.5 * metrics["loss_self"].item() + 0.5 * metrics["loss_class"].item(), rel=1e-12)
        assert metrics["labelled"].item() == 1.0
        # an all-unlabelled batch: the class term is exactly 0, the head gets zero gradients
        labels = {"tags": labels["tags"], "known": torch.zeros_like(labels["known"])}
        loss, metrics = model(v1, v2, labels=labels)
        assert metrics["loss_class"].item() == 0.0
        model.zero_grad()
        loss.backward()
        assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in model.class_head.parameters())


def test_scan_term_hand_computed():
    torch.manual_seed(0)
    model = ORL(TINY, (1.0, 0.0, 0.0), LabelConfig(mode="scan", beta=0.5))
    model.target = nn.Identity()  # the neighbour "view" is its target projection
    p = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    t = torch.tensor([[1.0, 0.0], [1.0, 0.0]])     # instance term 0
    view = torch.tensor([[0.0, 1.0], [0.0, 1.0]])  # l = 2 per view: neighbour term 4
    valid = torch.tensor([True, False])
    # sample 0: 0.5 x 0 + 0.5 x 4 = 2; sample 1 has no label neighbour: instance term 0
    assert model.scan_term(p, p, t, t, view, valid).item() == pytest.approx(1.0)
    assert model.scan_term(p, p, t, t, view, ~valid | valid).item() == pytest.approx(2.0)
    # the brief's toy: neighbour targets [0,1] and [1/sqrt 2, 1/sqrt 2] with weights
    # softmax([0.5, 0.9] / 0.1): the one-sample estimate's expectation is 0.305611
    from loaders.labels import neighbor_weights
    w = neighbor_weights([0.5, 0.9], 0.1)
    assert w.sum() == pytest.approx(1.0) and w[0] == pytest.approx(0.017986, abs=1e-6)
    one = torch.tensor([[1.0, 0.0]])
    values = [model.scan_term(one, one, one, one, torch.tensor([z]), torch.tensor([True])).item()
              for z in ([0.0, 1.0], [2 ** -0.5, 2 ** -0.5])]
    assert (w[0] * values[0] + w[1] * values[1]) / 2 == pytest.approx(0.305611, abs=1e-6)

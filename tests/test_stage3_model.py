"""ORL model: three predictors, one shared encoder and EMA target, symmetric terms, lambda weights,
terms switched off, initialisation from a Stage 1 checkpoint."""

from __future__ import annotations

import pytest
import torch

from orl_fast.core import checkpoint
from orl_fast.core.config import ConfigError
from orl_fast.core.defaults import ModelConfig
from orl_fast.core.losses import regression_loss
from orl_fast.core.models import BYOL, IMAGE_ONLY, ORL
from orl_fast.training.stage3 import init_from_stage1

CFG = ModelConfig(backbone="resnet18", proj_hidden_dim=32, proj_dim=16, pred_hidden_dim=32)


def _inputs(seed=0, batch=2):
    g = torch.Generator().manual_seed(seed)
    views = [torch.randn(batch, 3, 16, 16, generator=g) for _ in range(2)]
    patches = [torch.randn(batch, 3, 8, 8, generator=g) for _ in range(4)]
    return views, patches


def _terms(patches, intra=True, inter=True) -> dict:
    """The named patch pairs of ORL.forward: intra = (p, p'), inter = (p1, p2)."""
    out = {}
    if intra:
        out["intra"] = (patches[0], patches[1])
    if inter:
        out["inter"] = (patches[2], patches[3])
    return out


def _model(weights=(1.0, 1.0, 1.0), seed=0):
    torch.manual_seed(seed)
    return ORL(CFG, weights)


def test_three_predictors_and_the_shared_encoder_get_gradients():
    model = _model()
    views, patches = _inputs()
    loss, metrics = model(*views, **_terms(patches))
    loss.backward()
    assert set(metrics) == {"loss_image", "loss_intra", "loss_inter"}
    for name in ("predictor", "intra_predictor", "inter_predictor", "online"):
        grads = [p.grad for p in getattr(model, name).parameters()]
        assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0, name
    assert all(p.grad is None and not p.requires_grad for p in model.target.parameters())
    # three separate predictors, one online encoder and one target for every branch
    assert model.predictor is not model.intra_predictor is not model.inter_predictor
    top = {k.split(".")[0] for k in model.state_dict()}
    assert top == {"online", "target", "predictor", "intra_predictor", "inter_predictor"}


def test_each_term_is_symmetric_and_lambda_weighted():
    views, patches = _inputs()
    model = _model((0.5, 2.0, 3.0))
    loss, m = model(*views, **_terms(patches))
    weighted = 0.5 * m["loss_image"] + 2 * m["loss_intra"] + 3 * m["loss_inter"]
    assert loss.item() == pytest.approx(weighted.item(), rel=1e-6)
    # swapping the two inputs of every pair leaves every term unchanged
    _, ms = model(views[1], views[0], intra=(patches[1], patches[0]),
                  inter=(patches[3], patches[2]))
    for k in m:
        assert ms[k].item() == pytest.approx(m[k].item(), rel=1e-6)
    # a term is L(q(a), z'(b)) + L(q(b), z'(a)) with its own predictor
    a, b = patches[0], patches[1]
    q = model.intra_predictor
    manual = (regression_loss(q(model.online(a)), model.target(b))
              + regression_loss(q(model.online(b)), model.target(a)))
    assert m["loss_intra"].item() == pytest.approx(manual.item(), rel=1e-5)
    # unit weights: the plain sum of the three terms
    loss1, m1 = _model()(*views, **_terms(patches))
    assert loss1.item() == pytest.approx(sum(v.item() for v in m1.values()), rel=1e-6)


@pytest.mark.parametrize("weights, attrs", [
    ((1, 1, 0), {"predictor", "intra_predictor"}),
    ((1, 0, 1), {"predictor", "inter_predictor"}),
    ((0, 1, 1), {"intra_predictor", "inter_predictor"}),
    ((1, 0, 0), {"predictor"}),
])
def test_terms_off_have_no_predictor_and_no_patches(weights, attrs):
    model = _model(weights)
    present = {a for a in ("predictor", "intra_predictor", "inter_predictor")
               if getattr(model, a) is not None}
    assert present == attrs
    views, patches = _inputs()
    terms = _terms(patches, intra=weights[1] > 0, inter=weights[2] > 0)
    loss, metrics = model(*views, **terms)
    loss.backward()  # every parameter that exists takes part (DDP needs no unused parameters)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert len(metrics) == sum(w > 0 for w in weights)
    # a term given with weight 0, or missing with weight > 0, is an error naming it
    for term, on in (("intra", weights[1] > 0), ("inter", weights[2] > 0)):
        wrong = {**terms}
        if on:
            del wrong[term]
        else:
            wrong[term] = (patches[0], patches[1])
        with pytest.raises(ValueError, match=f"^{term}: {'missing' if on else 'given'}"):
            model(*views, **wrong)


def test_image_only_is_byol():
    """Stage 1's model: ORL with loss weights (1, 0, 0) has BYOL's modules, keys and loss."""
    byol, orl = BYOL(CFG), ORL(CFG, IMAGE_ONLY)
    assert list(orl.state_dict()) == list(byol.state_dict())
    orl.load_state_dict(byol.state_dict())
    views, _ = _inputs()
    assert orl(*views)[0].item() == pytest.approx(byol(*views)[0].item(), rel=1e-6)


def test_ema_updates_the_one_target():
    model = _model()
    before = [p.clone() for p in model.target.parameters()]
    with torch.no_grad():
        for p in model.online.parameters():
            p.add_(1.0)
    model.update_target(0.9)
    for b, t, o in zip(before, model.target.parameters(), model.online.parameters()):
        assert torch.allclose(t, 0.9 * b + 0.1 * o, atol=1e-6)


def test_init_from_a_stage1_checkpoint(tmp_path):
    torch.manual_seed(1)
    byol = BYOL(CFG)
    with torch.no_grad():
        for p in byol.target.parameters():
            p.mul_(0.5)  # a target that differs from the online network, as after training
    checkpoint.save(str(tmp_path), 7, {"stage": "stage1", "step": 7, "model": byol.state_dict()},
                    keep_last=1)
    model = _model()
    init_from_stage1(model, str(tmp_path))
    own, ref = model.state_dict(), byol.state_dict()
    for k, v in ref.items():
        assert torch.equal(own[k], v), k
    fresh = _model().state_dict()
    for k in own:
        if k.startswith(("intra_predictor.", "inter_predictor.")):
            assert torch.equal(own[k], fresh[k])  # not taken from the checkpoint
    other = BYOL(ModelConfig(backbone="resnet18", proj_hidden_dim=32, proj_dim=8,
                             pred_hidden_dim=32))
    checkpoint.save(str(tmp_path / "other"), 1, {"model": other.state_dict()}, keep_last=1)
    with pytest.raises(ConfigError, match="^ckpt: .* another model .*size mismatch"):
        init_from_stage1(_model(), str(tmp_path / "other"))
    checkpoint.save(str(tmp_path / "empty"), 1, {"model": {}}, keep_last=1)
    with pytest.raises(ConfigError, match="^ckpt: .* not a Stage 1 checkpoint"):
        init_from_stage1(_model(), str(tmp_path / "empty"))

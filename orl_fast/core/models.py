"""Networks: torchvision ResNet backbone, BYOL projector/predictor MLPs, online/target encoders.

State-dict layout (every checkpoint of every stage uses it):
``online.backbone.*``, ``online.projector.*``, ``predictor.*``, ``target.backbone.*``,
``target.projector.*``; Stage 3 adds ``intra_predictor.*`` and ``inter_predictor.*``; OPERA
(``label.mode=opera``) adds ``class_head.*`` (and ``roi_class_head.*``), which exports leave out
with everything but the backbone.
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
from orl_fast.core.defaults import LabelConfig, ModelConfig
from orl_fast.core.errors import InputError
from orl_fast.core.extras import require
from orl_fast.core.losses import class_loss, infonce_loss, regression_loss, regression_losses

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


class MoCoProjector(MLP):
    """MoCo-v3's ResNet projector as released: the MLP above, then BatchNorm without affine
    parameters (its predictor is the plain MLP)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, init: str = "official"):
        super().__init__(in_dim, hidden_dim, out_dim, init)
        self.append(nn.BatchNorm1d(out_dim, affine=False))


class Encoder(nn.Module):
    """Backbone + projector (shared by the global and the local branches in ORL)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.backbone, self.feat_dim = build_backbone(cfg.backbone, cfg.stem, cfg.init)
        projector = MoCoProjector if cfg.method == "mocov3" else MLP
        self.projector = projector(self.feat_dim, cfg.proj_hidden_dim, cfg.proj_dim, cfg.init)

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
        self.method, self.temperature = cfg.method, cfg.temperature

    def pair_outputs(self, predictor: nn.Module, v1: torch.Tensor, v2: torch.Tensor,
                     diagnostics: dict | None = None) -> tuple[torch.Tensor, ...]:
        """(q(v1), q(v2), z'(v1), z'(v2)): the predictions of two views through ``predictor``
        and their target projections (no gradient).

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
        return p1, p2, t1, t2

    def objective(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """One direction of the base objective: 2 - 2 cos (byol) or InfoNCE (mocov3)."""
        if self.method == "mocov3":
            return infonce_loss(prediction, target, self.temperature)
        return regression_loss(prediction, target)

    def pair_loss(self, predictor: nn.Module, v1: torch.Tensor, v2: torch.Tensor,
                  diagnostics: dict | None = None) -> torch.Tensor:
        """Symmetric loss of two views through ``predictor``: L(q(v1), z'(v2)) + L(q(v2), z'(v1))."""
        p1, p2, t1, t2 = self.pair_outputs(predictor, v1, v2, diagnostics)
        return self.objective(p1, t2) + self.objective(p2, t1)

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

    Label-aware modes (``label``, a :class:`LabelConfig`, with ``num_classes``): ``opera`` adds
    a class head on the image predictor's outputs of both views and takes ``labels`` (``tags``
    and ``known`` [B, C]; with ``roi_head``, ``roi_intra`` / ``roi_inter`` [B, 2] class indices,
    -1 ignored); ``scan`` takes ``neighbor`` = (one global view of a label neighbour [B, ...],
    valid [B] bool) and mixes the neighbour term into the image term. ``none`` is the model
    above, unchanged.
    """

    TERMS = (("image", "predictor"), ("intra", "intra_predictor"), ("inter", "inter_predictor"))

    def __init__(self, cfg: ModelConfig, loss_weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
                 label: LabelConfig | None = None, num_classes: int = 0):
        super().__init__(cfg)  # online, target and the image predictor
        self.loss_weights = tuple(float(w) for w in loss_weights)
        w_image, w_intra, w_inter = self.loss_weights
        self.intra_predictor = (MLP(cfg.proj_dim, cfg.pred_hidden_dim, cfg.proj_dim, cfg.init)
                                if w_intra > 0 else None)
        self.inter_predictor = (MLP(cfg.proj_dim, cfg.pred_hidden_dim, cfg.proj_dim, cfg.init)
                                if w_inter > 0 else None)
        if w_image == 0:
            self.predictor = None
        self.label = label if label is not None and label.mode != "none" else None
        self.class_head = self.roi_class_head = None
        if self.label is not None and self.label.mode == "opera":
            if num_classes < 1:
                raise ValueError("label.mode=opera needs num_classes >= 1 (the vocabulary)")
            self.class_head = MLP(cfg.proj_dim, self.label.head_hidden_dim, num_classes, cfg.init)
            if self.label.roi_head and (w_intra > 0 or w_inter > 0):
                self.roi_class_head = MLP(cfg.proj_dim, self.label.head_hidden_dim, num_classes, cfg.init)

    def forward(self, v1: torch.Tensor, v2: torch.Tensor,
                intra: tuple[torch.Tensor, torch.Tensor] | None = None,
                inter: tuple[torch.Tensor, torch.Tensor] | None = None,
                labels: dict[str, torch.Tensor] | None = None,
                neighbor: tuple[torch.Tensor, torch.Tensor] | None = None,
                diagnostics: bool = False) -> tuple[torch.Tensor, dict]:
        if self.label is not None:
            return self.labelled_forward(v1, v2, intra, inter, labels, neighbor, diagnostics)
        pairs = {"image": (v1, v2), "intra": intra, "inter": inter}
        loss, metrics = 0.0, {}
        extra: dict | None = {} if diagnostics else None
        for (name, attr), weight in zip(self.TERMS, self.loss_weights):
            pair = self._pair(pairs, name, weight)
            if weight == 0:
                continue
            term = self.pair_loss(getattr(self, attr), *pair,
                                  diagnostics=extra if name == "image" else None)
            loss = loss + weight * term
            metrics[f"loss_{name}"] = term.detach()
        return loss, {**metrics, **(extra or {})}

    def _pair(self, pairs: dict, name: str, weight: float):
        pair = pairs[name]
        if name != "image" and (pair is None) != (weight == 0):
            raise ValueError(f"{name}: {'missing' if pair is None else 'given'} with loss "
                             f"weight {weight} (loss weights {self.loss_weights})")
        return pair

    def losses(self, v1: torch.Tensor, v2: torch.Tensor,
               intra: tuple[torch.Tensor, torch.Tensor] | None = None,
               inter: tuple[torch.Tensor, torch.Tensor] | None = None,
               labels: dict[str, torch.Tensor] | None = None,
               neighbor: tuple[torch.Tensor, torch.Tensor] | None = None,
               diagnostics: dict | None = None) -> dict[str, torch.Tensor]:
        """The terms of a label-aware mode, with their graphs: ``self`` (the weighted
        self-supervised loss, SCAN's neighbour term mixed into its image term), ``image``,
        ``intra``, ``inter`` (the unweighted terms trained), and for OPERA ``class`` (the class
        loss of both views) and ``roi_class`` (the extension's, 0 without it)."""
        lab = self.label
        pairs = {"image": (v1, v2), "intra": intra, "inter": inter}
        out: dict[str, torch.Tensor] = {}
        total = 0.0
        predictions = {}
        for (name, attr), weight in zip(self.TERMS, self.loss_weights):
            pair = self._pair(pairs, name, weight)
            if weight == 0:
                continue
            p1, p2, t1, t2 = self.pair_outputs(getattr(self, attr), *pair,
                                               diagnostics if name == "image" else None)
            predictions[name] = (p1, p2)
            if name == "image" and lab.mode == "scan":
                if neighbor is None:
                    raise ValueError("label.mode=scan: the neighbour view is missing")
                out[name] = self.scan_term(p1, p2, t1, t2, *neighbor)
                out["scan_neighbors"] = neighbor[1].float().mean()
            else:
                out[name] = self.objective(p1, t2) + self.objective(p2, t1)
            total = total + weight * out[name]
        out["self"] = total
        if lab.mode == "opera":
            if labels is None:
                raise ValueError("label.mode=opera: labels are missing")
            tags, known = labels["tags"], labels["known"]
            p1, p2 = predictions["image"]
            out["class"] = sum(class_loss(self.class_head(p), tags, known, lab.class_loss,
                                          lab.normalize) for p in (p1, p2))
            out["roi_class"] = sum(self.roi_class_loss(predictions[n], labels[f"roi_{n}"])
                                   for n in ("intra", "inter")
                                   if self.roi_class_head is not None and n in predictions)
            out["labelled"] = (known.sum(1) > 0).float().mean()
        return out

    def labelled_forward(self, v1, v2, intra, inter, labels, neighbor,
                         diagnostics: bool = False) -> tuple[torch.Tensor, dict]:
        """(loss, metrics) of a label-aware mode: OPERA's self_weight x self + class_weight x
        (class + roi_class); SCAN's self-supervised loss with the neighbour term."""
        extra: dict | None = {} if diagnostics else None
        out = self.losses(v1, v2, intra, inter, labels, neighbor, extra)
        loss = out["self"]
        if self.label.mode == "opera":
            loss = (self.label.self_weight * loss
                    + self.label.class_weight * (out["class"] + out["roi_class"]))
        metrics = {(k if k in ("labelled", "scan_neighbors") else f"loss_{k}"): torch.as_tensor(
            v).detach() for k, v in out.items()}
        return loss, {**metrics, **(extra or {})}

    def scan_term(self, p1: torch.Tensor, p2: torch.Tensor, t1: torch.Tensor, t2: torch.Tensor,
                  view: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """SCAN's image term [reconstructed]: per sample (1 - beta) x (l(p1, z'2) + l(p2, z'1))
        + beta x (l(p1, z'_j) + l(p2, z'_j)), z'_j the target projection of the neighbour's
        view; a sample without a label neighbour (``valid`` false) keeps the instance term."""
        with torch.no_grad():
            tn = self.target(view)
        instance = regression_losses(p1, t2) + regression_losses(p2, t1)
        neighbour = regression_losses(p1, tn) + regression_losses(p2, tn)
        beta = valid.to(instance.dtype) * self.label.beta
        return ((1 - beta) * instance + beta * neighbour).mean()

    def roi_class_loss(self, predictions: tuple[torch.Tensor, torch.Tensor],
                       roi_labels: torch.Tensor) -> torch.Tensor:
        """The extension's class loss of a RoI pair: each patch's class index (-1: ignored)."""
        total = 0.0
        for i, p in enumerate(predictions):
            logits = self.roi_class_head(p)
            y = roi_labels[:, i]
            known = (y >= 0).to(logits.dtype)[:, None].expand_as(logits)
            tags = F.one_hot(y.clamp_min(0), logits.shape[1]).to(logits.dtype)
            total = total + class_loss(logits, tags, known, "softmax", self.label.normalize)
        return total

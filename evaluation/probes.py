"""kNN and linear-probe classification on the cached frozen features.

- kNN (Wu et al. 2018, the usual self-supervised kNN monitor): cosine similarity of L2-normalised
  features, the k most similar training images vote for their present classes with weight
  exp(cos / T). Scores give per-class AP (multi-label sets such as VOC07) and, on single-label
  sets, top-1 accuracy.
- Linear probe: one linear layer on the frozen features, standardised with the training set's
  mean and std (a non-affine BatchNorm, as MAE's linear probe), trained with the paper's recipe:
  SGD, batch 256, lr 0.01 x batch / 256, momentum 0.9, weight decay 1e-4, lr x 0.1 at 1/4, 2/4
  and 3/4 of the epochs; softmax cross-entropy on single-label sets, per-class logistic loss on
  multi-label sets (difficult labels masked out). No augmentation: the features are the cached
  evaluation views (``eval.view``, ``eval.pooling``).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from evaluation.features import resolve_device
from orl_fast.core.defaults import EvalConfig


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """torch on one CPU thread for the block: reductions (matrix products, sums) then run in one
    fixed order, so a probe's numbers do not depend on the machine's core count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def deterministic(fn):
    """Run ``fn`` on one thread: the same inputs and seed give bit-identical scores."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with single_thread():
            return fn(*args, **kwargs)
    return wrapper


@deterministic
@torch.no_grad()
def knn_scores(train_x: np.ndarray, train_labels: np.ndarray, test_x: np.ndarray, k: int,
               temperature: float, device: torch.device, chunk: int = 1024) -> np.ndarray:
    """(test images x classes) weighted votes of the k nearest training images."""
    tr = F.normalize(torch.as_tensor(train_x, dtype=torch.float32, device=device), dim=1)
    te = F.normalize(torch.as_tensor(test_x, dtype=torch.float32, device=device), dim=1)
    votes = torch.as_tensor(train_labels == 1, dtype=torch.float32, device=device)
    k = min(k, len(tr))
    out = []
    for start in range(0, len(te), chunk):
        sim, idx = (te[start:start + chunk] @ tr.T).topk(k, dim=1)
        w = (sim / temperature).exp()
        out.append(torch.einsum("nk,nkc->nc", w, votes[idx]).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, train_labels.shape[1]), np.float32)


@deterministic
def linear_probe_scores(train_x: np.ndarray, train_labels: np.ndarray, test_x: np.ndarray,
                        cfg: EvalConfig) -> np.ndarray:
    """Train the linear probe and return its test logits (images x classes)."""
    lc = cfg.linear
    device = resolve_device(cfg.device)
    x = torch.as_tensor(train_x, dtype=torch.float32, device=device)
    mean, std = x.mean(0), x.std(0, unbiased=False) + 1e-6
    x = (x - mean) / std
    xt = (torch.as_tensor(test_x, dtype=torch.float32, device=device) - mean) / std
    labels = torch.as_tensor(train_labels, device=device)
    single = bool(((labels == 1).sum(1) == 1).all())

    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    head = torch.nn.Linear(x.shape[1], labels.shape[1]).to(device)
    with torch.no_grad():  # seeded init (nn.Linear's default draws from the global RNG)
        head.weight.copy_(torch.randn(head.weight.shape, generator=gen) * 0.01)
        head.bias.zero_()
    lr = lc.lr * lc.batch_size / 256
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=lc.momentum,
                          weight_decay=lc.weight_decay)
    milestones = [round(lc.epochs * q / 4) for q in (1, 2, 3)]
    for epoch in range(lc.epochs):
        for g in opt.param_groups:
            g["lr"] = lr * 0.1 ** sum(epoch >= m for m in milestones)
        perm = torch.randperm(len(x), generator=gen).to(device)
        for start in range(0, len(x), lc.batch_size):
            i = perm[start:start + lc.batch_size]
            loss = label_loss(head(x[i]), labels[i], single)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    with torch.no_grad():
        return head(xt).cpu().numpy()


def label_loss(logits: torch.Tensor, labels: torch.Tensor, single: bool) -> torch.Tensor:
    """The classification loss of (images x classes) logits for labels in VOC's encoding (1 / 0
    difficult / -1): softmax cross-entropy on single-label sets, else the per-class logistic loss
    averaged over the labels that are not difficult."""
    if single:
        return F.cross_entropy(logits, labels.argmax(1))
    mask = (labels != 0).float()
    return (F.binary_cross_entropy_with_logits(logits, (labels == 1).float(), reduction="none")
            * mask).sum() / mask.sum().clamp_min(1)


def knn_protocol(cfg: EvalConfig) -> dict:
    return {"task": "weighted kNN on frozen features", "k": cfg.knn.k,
            "temperature": cfg.knn.temperature,
            "vote": "sum of exp(cos / T) over the k nearest training images, per present class",
            "metric": "per-class AP and mAP (area under the PR curve; 11-point beside it); "
                      "top-1 accuracy on single-label sets"}


def linear_protocol(cfg: EvalConfig) -> dict:
    lc = cfg.linear
    return {"task": "linear probe on frozen features (the cached evaluation views, no "
                    "augmentation)",
            "features": "standardised with the training set's mean and std",
            "optimiser": f"SGD lr {lc.lr} x batch/256, momentum {lc.momentum}, weight decay "
                         f"{lc.weight_decay}, batch {lc.batch_size}, {lc.epochs} epochs, lr x 0.1 "
                         "at 1/4, 2/4, 3/4 of the epochs",
            "loss": "softmax cross-entropy (single-label) / masked per-class logistic "
                    "(multi-label)", "seed": cfg.seed,
            "metric": "per-class AP and mAP (area under the PR curve; 11-point beside it); "
                      "top-1 accuracy on single-label sets"}

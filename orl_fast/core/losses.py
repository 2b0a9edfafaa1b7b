"""The losses: BYOL's regression loss (2 - 2 cos), the building block of every ORL term;
MoCo-v3's InfoNCE (the other base objective); the masked class loss of the label-aware modes."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from orl_fast.core.distributed import gather_rows


def regression_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of 2 - 2 cos(prediction, target); no gradient flows into target.

    Computed in at least fp32 whatever the autocast dtype: the loss is a small difference in 0..4.
    """
    return regression_losses(prediction, target).mean()


def regression_losses(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """2 - 2 cos(prediction, target) per row (at least fp32); no gradient flows into target."""
    dtype = torch.promote_types(prediction.dtype, torch.float32)
    p = F.normalize(prediction.to(dtype), dim=-1)
    z = F.normalize(target.detach().to(dtype), dim=-1)
    return 2 - 2 * (p * z).sum(dim=-1)


def infonce_loss(query: torch.Tensor, key: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo-v3's contrastive loss of one direction, as released: 2T x CE(n(q) . n(k)^T / T,
    arange(B) + B x rank), the keys of every rank gathered (no gradient flows into them: the
    other ranks' keys are the negatives), the queries this rank's. In at least fp32."""
    dtype = torch.promote_types(query.dtype, torch.float32)
    q = F.normalize(query.to(dtype), dim=1)
    k, rank = gather_rows(F.normalize(key.detach().to(dtype), dim=1))
    labels = torch.arange(len(q), device=q.device) + len(q) * rank
    return F.cross_entropy(q @ k.T / temperature, labels) * (2 * temperature)


def class_loss(logits: torch.Tensor, tags: torch.Tensor, known: torch.Tensor,
               kind: str = "softmax", normalize: str = "labelled") -> torch.Tensor:
    """The class loss of a batch with partial labels, in at least fp32.

    ``tags`` [B, C] is 1 where a class is present; ``known`` [B, C] is 1 where its presence is
    known (a row of 0s: an unlabelled sample; VOC's difficult-only classes: 0). ``softmax``:
    CE against the known tags normalised to sum 1 (for one tag, the usual CE); a sample without
    a known tag is masked. ``bce``: binary CE averaged over the known classes; a sample without
    a known class is masked. The mean is over the unmasked samples (``labelled``; 0, not NaN,
    when there is none) or over the batch (``batch``). Masked samples contribute exactly 0,
    whatever their ``tags``.
    """
    dtype = torch.promote_types(logits.dtype, torch.float32)
    x, known = logits.to(dtype), known.to(dtype)
    tags = torch.where(known > 0, tags.to(dtype), torch.zeros_like(known))
    if kind == "softmax":
        count = tags.sum(1)
        per_sample = -((tags / count.clamp_min(1)[:, None]) * F.log_softmax(x, dim=1)).sum(1)
    elif kind == "bce":
        count = known.sum(1)
        bce = F.binary_cross_entropy_with_logits(x, tags, reduction="none")
        per_sample = (bce * known).sum(1) / count.clamp_min(1)
    else:
        raise ValueError(f"unknown class loss {kind!r} (softmax or bce)")
    mask = (count > 0).to(dtype)
    denom = mask.sum().clamp_min(1) if normalize == "labelled" else float(len(x))
    return (mask * per_sample).sum() / denom

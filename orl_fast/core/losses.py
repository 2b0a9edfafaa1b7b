"""BYOL's regression loss (2 - 2 cos), the building block of every ORL term."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def regression_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of 2 - 2 cos(prediction, target); no gradient flows into target.

    Computed in at least fp32 whatever the autocast dtype: the loss is a small difference in 0..4.
    """
    dtype = torch.promote_types(prediction.dtype, torch.float32)
    p = F.normalize(prediction.to(dtype), dim=-1)
    z = F.normalize(target.detach().to(dtype), dim=-1)
    return (2 - 2 * (p * z).sum(dim=-1)).mean()

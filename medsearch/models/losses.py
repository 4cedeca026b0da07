"""Training losses: symmetric InfoNCE with a learnable temperature (and
multi-positive targets plus extra hard-negative texts), and the auxiliary
attribute losses of the heads.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def info_nce(image: torch.Tensor, text: torch.Tensor, positives: torch.Tensor,
             logit_scale: torch.Tensor, max_scale: float = 100.0) -> torch.Tensor:
    """Symmetric InfoNCE with soft (multi-positive) targets.

    Args:
        image: (B, D) L2-normalised image embeddings.
        text: (B + H, D) L2-normalised text embeddings: the batch's B texts, then H hard
            negatives that only appear as extra candidates for the image -> text direction.
        positives: (B, B + H) bool; positives[i, j] when text j describes image i. Each
            row and each of the first B columns must hold at least one positive.
        logit_scale: log of the inverse temperature (learnable scalar).

    Returns:
        scalar loss: mean of the image -> text and text -> image cross-entropies.
    """
    b = image.shape[0]
    scale = logit_scale.exp().clamp(max=max_scale)
    logits = scale * image @ text.T
    pos = positives.float()
    i2t = -(F.log_softmax(logits, dim=1) * pos / pos.sum(1, keepdim=True)).sum(1).mean()
    cols = pos[:, :b].T
    t2i = -(F.log_softmax(logits[:, :b].T, dim=1) * cols / cols.sum(1, keepdim=True)).sum(1).mean()
    return (i2t + t2i) / 2


def attribute_loss(logits: dict[str, torch.Tensor], targets: dict[str, torch.Tensor],
                   pos_weight: float = 4.0) -> torch.Tensor:
    """Binary cross-entropy of the three multi-label heads, summed.

    Findings are sparse (most slots are absent), so positive slots are weighted up.

    Args:
        logits / targets: ``presence`` (B, T, L), ``density`` (B, 4), ``size`` (B, 5).
    """
    total = logits["presence"].new_zeros(())
    for key in ("presence", "density", "size"):
        weight = torch.tensor(pos_weight, device=logits[key].device)
        total = total + F.binary_cross_entropy_with_logits(logits[key], targets[key], pos_weight=weight)
    return total

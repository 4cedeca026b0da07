"""The dual encoder: image tower + attribute heads + projections + text projection.

Only this module's parameters are trained and shipped; the frozen MiniLM is
loaded from its package when text must be encoded.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from medsearch.models.heads import AttributeHeads
from medsearch.models.text_tower import TextProjection

EMBED_DIM = 256


def build_image_encoder(arch: str, in_channels: int = 2) -> nn.Module:
    """The image tower named ``arch``: "ctnet" (MONAI blocks, shipped) or "resnet10" (MONAI ResNet)."""
    if arch == "ctnet":
        from medsearch.models.image_tower import CTEncoder

        return CTEncoder(in_channels)
    if arch == "resnet10":
        from medsearch.models.image_tower_resnet import ResNetEncoder

        return ResNetEncoder(in_channels)
    from medsearch.errors import ConfigError

    raise ConfigError(f"Unknown image-tower architecture '{arch}'.", "Use 'ctnet' or 'resnet10'.")


class DualEncoder(nn.Module):
    """Image side and text projection of the CLIP-style model.

    Args:
        arch: image-tower architecture name.
        dim: shared embedding dimension.

    Shapes:
        ``encode_image(x)``: x (B, 2, Z, Y, X) -> dict ``embedding`` (B, dim) L2-normalised,
        ``spatial`` (B, C, z, y, x), and head logits (see :class:`AttributeHeads`);
        ``encode_text(s)``: MiniLM sentence vectors (B, 384) -> (B, dim) L2-normalised.
    """

    def __init__(self, arch: str = "ctnet", dim: int = EMBED_DIM):
        super().__init__()
        self.arch = arch
        self.image = build_image_encoder(arch)
        pooled = self.image.pooled_dim
        self.image_proj = nn.Sequential(nn.Linear(pooled, 512), nn.GELU(), nn.Linear(512, dim))
        self.heads = AttributeHeads(pooled)
        self.text_proj = TextProjection(dim)
        # CLIP's learnable temperature, initialised at 1/0.07.
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encode_image(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        pooled, fmap = self.image(x)
        out = dict(self.heads(pooled))
        out["embedding"] = F.normalize(self.image_proj(pooled), dim=-1)
        out["spatial"] = fmap
        return out

    def encode_text(self, sentence: torch.Tensor) -> torch.Tensor:
        return self.text_proj(sentence)

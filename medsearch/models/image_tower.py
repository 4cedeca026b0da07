"""The image tower: a 3D CNN built from MONAI blocks (the shipped candidate).

Two candidates were compared (docs/model.md): this network, made of MONAI
``Convolution`` and ``ResidualUnit`` blocks, and MONAI's own ``ResNet``
(:mod:`medsearch.models.image_tower_resnet`).  Both return the same pair: a
pooled feature vector and the last spatial feature map.
"""

from __future__ import annotations

import torch
from monai.networks.blocks import Convolution, ResidualUnit
from torch import nn


class _Stage(nn.Sequential):
    """One downsampling residual stage (stride 2, then ``depth - 1`` more units)."""

    def __init__(self, cin: int, cout: int, depth: int):
        units = [ResidualUnit(3, cin, cout, strides=2, subunits=2, norm="batch", act="relu")]
        units += [ResidualUnit(3, cout, cout, strides=1, subunits=2, norm="batch", act="relu")
                  for _ in range(depth - 1)]
        super().__init__(*units)


class CTEncoder(nn.Module):
    """Residual 3D CNN from MONAI blocks.

    Args:
        in_channels: input channels (2: lung and mediastinal windows).
        widths: channels of the stem and of each stage.
        depths: residual units per stage.

    Shapes:
        input (B, in_channels, Z, Y, X), e.g. (B, 2, 48, 80, 80);
        returns ``pooled`` (B, 2 * widths[-1]) (mean and max pooling of the last stage, at 1/32)
        and ``spatial``, the map of the stage before, (B, widths[-2], Z/16, Y/16, X/16),
        e.g. (B, 64, 3, 5, 5): finer, for localisation and reranking (sizes round up).
    """

    def __init__(self, in_channels: int = 2, widths: tuple[int, ...] = (8, 16, 32, 64, 128),
                 depths: tuple[int, ...] = (1, 1, 1, 1)):
        super().__init__()
        self.stem = Convolution(3, in_channels, widths[0], strides=2, kernel_size=3, norm="batch", act="relu")
        self.stages = nn.Sequential(*[_Stage(widths[i], widths[i + 1], depths[i]) for i in range(len(depths))])
        self.out_channels = widths[-2]
        self.pooled_dim = 2 * widths[-1]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        spatial = self.stages[:-1](self.stem(x))
        last = self.stages[-1](spatial)
        pooled = torch.cat([last.mean(dim=(2, 3, 4)), last.amax(dim=(2, 3, 4))], dim=1)
        return pooled, spatial

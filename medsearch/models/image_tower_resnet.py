"""The second image-tower candidate: MONAI's ``ResNet`` (a narrow ResNet-10).

Kept so the comparison in docs/model.md can be rerun (``bench/bench_model.py
--compare``); the shipped model uses :class:`medsearch.models.image_tower.CTEncoder`.
"""

from __future__ import annotations

import torch
from monai.networks.nets import ResNet
from torch import nn


class ResNetEncoder(nn.Module):
    """MONAI ResNet-10 (basic blocks, one per layer) with narrow widths.

    Args:
        in_channels: input channels.
        widths: channels of the four layers.

    Shapes:
        input (B, in_channels, Z, Y, X); returns ``pooled`` (B, 2 * widths[-1]) and
        ``spatial`` (B, widths[-1], Z/16, Y/16, X/16) (stem stride 2, no max-pool, three strided layers).
    """

    def __init__(self, in_channels: int = 2, widths: tuple[int, ...] = (16, 32, 64, 128)):
        super().__init__()
        self.net = ResNet("basic", [1, 1, 1, 1], list(widths), spatial_dims=3, n_input_channels=in_channels,
                          conv1_t_size=3, conv1_t_stride=2, no_max_pool=True, feed_forward=False)
        self.out_channels = widths[-1]
        self.pooled_dim = 2 * widths[-1]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.net
        x = n.act(n.bn1(n.conv1(x)))
        fmap = n.layer4(n.layer3(n.layer2(n.layer1(x))))
        pooled = torch.cat([fmap.mean(dim=(2, 3, 4)), fmap.amax(dim=(2, 3, 4))], dim=1)
        return pooled, fmap

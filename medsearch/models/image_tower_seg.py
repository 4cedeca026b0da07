"""The image tower ``ctseg``: a small 3-D U-Net from MONAI blocks with voxel-level heads.

It sees the windowed canonical volume plus three coordinate channels (so a
voxel knows where it is in the chest: the lobes of the synthetic and of real
anatomy are largely a matter of position) and predicts, on a grid of half the
canonical resolution, per voxel:

- ``region`` logits (6): outside the lungs, or one of :data:`medsearch.vocab.LOBES`;
- ``types`` logits (T = len(FINDING_TYPES)): a finding of that type lies here (multi-label);
- ``density`` logits (4, :data:`medsearch.vocab.DENSITIES`);
- ``logsize`` (1): log of the diameter (mm) of the finding that lies here.

The study-level attributes and the embedding are computed from these maps by
:mod:`medsearch.models.slots`; the maps themselves train on the synthetic
archive's masks (:mod:`medsearch.models.dense_data`), which is what lets a CPU
learn the task in minutes rather than days.
"""

from __future__ import annotations

import torch
from monai.networks.blocks import Convolution, ResidualUnit
from torch import nn
from torch.nn import functional as F

from medsearch import vocab
from medsearch.models.slots import VOXEL_FLOOR, image_slots

N_REGIONS = 1 + len(vocab.LOBES)
N_TYPES = len(vocab.FINDING_TYPES)
N_DENSITIES = len(vocab.DENSITIES)
#: Output channels: region, types, density, logsize.
HEAD_SPLIT = (N_REGIONS, N_TYPES, N_DENSITIES, 1)
#: Finding types whose logits come from the focal head (:class:`_FocalHead`) when the tower has one.
FOCAL_TYPES: tuple[str, ...] = ("nodule",)


def _coords(x: torch.Tensor) -> torch.Tensor:
    """Three channels of normalised (z, y, x) position in [-1, 1], shaped like ``x``'s grid."""
    b, _, z, y, w = x.shape
    axes = [torch.linspace(-1.0, 1.0, n, device=x.device, dtype=x.dtype) for n in (z, y, w)]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"))
    return grid[None].expand(b, -1, -1, -1, -1)


class _Down(nn.Sequential):
    """One residual unit that halves the grid."""

    def __init__(self, cin: int, cout: int):
        super().__init__(ResidualUnit(3, cin, cout, strides=2, subunits=2, norm="batch", act="relu"))


class _Up(nn.Module):
    """Trilinear upsampling to the skip's grid, concatenation, one residual unit."""

    def __init__(self, cin: int, cskip: int, cout: int):
        super().__init__()
        self.unit = ResidualUnit(3, cin + cskip, cout, strides=1, subunits=2, norm="batch", act="relu")

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[2:], mode="trilinear", align_corners=False)
        return self.unit(torch.cat([x, skip], dim=1))


class _FocalHead(nn.Module):
    """A second detector for small focal findings (:data:`FOCAL_TYPES`), trained on crops centred on them.

    The U-Net's whole-volume loss gives a 6-20 mm nodule's few voxels almost no say against ~40,000 others,
    and its nodule channel stays flat (docs/model.md).  This head is trained separately (stage 1c,
    :mod:`medsearch.models.train_focal`) on crops of which half hold a nodule, so every step teaches it
    nodule against vessel.  It sees the windows at full canonical resolution (one strided convolution,
    where the U-Net's stem has already blurred a nodule into lung texture), the decoder's features for
    context and the region probabilities (inside the lungs or not).

    Args:
        in_channels: image channels (the windows).
        decoder_width: channels of the U-Net's last decoder stage.
        width: channels of the head's two residual units.

    Shapes:
        image (B, in_channels, Z, Y, X), decoder (B, decoder_width, Z/2, Y/2, X/2), region logits
        (B, N_REGIONS, Z/2, Y/2, X/2) -> logits (B, len(FOCAL_TYPES), Z/2, Y/2, X/2).
    """

    def __init__(self, in_channels: int, decoder_width: int, width: int):
        super().__init__()
        self.stem = Convolution(3, in_channels, 16, strides=2, kernel_size=3, norm="batch", act="relu")
        self.units = nn.Sequential(
            ResidualUnit(3, 16 + decoder_width + N_REGIONS, width, strides=1, subunits=2, norm="batch", act="relu"),
            ResidualUnit(3, width, width, strides=1, subunits=2, norm="batch", act="relu"))
        self.out = nn.Conv3d(width, len(FOCAL_TYPES), kernel_size=1)

    def forward(self, image: torch.Tensor, decoder: torch.Tensor, region_logits: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.stem(image), decoder, torch.softmax(region_logits, dim=1)], dim=1)
        return self.out(self.units(x))


class SegEncoder(nn.Module):
    """3-D U-Net (MONAI ``Convolution`` + ``ResidualUnit``) with voxel-level heads.

    Args:
        in_channels: image channels (5: the windows of ``preprocess.SEG_WINDOWS``); three
            coordinate channels are added inside.
        widths: channels at 1/2, 1/4, 1/8 and 1/16 of the input grid.
        detail_width: channels of the detail stage before the heads (0: none, the heads read the
            decoder directly, as in the first shipped model).  The detail stage sees the decoder's
            features beside the input's windows average- and max-pooled to the output grid, so that a
            nodule of one or two voxels, which the strided stem blurs into lung texture, still shows
            at full contrast where the type heads decide.
        focal_width: channels of the focal head (:class:`_FocalHead`), whose logits replace the
            U-Net's for :data:`FOCAL_TYPES` (0: none, as in models saved before it existed).

    Shapes:
        input (B, in_channels, Z, Y, X), e.g. (B, 5, 48, 80, 80);
        returns ``maps`` (B, sum(HEAD_SPLIT), Z/2, Y/2, X/2), e.g. (B, 20, 24, 40, 40), the raw
        head outputs (split them with :data:`HEAD_SPLIT`), and ``pooled`` (B, 2 * widths[-1]),
        the mean and max of the bottleneck (global context, for diagnostics).
    """

    def __init__(self, in_channels: int = 5, widths: tuple[int, int, int, int] = (16, 32, 64, 96),
                 detail_width: int = 0, focal_width: int = 0):
        super().__init__()
        w1, w2, w3, w4 = widths
        self.stem = Convolution(3, in_channels + 3, w1, strides=2, kernel_size=3, norm="batch", act="relu")
        self.enc1 = ResidualUnit(3, w1, w1, strides=1, subunits=2, norm="batch", act="relu")
        self.down2, self.down3, self.down4 = _Down(w1, w2), _Down(w2, w3), _Down(w3, w4)
        self.up3, self.up2, self.up1 = _Up(w4, w3, w3), _Up(w3, w2, w2), _Up(w2, w1 + 3, w1)
        self.detail_width = int(detail_width)
        self.detail = (ResidualUnit(3, w1 + 2 * in_channels, detail_width, strides=1, subunits=2, norm="batch",
                                    act="relu") if detail_width else None)
        self.head = nn.Conv3d(detail_width or w1, sum(HEAD_SPLIT), kernel_size=1)
        self.focal_width = int(focal_width)
        self.decoder_width = w1
        self.focal = _FocalHead(in_channels, w1, focal_width) if focal_width else None
        # per-type calibration of slot presence from voxel counts (medsearch.models.slots.image_slots)
        self.presence_scale = nn.Parameter(torch.full((N_TYPES,), 3.0))
        self.presence_offset = nn.Parameter(torch.zeros(N_TYPES))
        # the voxel probability each type's count starts above; fitted by calibration, not by gradients
        self.register_buffer("presence_floor", torch.full((N_TYPES,), VOXEL_FLOOR))
        self.pooled_dim = 2 * w4

    def decode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The U-Net alone: (its head's maps, the last decoder stage's features, pooled)."""
        image = x
        x = torch.cat([x, _coords(x)], dim=1)
        s1 = self.enc1(self.stem(x))
        s2 = self.down2(s1)
        s3 = self.down3(s2)
        s4 = self.down4(s3)
        # the coordinates again at the last stage, where the heads decide which lobe a voxel is in
        c1 = _coords(s1)
        decoder = h = self.up1(self.up2(self.up3(s4, s3), s2), torch.cat([s1, c1], dim=1))
        if self.detail is not None:
            grid = h.shape[2:]
            fine = [F.adaptive_avg_pool3d(image, grid), F.adaptive_max_pool3d(image, grid)]
            h = self.detail(torch.cat([h, *fine], dim=1))
        pooled = torch.cat([s4.mean(dim=(2, 3, 4)), s4.amax(dim=(2, 3, 4))], dim=1)
        return self.head(h), decoder, pooled

    def with_focal(self, maps: torch.Tensor, focal: torch.Tensor) -> torch.Tensor:
        """``maps`` with the focal head's logits in place of the U-Net's for :data:`FOCAL_TYPES`."""
        parts, at = [], 0
        for k, t in enumerate(FOCAL_TYPES):
            c = N_REGIONS + vocab.FINDING_TYPES.index(t)
            parts += [maps[:, at:c], focal[:, k:k + 1]]
            at = c + 1
        return torch.cat([*parts, maps[:, at:]], dim=1)

    def slots(self, maps: torch.Tensor) -> dict[str, torch.Tensor]:
        """Study-level slots of this tower's ``maps`` through its own presence calibration (floor, scale and
        offset): :func:`medsearch.models.slots.image_slots`."""
        return image_slots(maps, self.presence_scale, self.presence_offset, floor=self.presence_floor)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps, decoder, pooled = self.decode(x)
        if self.focal is not None:
            maps = self.with_focal(maps, self.focal(x, decoder, maps[:, :N_REGIONS]))
        return maps, pooled

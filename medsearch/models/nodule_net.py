"""NoduleNet: the patch classifier of the nodule detector's second stage.

It sees one candidate of :mod:`medsearch.models.candidates` at a time: a 32 mm cube of
HU at 2 mm, plus the candidate's scalar features (blob strength, scale, HU, rank), and
says whether a nodule is there.  It also regresses the nodule's log-diameter and
classifies its density, so that the detector reports a size and a density.  Small on purpose (~0.1 M parameters): it
scores every candidate of a scan (96 in the shipped detector) within the image tower's CPU budget.
"""

from __future__ import annotations

import torch
from monai.networks.blocks import Convolution, ResidualUnit
from torch import nn

from medsearch import vocab
from medsearch.models.candidates import PATCH_CELLS

#: Scalar features per candidate (:meth:`~medsearch.models.candidates.Candidates.features`).
N_FEATURES = 4
#: Density classes of the third output (``vocab.DENSITIES``' order).
N_DENSITIES = len(vocab.DENSITIES)
#: Finding types a classifier may score, nodule first: the detector's candidates lie on masses, cavity
#: walls and ground-glass opacities as well (docs/model.md, "The design's ceiling"), which the U-Net's
#: coarse grid blurs.  New types go at the end: a file's logits are in the order of its own ``types``.
DETECTED_TYPES: tuple[str, ...] = ("nodule", "mass", "cavity", "ground-glass opacity")


class _Trunk(nn.Sequential):
    """16^3 -> 8^3 -> 4^3 -> 2^3: a strided convolution and a residual unit per stage."""

    def __init__(self, width: int):
        super().__init__(
            Convolution(3, 1, width, strides=1, kernel_size=3, norm="batch", act="relu"),
            ResidualUnit(3, width, width, strides=2, subunits=2, norm="batch", act="relu"),
            ResidualUnit(3, width, 2 * width, strides=2, subunits=2, norm="batch", act="relu"),
            ResidualUnit(3, 2 * width, 4 * width, strides=2, subunits=1, norm="batch", act="relu"),
        )


class NoduleNet(nn.Module):
    """Candidate patch -> a logit per detected type, log-diameter and density.

    Args:
        width: channels of the first stage (the next ones double).
        cells: side of the input cube (:data:`~medsearch.models.candidates.PATCH_CELLS`).
        types: how many of :data:`DETECTED_TYPES` it scores (1, nodules alone, in files from before the
            others were added; their weights load unchanged).

    Shapes:
        ``forward(patches, features)``: patches (N, 1, cells, cells, cells) in [-1, 1], features
        (N, N_FEATURES) -> type logits (N, types) (independent: a candidate is on one finding of a type
        or not), log-diameter in mm (N,) and density logits (N, N_DENSITIES) of the finding it lies on.
    """

    def __init__(self, width: int = 16, cells: int = PATCH_CELLS, types: int = 1):
        super().__init__()
        self.width, self.cells, self.types = int(width), int(cells), int(types)
        self.trunk = _Trunk(width)
        self.feat = nn.Sequential(nn.Linear(N_FEATURES, 16), nn.ReLU())
        # nodule logit, log-diameter, densities, then the other types' logits: the layout of the
        # nodule-only head, extended at the end
        self.head = nn.Sequential(nn.Linear(8 * width + 16, 64), nn.ReLU(),
                                  nn.Linear(64, 1 + self.types + N_DENSITIES))

    def forward(self, patches: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.trunk(patches)
        h = torch.cat([h.mean(dim=(2, 3, 4)), h.amax(dim=(2, 3, 4)), self.feat(features)], dim=1)
        out = self.head(h)
        logits = torch.cat([out[:, :1], out[:, 2 + N_DENSITIES:]], dim=1)
        return logits, out[:, 1], out[:, 2:2 + N_DENSITIES]


__all__ = ["DETECTED_TYPES", "N_DENSITIES", "N_FEATURES", "NoduleNet"]

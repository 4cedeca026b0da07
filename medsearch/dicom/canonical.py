"""Resample a volume to the model's canonical grid with MONAI transforms.

The canonical grid is RAS-oriented, with a fixed spacing and a fixed shape
(crop or pad around the centre).  Every model input goes through here, so a
volume scanned feet-first, prone or with another pixel size looks the same to
the encoder.

Conventions (shared with :mod:`medsearch.dicom.volume`):

* arrays are (z, y, x); ``spacing_mm`` and ``shape`` are given in that order;
* MONAI works channel-first in (x, y, z) order, so arrays are transposed on
  the way in and out;
* DICOM affines are LPS; MONAI's ``Orientation`` expects RAS, so the affine is
  flipped in x and y (``diag(-1, -1, 1, 1)``) before the transforms.

Padding uses air (-1024 HU), not zero (water), so that padded borders do not
look like soft tissue to the model.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Orientation, ResizeWithPadOrCrop, Spacing, Transform

from medsearch.dicom.volume import HUVolume

AIR_HU = -1024.0
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def to_metatensor(vol: HUVolume) -> MetaTensor:
    """The volume as a channel-first (1, x, y, z) MetaTensor with a RAS affine."""
    data = torch.from_numpy(np.ascontiguousarray(vol.hu.transpose(2, 1, 0)[None], dtype=np.float32))
    return MetaTensor(data, affine=torch.as_tensor(LPS_TO_RAS @ vol.affine, dtype=torch.float64))


class ToCanonical(Transform):
    """Array transform: orient to RAS, resample to ``spacing_mm``, crop/pad to ``shape``.

    Args:
        spacing_mm: target (dz, dy, dx) in mm.
        shape: target (z, y, x) in voxels.
        mode: interpolation of the resampling ("bilinear" for images).
    """

    def __init__(self, spacing_mm: Sequence[float], shape: Sequence[int], mode: str = "bilinear"):
        dz, dy, dx = (float(s) for s in spacing_mm)
        nz, ny, nx = (int(n) for n in shape)
        # Explicit labels: the affine handed in is RAS (converted from LPS in to_metatensor).
        self.orient = Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))
        self.spacing = Spacing(pixdim=(dx, dy, dz), mode=mode, padding_mode="border", dtype=np.float32)
        # Pad with 0 on a shifted image: 0 after the shift is air (see offset below).
        self.resize = ResizeWithPadOrCrop(spatial_size=(nx, ny, nz), mode="constant")

    def __call__(self, img: MetaTensor) -> MetaTensor:
        """Args: img: channel-first (C, x, y, z) MetaTensor with a RAS affine."""
        out = self.spacing(self.orient(img))
        out = self.resize(out - AIR_HU) + AIR_HU
        return out


class ToCanonicald(MapTransform):
    """Dictionary wrapper of :class:`ToCanonical` for MONAI pipelines."""

    def __init__(self, keys: KeysCollection, spacing_mm: Sequence[float], shape: Sequence[int],
                 mode: str = "bilinear", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.transform = ToCanonical(spacing_mm, shape, mode)

    def __call__(self, data: Mapping[Hashable, MetaTensor]) -> dict[Hashable, MetaTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key])
        return d


def to_canonical(vol: HUVolume, spacing_mm: Sequence[float], shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Resample a volume to the canonical grid.

    Args:
        vol: the native volume.
        spacing_mm: target (dz, dy, dx) in mm.
        shape: target (z, y, x) in voxels.

    Returns:
        (array, affine): float32 array of ``shape`` (z, y, x) in HU, and the 4x4 affine mapping
        voxel indices (x, y, z, 1) to RAS millimetres.
    """
    out = ToCanonical(spacing_mm, shape)(to_metatensor(vol))
    array = out.as_tensor()[0].numpy().transpose(2, 1, 0)
    return np.ascontiguousarray(array, dtype=np.float32), np.asarray(out.affine, dtype=np.float64)

"""Preprocessing of a CT volume into the image tower's input.

The anchors (issue 6): HU clipping and normalisation, RAS orientation, fixed
spacing, crop or pad, and two window channels (lung and mediastinal).

:func:`to_canonical` is the one place that resamples; it uses the ingest
helper's ``medsearch.dicom.canonical.to_canonical`` when that is installed and
an equivalent MONAI chain otherwise, so both paths give the same geometry.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends

#: Default canonical grid, (z, y, x) like every array in medsearch (RAS-oriented): ctseg's ``coarse`` grid, which
#: the shipped model uses, and the grid of ctnet/resnet10.  A ctseg model's config names its own grid
#: (``medsearch.models.slot_model.SEG_GRIDS``), and inference resamples onto that.
CANONICAL_SHAPE: tuple[int, int, int] = (48, 80, 80)
#: Voxel size (mm) of the canonical grid along (z, y, x): 312 x 344 x 344 mm, a whole adult chest.
#: Coarse on purpose: the shipped model trains in ~30 CPU minutes on 2 shared cores (docs/model.md).
CANONICAL_SPACING: tuple[float, float, float] = (6.5, 4.3, 4.3)
#: (low, high) HU of each input channel: lung window (W1500/L-600) and mediastinal window (W400/L40).
WINDOWS: tuple[tuple[float, float], ...] = ((-1350.0, 150.0), (-160.0, 240.0))
#: The ctseg tower's windows: lung and mediastinal, then three narrow ones that make the attenuation
#: of each kind of finding a first-layer feature: air and emphysema, ground glass, fluid and soft tissue.
SEG_WINDOWS: tuple[tuple[float, float], ...] = WINDOWS + ((-1050.0, -800.0), (-800.0, -250.0), (-60.0, 100.0))
#: Value that the canonical grid is padded with (air).
AIR_HU = -1024.0


def _lps_to_ras(affine: np.ndarray) -> np.ndarray:
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    return flip @ np.asarray(affine, dtype=np.float64)


def _monai_canonical(vol, spacing_mm: Sequence[float], shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """RAS orientation, fixed spacing and centre crop/pad with MONAI transforms.

    Args:
        vol: an ``HUVolume``: ``hu`` float32 (z, y, x) in HU, ``affine`` 4x4 voxel (x, y, z) -> LPS mm.
        spacing_mm: output voxel size (dz, dy, dx), mm.
        shape: output grid (z, y, x).

    Returns:
        (array float32 (z, y, x) in HU, affine 4x4 voxel (x, y, z) -> RAS mm).
    """
    from monai.data import MetaTensor
    from monai.transforms import Orientation, ResizeWithPadOrCrop, Spacing

    hu = np.asarray(vol.hu, dtype=np.float32)
    # Shift so that air is 0: padding and out-of-field resampling then fill with air, not water.
    data = np.ascontiguousarray(hu.transpose(2, 1, 0)[None]) - AIR_HU
    img = MetaTensor(torch.from_numpy(data), affine=torch.from_numpy(_lps_to_ras(vol.affine)))
    img = Orientation(axcodes="RAS")(img)
    img = Spacing(pixdim=tuple(spacing_mm)[::-1], mode="bilinear", padding_mode="zeros")(img)
    img = ResizeWithPadOrCrop(spatial_size=tuple(shape)[::-1])(img)
    out = np.ascontiguousarray(img.as_tensor()[0].numpy().transpose(2, 1, 0), dtype=np.float32) + AIR_HU
    return out, np.asarray(img.affine, dtype=np.float64)


def to_canonical(vol, spacing_mm: Sequence[float] = CANONICAL_SPACING,
                 shape: Sequence[int] = CANONICAL_SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """Resample ``vol`` onto the canonical grid (RAS, fixed spacing, crop/pad).

    Returns:
        (array float32 (z, y, x) in HU, affine 4x4 voxel (x, y, z) -> RAS mm).
    """
    try:
        from medsearch.dicom.canonical import to_canonical as ingest_canonical
    except ImportError:
        return _monai_canonical(vol, spacing_mm, shape)
    arr, affine = ingest_canonical(vol, spacing_mm, shape)
    return np.asarray(arr, dtype=np.float32), np.asarray(affine, dtype=np.float64)


def hu_windows(hu: np.ndarray | torch.Tensor, windows=WINDOWS):
    """Clip HU to each window and scale it to [0, 1], one channel per window.

    Args:
        hu: (1, *spatial) or (*spatial) HU values.

    Returns:
        (len(windows), *spatial) float32 in [0, 1].
    """
    is_torch = isinstance(hu, torch.Tensor)
    x = hu if is_torch else torch.as_tensor(np.asarray(hu, dtype=np.float32))
    if x.ndim == 4 and x.shape[0] == 1:
        x = x[0]
    chans = [((x.clamp(lo, hi) - lo) / (hi - lo)) for lo, hi in windows]
    out = torch.stack(chans).float()
    return out if is_torch else out.numpy()


class HUWindows(Transform):
    """MONAI array transform: HU volume -> lung and mediastinal window channels in [0, 1]."""

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, windows: Sequence[tuple[float, float]] = WINDOWS):
        self.windows = tuple(tuple(map(float, w)) for w in windows)

    def __call__(self, img):
        return hu_windows(img, self.windows)


class HUWindowsd(MapTransform):
    """Dictionary wrapper of :class:`HUWindows`."""

    def __init__(self, keys: KeysCollection, windows: Sequence[tuple[float, float]] = WINDOWS,
                 allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.transform = HUWindows(windows)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key])
        return d


def canonical_hu(vol, spacing_mm: Sequence[float] = CANONICAL_SPACING,
                 shape: Sequence[int] = CANONICAL_SHAPE) -> np.ndarray:
    """The canonical HU grid of ``vol`` as int16 (z, y, x): what training caches per study."""
    arr, _ = to_canonical(vol, spacing_mm, shape)
    return np.clip(np.rint(arr), -1024, 3071).astype(np.int16)


def preprocess_volume(vol) -> torch.Tensor:
    """An ``HUVolume`` -> the image tower's input, float32 (2, z, y, x)."""
    return HUWindows()(torch.from_numpy(canonical_hu(vol).astype(np.float32)))

"""Dense lesions in the lungs as connected components, and the shape features that tell them apart.

The U-Net sees the chest at 4.3 x 4.3 x 6.5 mm and labels voxels; at that scale a mass and a consolidation are
alike (on seed 1202 its mass-against-consolidation AUC is 0.53) and a plate of atelectasis 6-12 mm thick is one
cell.  On the scan's own grid they differ in *shape*: a mass is a round or lobulated focus, a consolidation an
irregular region cut off by the fissures, atelectasis a thin plate lying nearly flat.  So this module finds
every dense part of the lungs on the detector's grid (:func:`lesion_components`) and describes it by a few
numbers (:data:`FEATURE_NAMES`); :mod:`medsearch.models.region_classifier` reads them.

Plain functions over arrays; ``(z, y, x)`` order, spacing in mm.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

#: Voxels denser than this inside the lungs are lesion candidates (ground glass, -600 to -380 HU, is
#: the nodule detector's, not this module's).
DENSE_HU = -250.0
#: Radius of the opening that takes the vessels (a few mm across) off the dense voxels.
OPEN_MM = 2.5
#: Components smaller than this (a sphere of 8 mm) are left to the nodule detector.
MIN_VOLUME_MM3 = 300.0
#: What each feature is, in order.
FEATURE_NAMES = (
    "log volume (mm3)", "log sd along the long axis (mm)", "log sd along the middle axis (mm)",
    "log sd along the short axis (mm)", "short / long axis", "middle / long axis", "mean HU / 100",
    "sd HU / 100", "share below -100 HU", "surface / volume^(2/3)", "share of the rim outside the lungs",
    "volume / its ellipsoid's", "log z extent (mm)", "log in-plane extent (mm)",
    "|z| of the short axis", "dense share of the dilated component", "10th percentile HU / 100",
    "90th percentile HU / 100", "share of enclosed holes", "|z| of the long axis",
)
N_FEATURES = len(FEATURE_NAMES)


@dataclass
class Components:
    """The dense components of one scan, on the grid they were found on.

    Attributes:
        labels: (z, y, x) int32, component ``k`` (1-based) where ``labels == ids[i]``.
        ids: (M,) the label of each kept component.
        centre: (M, 3) float, each component's centroid ``(z, y, x)`` in voxels.
        features: (M, N_FEATURES) float32.
        diameter_mm: (M,) the component's longest extent.
    """

    labels: np.ndarray
    ids: np.ndarray
    centre: np.ndarray
    features: np.ndarray
    diameter_mm: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


def _ball(spacing: np.ndarray, radius_mm: float) -> np.ndarray:
    r = np.maximum(np.round(radius_mm / spacing).astype(int), 1)
    zz, yy, xx = np.ogrid[-r[0]:r[0] + 1, -r[1]:r[1] + 1, -r[2]:r[2] + 1]
    return ((zz * spacing[0]) ** 2 + (yy * spacing[1]) ** 2 + (xx * spacing[2]) ** 2) <= radius_mm ** 2 + 1e-6


def _features(m: np.ndarray, hu: np.ndarray, lungs: np.ndarray, dense: np.ndarray,
              sp: np.ndarray) -> tuple[list[float], np.ndarray, float]:
    nv = int(m.sum())
    vol = nv * float(np.prod(sp))
    pts = np.argwhere(m).astype(float)
    mm = pts * sp
    c = mm.mean(0)
    cov = np.cov((mm - c).T) if nv > 3 else np.eye(3)
    ev, evec = np.linalg.eigh(cov)                 # ascending
    sd = np.sqrt(np.maximum(ev, 1e-3))[::-1]        # long, middle, short
    h = hu[m]
    surf = int((m & ~ndimage.binary_erosion(m)).sum())
    dil = ndimage.binary_dilation(m)
    shell = dil & ~m
    outside = float((shell & ~lungs).sum()) / max(int(shell.sum()), 1)
    # a uniform ellipsoid of semi-axes a has sd a / sqrt(5) along each axis
    fill = vol / (4.0 / 3.0 * np.pi * float(np.prod(sd)) * 5.0 ** 1.5 + 1e-6)
    ext = (pts.max(0) - pts.min(0) + 1) * sp
    holes = float(ndimage.binary_fill_holes(m).sum() - nv) / nv
    p10, p90 = np.percentile(h, [10, 90])
    f = [np.log(vol), np.log(sd[0]), np.log(sd[1]), np.log(sd[2]), sd[2] / sd[0], sd[1] / sd[0],
         h.mean() / 100, h.std() / 100, float((h < -100).mean()), surf / nv ** (2 / 3), outside, fill,
         np.log(ext[0]), np.log(max(ext[1], ext[2])), abs(evec[0, 0]), float(dense[dil].mean()), p10 / 100,
         p90 / 100, holes, abs(evec[0, 2])]
    return f, pts.mean(0), float(ext.max())


def lesion_components(hu: np.ndarray, spacing, lungs: np.ndarray) -> Components:
    """The dense components inside ``lungs`` (the nodule detector's mask, :func:`~medsearch.models.candidates.
    lung_mask`) of one scan ``hu`` with ``spacing`` (dz, dy, dx) mm, at least :data:`MIN_VOLUME_MM3`.

    The vessels are opened away (:data:`OPEN_MM`) first, so a lesion is not one component with the vessel
    tree it touches.
    """
    sp = np.asarray(spacing, float)
    dense = (hu > DENSE_HU) & lungs
    core = ndimage.binary_opening(dense, structure=_ball(sp, OPEN_MM))
    labels, n = ndimage.label(core)
    ids, centres, feats, diam = [], [], [], []
    min_voxels = MIN_VOLUME_MM3 / float(np.prod(sp))
    for k, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        # one voxel of margin, so that the rim and the dilation see the component's surroundings
        sl = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in sl)
        m = labels[sl] == k
        if m.sum() < min_voxels:
            continue
        f, centre, extent = _features(m, hu[sl], lungs[sl], dense[sl], sp)
        ids.append(k)
        centres.append(centre + np.array([s.start for s in sl], float))
        feats.append(f)
        diam.append(extent)
    return Components(labels.astype(np.int32), np.asarray(ids, np.int32), np.asarray(centres, float).reshape(-1, 3),
                      np.asarray(feats, np.float32).reshape(-1, N_FEATURES), np.asarray(diam, np.float32))


__all__ = ["Components", "DENSE_HU", "FEATURE_NAMES", "MIN_VOLUME_MM3", "N_FEATURES", "OPEN_MM",
           "lesion_components"]

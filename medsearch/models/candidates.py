"""Nodule candidates at the scan's own resolution: a lung mask, a blob filter and patches.

The image tower sees the chest on a grid of 4.3 x 4.3 x 6.5 mm, where a nodule and a
vessel branching are one or two bright cells alike (docs/model.md).  A scan of the
archive has 0.6-3.6 mm pixels, where a nodule is a compact blob and a vessel a tube.
This module finds the blobs, the first stage of the classic two-stage detector (LUNA16:
candidates, then a patch classifier, :mod:`medsearch.models.nodule_net`):

- :func:`lung_mask`: the lungs from HU alone (air-like tissue inside the body, holes and
  pleura-touching lesions closed in), so that it works on any scan, before any network;
- :func:`blob_response`: the multi-scale Hessian "dot" filter (Li, Sone and Doi 2003),
  scale-normalised, large where all three curvatures are strongly negative (a bright
  blob) and small along a tube (one curvature near zero);
- :func:`find_candidates`: the filter's local maxima in the lungs, strongest first;
- :func:`extract_patches`: a small isotropic cube of HU around each, for the classifier.

Plain functions over arrays in the scan's own ``(z, y, x)`` voxel order with its
``(dz, dy, dx)`` spacing in mm.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

#: Gaussian scales (mm) of the blob filter: nodules of about 4-30 mm.
SCALES_MM: tuple[float, ...] = (1.5, 2.5, 4.0, 6.0)
#: Side (cells) and cell size (mm) of a candidate's patch: a 32 mm cube.
PATCH_CELLS = 16
PATCH_MM = 2.0
#: HU that the patch is clipped to before scaling to [-1, 1]: lung to calcium.
PATCH_HU = (-1000.0, 400.0)
#: Most candidates kept per scan by default, and the scale of the rank feature.  A detector stores its own number
#: (the shipped one scores 96 since session 17, its calibration refitted for them: docs/model.md).
MAX_CANDIDATES = 48


@dataclass
class Candidates:
    """Candidates of one scan, strongest first.

    Attributes:
        index: (N, 3) int voxel ``(z, y, x)`` of each.
        response: (N,) the blob filter there.
        scale_mm: (N,) the Gaussian scale at which it peaked (a nodule's radius is about
            ``sqrt(3) * scale``).
        hu: (N,) HU at the centre, lightly smoothed.
    """

    index: np.ndarray
    response: np.ndarray
    scale_mm: np.ndarray
    hu: np.ndarray

    def __len__(self) -> int:
        return len(self.response)

    def features(self) -> np.ndarray:
        """(N, 4) scalar features for the classifier: log response, scale, HU / 1000, rank."""
        rank = np.arange(len(self), dtype=np.float32) / MAX_CANDIDATES
        return np.stack([np.log1p(self.response), self.scale_mm / 6.0, self.hu / 1000.0, rank],
                        axis=1).astype(np.float32)


@dataclass(frozen=True)
class LungGrid:
    """A lung mask (:func:`lung_mask`) computed on a grid coarser than the scan's by an integer ``step``
    per axis (the detector's grid), looked up at the scan's own voxels.

    Attributes:
        mask: bool (z, y, x) on the coarse grid.
        step: (3,) int, scan voxels per coarse voxel along (z, y, x).
    """

    mask: np.ndarray
    step: np.ndarray

    def box(self, z: slice, y: slice, x: slice) -> np.ndarray:
        """The mask over a box of the scan's own voxels (bool, the box's shape); voxels past the coarse
        grid's last whole block take the nearest block."""
        idx = [np.minimum(np.arange(s.start, s.stop) // int(st), n - 1)
               for s, st, n in zip((z, y, x), self.step, self.mask.shape)]
        return self.mask[np.ix_(*idx)]


def bounding_box(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi): the smallest box ``mask[lo[0]:hi[0], ...]`` holding every True voxel of a non-empty mask.

    From each axis's projection, which reads the mask once; ``np.argwhere`` would list every voxel
    (about 2 ms per call on a 75 x 128 x 128 scan, and the detector needs four boxes).
    """
    lo, hi = [], []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        lo.append(hit[0])
        hi.append(hit[-1] + 1)
    return np.asarray(lo), np.asarray(hi)


def lung_mask(hu: np.ndarray, spacing: tuple[float, float, float], close_mm: float = 8.0) -> np.ndarray:
    """Bool (z, y, x): the lungs, with the vessels, nodules and masses inside them.

    Air-like voxels (< -400 HU) not connected, within their slice, to the air around the
    body, in parts of at least 50 ml, closed with a box of half-side ``close_mm`` (so that a
    lesion against the pleura is inside), then filled slice by slice.  The airways may come
    along; the classifier sees them as negatives.
    """
    sp = np.asarray(spacing, float)
    air = hu < -400
    # the air around the patient, slice by slice: a 3-D labelling would join it to the lungs wherever
    # they touch anywhere (a thin chest wall, a lung at the edge of the field of view in one slice)
    in_plane = np.zeros((3, 3, 3), bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)
    labels2, _ = ndimage.label(air, structure=in_plane)          # one labelling, slices kept apart
    edge = np.unique(np.concatenate([labels2[:, 0].ravel(), labels2[:, -1].ravel(), labels2[:, :, 0].ravel(),
                                     labels2[:, :, -1].ravel()]))
    touches = np.zeros(int(labels2.max()) + 1, bool)
    touches[edge] = True
    touches[0] = False
    outside = touches[labels2]
    labels, n = ndimage.label(air & ~outside)
    if n == 0:
        return np.zeros(hu.shape, bool)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:].astype(float)
    min_voxels = 50_000.0 / float(np.prod(sp))    # 50 ml: leaves out the bowel gas
    keep = np.nonzero(sizes >= min_voxels)[0] + 1
    lungs = np.isin(labels, keep)
    if not lungs.any():
        return lungs
    # a box closing (separable, so a tenth of a ball's cost) within the lungs' bounding box, padded so
    # that the box never meets the array's edge
    size = tuple(int(n) for n in np.maximum(np.round(close_mm / sp).astype(int) * 2 + 1, 3))
    lo, hi = bounding_box(lungs)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    sub = np.pad(lungs[box], [(n, n) for n in size]).view(np.uint8)
    sub = ndimage.minimum_filter(ndimage.maximum_filter(sub, size=size), size=size).astype(bool)
    sub = sub[tuple(slice(n, -n) for n in size)]
    for k in range(sub.shape[0]):
        sub[k] = ndimage.binary_fill_holes(sub[k])
    lungs[box] = sub
    return lungs


def blob_response(hu: np.ndarray, spacing: tuple[float, float, float], mask: np.ndarray,
                  scales_mm: tuple[float, ...] = SCALES_MM) -> tuple[np.ndarray, np.ndarray]:
    """The multi-scale dot filter inside ``mask``.

    Per scale the lungs' bounding box is smoothed once and the Hessian taken by central
    differences at the lung voxels only (six Gaussian-derivative filters over the whole volume
    per scale cost about ten times as much).

    Returns:
        response (z, y, x) float32, zero outside the mask and where any curvature is not
        negative, and the scale (mm) of each voxel's strongest response.
    """
    sp = np.asarray(spacing, float)
    response = np.zeros(hu.shape, np.float32)
    scale = np.zeros(hu.shape, np.float32)
    if not mask.any():
        return response, scale
    margin = np.ceil(3.0 * max(scales_mm) / sp).astype(int) + 1
    lo, hi = bounding_box(mask)
    lo, hi = np.maximum(lo - margin, 0), np.minimum(hi + margin, hu.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    v = np.clip(hu[box], -1000.0, 400.0).astype(np.float32)
    idx = np.nonzero(mask[box])
    best = np.zeros(len(idx[0]), np.float32)
    best_scale = np.zeros(len(idx[0]), np.float32)
    # one voxel of edge padding: the lungs may reach the scan's first or last slice
    padded = np.pad(v, 1, mode="edge")
    flat = np.ravel_multi_index(tuple(i + 1 for i in idx), padded.shape)
    strides = np.array([padded.shape[1] * padded.shape[2], padded.shape[2], 1])
    for s in scales_mm:
        g = ndimage.gaussian_filter(padded, s / sp, truncate=3.0).ravel()
        at = lambda *steps: g[flat + int(np.dot(steps, strides))]  # noqa: E731
        centre = g[flat]
        hess = np.empty((len(flat), 3, 3), np.float32)
        unit = np.eye(3, dtype=int)
        # central differences, read only at the lung voxels (the mask lies inside the box's margin);
        # scale-normalised by s^2
        for i in range(3):
            hess[:, i, i] = (at(*unit[i]) - 2 * centre + at(*-unit[i])) * (s * s / (sp[i] * sp[i]))
            for j in range(i + 1, 3):
                d = (at(*(unit[i] + unit[j])) - at(*(unit[i] - unit[j])) - at(*(unit[j] - unit[i]))
                     + at(*-(unit[i] + unit[j]))) * (s * s / (4 * sp[i] * sp[j]))
                hess[:, i, j] = hess[:, j, i] = d
        # a bright blob needs all three curvatures negative: -H positive definite (Sylvester), which
        # few voxels are, so the eigenvalues are taken only there
        a, b, c = hess[:, 0, 0], hess[:, 1, 1], hess[:, 2, 2]
        d, e, f = hess[:, 0, 1], hess[:, 0, 2], hess[:, 1, 2]
        m2 = a * b - d * d
        det = a * (b * c - f * f) - d * (d * c - f * e) + e * (d * f - b * e)
        neg = (a < 0) & (m2 > 0) & (det < 0)
        if not neg.any():
            continue
        ev = np.linalg.eigvalsh(hess[neg])          # ascending: ev[:, 0] the most negative
        dot = (ev[:, 2] * ev[:, 2] / np.maximum(np.abs(ev[:, 0]), 1e-3)).astype(np.float32)
        cur = best[neg]
        better = dot > cur
        best[neg] = np.where(better, dot, cur)
        best_scale[neg] = np.where(better, s, best_scale[neg])
    sub_r = np.zeros(v.shape, np.float32)
    sub_s = np.zeros(v.shape, np.float32)
    sub_r[idx] = best
    sub_s[idx] = best_scale
    response[box] = sub_r
    scale[box] = sub_s
    return response, scale


def find_candidates(hu: np.ndarray, spacing: tuple[float, float, float], mask: np.ndarray | None = None,
                    max_candidates: int = MAX_CANDIDATES, min_response: float = 5.0) -> Candidates:
    """The blob filter's local maxima in the lungs, strongest first (at most ``max_candidates``)."""
    if mask is None:
        mask = lung_mask(hu, spacing)
    response, scale = blob_response(hu, spacing, mask)
    sp = np.asarray(spacing, float)
    size = np.maximum(np.round(6.0 / sp).astype(int) * 2 + 1, 3)     # maxima at least ~6 mm apart
    if not mask.any():
        return Candidates(np.zeros((0, 3), np.int64), *(np.zeros(0, np.float32) for _ in range(3)))
    index = _local_maxima(response, size, min_response)
    values = response[tuple(index.T)]
    order = np.argsort(-values, kind="stable")[:max_candidates]
    index = index[order]
    return Candidates(index=index.astype(np.int64), response=values[order].astype(np.float32),
                      scale_mm=scale[tuple(index.T)].astype(np.float32),
                      hu=_smoothed_at(hu, index, 1.0 / sp))


def _local_maxima(response: np.ndarray, size: np.ndarray, floor: float) -> np.ndarray:
    """(N, 3) voxels above ``floor`` that equal the maximum of their ``size`` window, in C order:
    ``maximum_filter(response, size) == response`` evaluated only where it can hold (a few thousand
    voxels rather than the whole scan)."""
    index = np.argwhere(response > floor)
    if not len(index):
        return index
    half = np.asarray(size) // 2
    best = np.zeros(len(index), response.dtype)
    hi = np.asarray(response.shape) - 1
    for dz in range(-half[0], half[0] + 1):
        for dy in range(-half[1], half[1] + 1):
            for dx in range(-half[2], half[2] + 1):
                # the window is clipped at the scan's edge, as maximum_filter's "reflect" mode leaves it
                at = np.clip(index + (dz, dy, dx), 0, hi)
                np.maximum(best, response[at[:, 0], at[:, 1], at[:, 2]], out=best)
    return index[response[tuple(index.T)] >= best]


def _smoothed_at(hu: np.ndarray, index: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """``gaussian_filter(hu, sigma)`` (scipy's kernel, truncate 4, reflected edges) at ``index`` only."""
    out = np.zeros(len(index), np.float32)
    if not len(index):
        return out
    radius = [int(4.0 * float(s) + 0.5) for s in sigma]
    kernels = []
    for s, r in zip(sigma, radius):
        x = np.arange(-r, r + 1, dtype=np.float64)
        k = np.exp(-0.5 * (x / s) ** 2)
        kernels.append(k / k.sum())
    padded = np.pad(hu.astype(np.float32), [(r, r) for r in radius], mode="symmetric")
    weights = kernels[0][:, None, None] * kernels[1][None, :, None] * kernels[2][None, None, :]
    for n, (z, y, x) in enumerate(index):
        block = padded[z:z + 2 * radius[0] + 1, y:y + 2 * radius[1] + 1, x:x + 2 * radius[2] + 1]
        out[n] = float((block * weights).sum())
    return out


def extract_patches(hu: np.ndarray, spacing: tuple[float, float, float], index: np.ndarray,
                    cells: int = PATCH_CELLS, cell_mm: float = PATCH_MM) -> np.ndarray:
    """(N, 1, cells, cells, cells) float32 isotropic cubes of HU around ``index``, scaled to [-1, 1]."""
    sp = np.asarray(spacing, float)
    offsets = (np.arange(cells) - (cells - 1) / 2.0) * cell_mm
    grid = np.stack(np.meshgrid(offsets, offsets, offsets, indexing="ij"), axis=0)   # (3, c, c, c) mm
    lo, hi = PATCH_HU
    if not len(index):
        return np.empty((0, 1, cells, cells, cells), np.float32)
    # every patch's points in one interpolation call: each point is interpolated on its own, so the values
    # are those of one call per patch, without 48 calls' overhead
    centres = np.asarray(index, float).reshape(-1, 3)
    coords = centres.T[:, :, None, None, None] + (grid / sp[:, None, None, None])[:, None]   # (3, N, c, c, c)
    vals = ndimage.map_coordinates(hu, coords.reshape(3, -1), order=1, mode="nearest")
    scaled = (np.clip(vals, lo, hi) - lo) / (hi - lo) * 2 - 1
    return scaled.reshape(len(centres), 1, cells, cells, cells).astype(np.float32)


__all__ = ["Candidates", "LungGrid", "MAX_CANDIDATES", "PATCH_CELLS", "PATCH_MM", "SCALES_MM", "blob_response",
           "bounding_box", "extract_patches", "find_candidates", "lung_mask"]

"""Key-slice localisation from a text-conditioned heatmap over the spatial feature map.

The reranker's text-to-image attention (or, without a reranker, the similarity
of each spatial cell to the query) is a heatmap on the image tower's coarse
grid, laid over the *canonical* volume (RAS, fixed spacing).  To show it to a
radiologist it must land on the *native* series: this module maps the heat
peak through the canonical affine (voxel -> RAS mm) and the native affine
(voxel -> LPS mm) back to a native slice index (the "slice index in the main
series", as in the labels' ``slice_range``) and a box in that slice's pixels.

Everything here is plain array maths, tested on synthetic heatmaps.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.nn import functional as F

#: Cells at or above this fraction of the peak form the region (box) around it.
REGION_FRACTION = 0.5
#: Upsampling factor of the coarse heatmap before the peak is taken (sub-cell peaks).
UPSAMPLE = 4

_LPS_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def cell_heatmap(query: np.ndarray, spatial: np.ndarray, temperature: float = 0.1) -> np.ndarray:
    """Heatmap from the similarity of each spatial cell to a query vector (no reranker).

    Args:
        query: (C,) vector in the spatial map's channel space.
        spatial: (C, X, Y, Z) feature map.

    Returns:
        (X, Y, Z) float32, a softmax over cells (sums to 1).
    """
    c = spatial.shape[0]
    cells = spatial.reshape(c, -1).astype(np.float32)
    cells = cells / (np.linalg.norm(cells, axis=0, keepdims=True) + 1e-6)
    q = np.asarray(query, dtype=np.float32)
    q = q / (np.linalg.norm(q) + 1e-6)
    logits = (q @ cells) / temperature
    logits -= logits.max()
    p = np.exp(logits)
    return (p / p.sum()).reshape(spatial.shape[1:]).astype(np.float32)


def query_lobe_weights(site: str | None, laterality: str | None) -> np.ndarray:
    """Which lobes (weights (L,) in :data:`medsearch.vocab.LOBES` order) a query finding's site or side names.

    A lobe counts when it lies within the site (the lingula counts as the left upper lobe, as the region
    maps do); a site that contains no lobe (pleura) or no site at all falls back to the side, then to
    every lobe.
    """
    from medsearch import vocab

    lobes = vocab.LOBES
    if site == vocab.LINGULA:
        site = "left upper lobe"
    w = np.array([float(bool(site) and vocab.site_within(lobe, site)) for lobe in lobes], dtype=np.float32)
    if not w.any() and laterality in ("left", "right"):
        w = np.array([float(vocab.LOBE_SIDE.get(lobe) == laterality) for lobe in lobes], dtype=np.float32)
    return w if w.any() else np.ones(len(lobes), dtype=np.float32)


def slot_heatmap(spatial: np.ndarray, wanted: Sequence[tuple[int, np.ndarray]]) -> np.ndarray | None:
    """Heatmap of where the query's findings lie, read from a ``ctseg`` spatial map (no reranker needed).

    Each cell scores ``sum over query findings of P(type here) x P(one of the named lobes here)``: the
    text conditions the map through the finding type and site it names.

    Args:
        spatial: (T + 1 + L, X, Y, Z): T finding-type probabilities, then the region probabilities
            (outside the lungs, then each lobe), as ``SlotModel.encode_image`` stores them.
        wanted: one (type index, lobe weights (L,)) per query finding.

    Returns:
        (X, Y, Z) float32, or None when no query finding has a type the map knows or the map is empty.
    """
    from medsearch import vocab

    n_t, n_l = len(vocab.FINDING_TYPES), len(vocab.LOBES)
    if spatial.shape[0] != n_t + 1 + n_l or not wanted:
        return None
    sp = np.asarray(spatial, dtype=np.float32)
    lobes = sp[n_t + 1:]
    heat = np.zeros(sp.shape[1:], dtype=np.float32)
    for t, w in wanted:
        heat += sp[t] * np.tensordot(np.asarray(w, dtype=np.float32), lobes, axes=1)
    return heat if float(heat.max()) > 0 else None


def upsample(heat: np.ndarray, factor: int = UPSAMPLE) -> np.ndarray:
    """Trilinear upsampling of a (X, Y, Z) heatmap by ``factor`` (cell centres aligned)."""
    t = torch.from_numpy(np.ascontiguousarray(heat, dtype=np.float32))[None, None]
    size = [max(1, n * factor) for n in heat.shape]
    return F.interpolate(t, size=size, mode="trilinear", align_corners=False)[0, 0].numpy()


def fine_to_canonical(idx: np.ndarray, fine_shape: Sequence[int], canon_shape: Sequence[int]) -> np.ndarray:
    """Fine-heatmap voxel indices (n, 3) -> continuous canonical voxel coordinates (n, 3)."""
    scale = np.asarray(canon_shape, dtype=np.float64) / np.asarray(fine_shape, dtype=np.float64)
    return (np.asarray(idx, dtype=np.float64) + 0.5) * scale - 0.5


def canonical_to_native(coords: np.ndarray, canon_affine: np.ndarray, native_affine: np.ndarray) -> np.ndarray:
    """Canonical voxel coordinates (n, 3) -> native voxel coordinates (n, 3) as (x, y, z=slice).

    Args:
        canon_affine: 4x4, canonical voxel (R, A, S order) -> RAS mm.
        native_affine: 4x4, native voxel (x, y, z) -> LPS mm.
    """
    pts = np.c_[np.asarray(coords, dtype=np.float64), np.ones(len(coords))]
    lps = (_LPS_RAS @ np.asarray(canon_affine, dtype=np.float64) @ pts.T)
    native = np.linalg.inv(np.asarray(native_affine, dtype=np.float64)) @ lps
    return native[:3].T


def half_to_native(points_zyx: np.ndarray, canon_affine: np.ndarray, native_affine: np.ndarray) -> np.ndarray:
    """Coordinates (n, 3) as (z, y, x) on the ``ctseg`` tower's half-resolution maps (each cell two canonical
    voxels wide) -> native voxel coordinates (n, 3) as (x, y, slice)."""
    canon = (np.asarray(points_zyx, dtype=np.float64) + 0.5) * 2 - 0.5
    return canonical_to_native(canon[:, ::-1], canon_affine, native_affine)


def _coarse_peak(heat: np.ndarray) -> np.ndarray:
    """Continuous cell coordinates (3,) of the heat peak: centroid of the 3x3x3 cells around the argmax."""
    cell = np.unravel_index(int(np.argmax(heat)), heat.shape)
    sl = tuple(slice(max(c - 1, 0), min(c + 2, n)) for c, n in zip(cell, heat.shape))
    block = heat[sl]
    # weights relative to the block's floor, so a flat background does not drag the centroid
    w = np.clip(block - block.min(), 0, None)
    if w.sum() <= 0:
        return np.asarray(cell, dtype=np.float64)
    grids = np.meshgrid(*[np.arange(s.start, s.stop) for s in sl], indexing="ij")
    return np.array([(g * w).sum() / w.sum() for g in grids])


def localize(heat: np.ndarray, canon_shape: Sequence[int], canon_affine: np.ndarray, native_affine: np.ndarray,
             native_shape: Sequence[int]) -> tuple[int, list[int]]:
    """Key slice and region of a heatmap, on the native series.

    Args:
        heat: (X, Y, Z) heatmap over the canonical grid (the spatial map's resolution).
        canon_shape: canonical grid shape (R, A, S).
        canon_affine: 4x4 canonical voxel -> RAS mm.
        native_affine: 4x4 native voxel (x, y, z) -> LPS mm.
        native_shape: native volume shape (z, y, x).

    Returns:
        (key slice index in the native series, [x0, y0, x1, y1] pixel box on that slice).
    """
    fine = upsample(heat)
    # The peak position comes from the coarse map: the heat-weighted centroid of the
    # hottest cell's neighbourhood.  (The argmax of the upsampled map is biased towards
    # the border for an edge cell, because interpolation clamps there: with only 3 cells
    # along the body axis that bias alone was ~8 cm.)
    peak_pos = _coarse_peak(np.asarray(heat, dtype=np.float64)) * UPSAMPLE + (UPSAMPLE - 1) / 2
    peak = tuple(int(np.clip(np.rint(p), 0, n - 1)) for p, n in zip(peak_pos, fine.shape))
    # the region: cells of the peak's axial (S) plane that reach REGION_FRACTION of the peak
    plane = fine[:, :, peak[2]]
    rr, aa = np.nonzero(plane >= REGION_FRACTION * fine[peak])
    region = np.c_[rr, aa, np.full(len(rr), peak[2])]
    pts = fine_to_canonical(np.vstack([peak_pos[None], region]), fine.shape, canon_shape)
    # the corners of each fine voxel, so that a one-cell region still has an extent
    half = 0.5 * np.asarray(canon_shape, dtype=np.float64) / np.asarray(fine.shape, dtype=np.float64)
    corners = np.vstack([pts[1:] + half * np.array(s) for s in ((-1, -1, 0), (1, 1, 0), (-1, 1, 0), (1, -1, 0))])
    native_peak = canonical_to_native(pts[:1], canon_affine, native_affine)[0]
    native_box = canonical_to_native(corners, canon_affine, native_affine)
    nz, ny, nx = (int(n) for n in native_shape)
    key = int(np.clip(np.rint(native_peak[2]), 0, nz - 1))
    x0, x1 = np.clip([native_box[:, 0].min(), native_box[:, 0].max()], 0, nx - 1)
    y0, y1 = np.clip([native_box[:, 1].min(), native_box[:, 1].max()], 0, ny - 1)
    return key, [int(np.floor(x0)), int(np.floor(y0)), int(np.ceil(x1)), int(np.ceil(y1))]


def slice_hit(key_slice: int, slice_range: Sequence[int]) -> bool:
    """True when a key slice falls within a finding's [first, last] slice range."""
    return int(slice_range[0]) <= int(key_slice) <= int(slice_range[1])

"""Where each finding slot lies on the scan: one key slice and box per (finding type, lobe).

The decoded findings (:mod:`medsearch.models.slot_findings`) carry key slices only where the
tower is sure of a finding.  A query may ask for one the tower saw faintly (an atelectasis in
the left lower lobe at probability 0.3, below the finding threshold); its key slice then came
from the stored spatial map, whose cells are about 26 mm tall, against the 6-12 mm of a
plate of collapsed lung.  This module computes, when a volume is encoded, one location per
slot from the half-resolution maps (13 mm cells), and refines it on the scan's own pixels:

- the slot's peak cell (type probability x lobe probability) gives a first key slice and, from
  the cells of its plane that reach half the peak, a box;
- within one cell's height of that slice, the key slice becomes the one where the box holds the
  most tissue of the finding's attenuation inside the lungs, after an in-plane opening of 3 mm
  that removes the vessels (a vessel is a few millimetres across; a collapsed or consolidated
  area is centimetres);
- nodule slots take the surest detection of the nodule detector in the lobe, which knows its
  slice; where it found none in the lobe, its most nodule-like candidate there (below the
  detector's threshold: it places the slot but never counts as a nodule).

The locations are stored beside the spatial map (:mod:`medsearch.models.spatial_store`) and
read by the search pipeline (:func:`best_location`).  On the benchmark's archive the key slice of
an atelectasis in the queried lobe fell within its slices for 3 of 10 from the stored map and 7 of
10 from these locations (docs/index-and-search.md, "Key slices").

Plain functions over arrays.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

from medsearch import vocab
from medsearch.models.localize import half_to_native

#: Per slot: the peak probability, the key slice (-1: none) and the box [x0, y0, x1, y1] on it.
LOCATION_FIELDS = ("peak", "key_slice", "x0", "y0", "x1", "y1")
#: Slots whose peak type-and-lobe probability is below this get no location: nothing of the type is there.
MIN_PEAK = 0.05
#: Types whose key slice is refined on the scan's pixels, and the HU of their tissue.
REFINE_HU: dict[str, tuple[float, float]] = {
    "atelectasis": (-300.0, 300.0), "consolidation": (-300.0, 300.0), "mass": (-300.0, 300.0),
    "cavity": (-300.0, 300.0), "nodule": (-300.0, 300.0), "ground-glass opacity": (-800.0, -300.0),
}
#: Radius (mm) of the in-plane opening that removes vessels before the tissue is counted.
OPENING_MM = 3.0
#: Cells of the peak's plane that reach this fraction of the peak make the box.
BOX_FRACTION = 0.5


def _disc(ry: float, rx: float) -> np.ndarray:
    a, b = int(np.ceil(ry)), int(np.ceil(rx))
    yy, xx = np.mgrid[-a:a + 1, -b:b + 1]
    return (yy / max(ry, 1e-6)) ** 2 + (xx / max(rx, 1e-6)) ** 2 <= 1


def refine_slice(hu: np.ndarray, lungs, key: int, box: Sequence[int], half: int,
                 hu_range: tuple[float, float], spacing: Sequence[float]) -> int:
    """The slice within ``half`` of ``key`` whose ``box`` holds the most lung tissue in ``hu_range``.

    Args:
        hu: (z, y, x) the scan.
        lungs: :class:`~medsearch.models.candidates.LungGrid` of the scan.
        box: [x0, y0, x1, y1], inclusive.
        spacing: (dz, dy, dx) mm.

    Returns:
        ``key`` when no slice of the window holds any (after the opening).
    """
    nz = hu.shape[0]
    x0, y0, x1, y1 = (int(v) for v in box)
    lo, hi = max(0, key - half), min(nz - 1, key + half)
    if hi <= lo or x1 <= x0 or y1 <= y0:
        return key
    zs, ys, xs = slice(lo, hi + 1), slice(y0, y1 + 1), slice(x0, x1 + 1)
    sub = hu[zs, ys, xs]
    tissue = (sub > hu_range[0]) & (sub < hu_range[1]) & lungs.box(zs, ys, xs)
    if not tissue.any():
        return key
    # a flat (one-slice) structure: each slice is opened on its own, in one call
    disc = _disc(OPENING_MM / float(spacing[1]), OPENING_MM / float(spacing[2]))[None]
    counts = ndimage.binary_opening(tissue, structure=disc).sum(axis=(1, 2))
    return key if counts.max() == 0 else int(lo + int(np.argmax(counts)))


def _detection_lobes(evidence, region: np.ndarray) -> np.ndarray:
    own = np.clip(np.rint(evidence.cells), 0, np.asarray(region.shape[1:]) - 1).astype(np.int64)
    return region[:, own[:, 0], own[:, 1], own[:, 2]].argmax(axis=0)


def slot_locations(maps: torch.Tensor, canon_affine: np.ndarray, native_affine: np.ndarray, hu: np.ndarray,
                   spacing: Sequence[float], lungs=None, evidence=None) -> np.ndarray:
    """One location per slot of one volume.

    Args:
        maps: (20, z, y, x) raw head outputs on the half-resolution grid (with the detector's nodule
            channel painted in, where there is one).
        canon_affine: 4x4 canonical voxel (x, y, z) -> RAS mm; native_affine: native voxel -> LPS mm.
        hu: (z, y, x) the native scan; spacing: its (dz, dy, dx) mm.
        lungs: its :class:`~medsearch.models.candidates.LungGrid` (the detector's); computed when None.
        evidence: the detector's :class:`~medsearch.models.nodule_detector.NoduleEvidence`, or None.

    Returns:
        (T, L, 6) float32, :data:`LOCATION_FIELDS` per (type in ``vocab.FINDING_TYPES``, lobe in
        ``vocab.LOBES``); the key slice is -1 where the slot's peak is below :data:`MIN_PEAK`.
    """
    from medsearch.models.image_tower_seg import HEAD_SPLIT
    from medsearch.models.nodule_detector import detection_box, scan_lungs

    nr, nt = HEAD_SPLIT[0], HEAD_SPLIT[1]
    m = maps.detach().float().cpu()
    types = torch.sigmoid(m[nr:nr + nt]).numpy()
    region = torch.softmax(m[:nr], dim=0).numpy()[1:]
    nz, ny, nx = hu.shape
    n_l = len(vocab.LOBES)
    out = np.zeros((nt, n_l, len(LOCATION_FIELDS)), np.float32)
    out[:, :, 1] = -1
    z0, z1 = half_to_native(np.array([[0.0, 0, 0], [1.0, 0, 0]]), canon_affine, native_affine)[:, 2]
    half = max(1, int(np.ceil(abs(z1 - z0))))   # native slices per cell of the maps
    nodule = vocab.FINDING_TYPES.index("nodule")
    detected = [(ev, _detection_lobes(ev, region)) for ev in (evidence, getattr(evidence, "weak", None))
                if ev is not None and ev.native is not None and len(ev)]
    every = types[:, None] * region[None]                                # (T, L, z, y, x)
    flat = every.reshape(nt, n_l, -1)
    argmax = flat.argmax(axis=-1)
    out[:, :, 0] = np.take_along_axis(flat, argmax[..., None], axis=-1)[..., 0]
    for t, ftype in enumerate(vocab.FINDING_TYPES):
        for lobe in range(n_l):
            if t == nodule and detected:
                # the surest detection in the lobe; where there is none, its most nodule-like candidate
                # (the peak stays the painted channel's, near zero, so any real finding outranks it)
                for ev, lobes in detected:
                    mine = np.flatnonzero(lobes == lobe)
                    if len(mine):
                        k = int(mine[np.argmax(ev.probability[mine])])
                        key, box = detection_box(ev, k, native_affine, hu.shape)
                        out[t, lobe, 1:] = [key, *box]
                        break
                continue
            if out[t, lobe, 0] < MIN_PEAK:
                continue
            w = every[t, lobe]
            peak = np.unravel_index(int(argmax[t, lobe]), w.shape)
            plane = w[peak[0]]
            labels, _ = ndimage.label(plane >= BOX_FRACTION * plane[peak[1:]])
            yy, xx = np.nonzero(labels == labels[peak[1:]])
            corners = np.array([[peak[0], y, x] for y in (yy.min() - 0.5, yy.max() + 0.5)
                                for x in (xx.min() - 0.5, xx.max() + 0.5)])
            nat = half_to_native(np.vstack([np.array(peak, dtype=np.float64)[None], corners]),
                                  canon_affine, native_affine)
            key = int(np.clip(np.rint(nat[0, 2]), 0, nz - 1))
            bx = np.clip([nat[1:, 0].min(), nat[1:, 0].max()], 0, nx - 1)
            by = np.clip([nat[1:, 1].min(), nat[1:, 1].max()], 0, ny - 1)
            box = [int(np.floor(bx[0])), int(np.floor(by[0])), int(np.ceil(bx[1])), int(np.ceil(by[1]))]
            if ftype in REFINE_HU:
                if lungs is None:
                    lungs = scan_lungs(hu, spacing)
                key = refine_slice(hu, lungs, key, box, half, REFINE_HU[ftype], spacing)
            out[t, lobe, 1:] = [key, *box]
    return out


def best_location(locations: np.ndarray, wanted: Sequence[tuple[int, np.ndarray]]) -> tuple[int, list[int]] | None:
    """Key slice and box of the slot that best shows a query's findings.

    Args:
        locations: (T, L, 6) from :func:`slot_locations`.
        wanted: one (type index, lobe weights (L,)) per query finding
            (:func:`medsearch.models.localize.query_lobe_weights`).

    Returns:
        The location of the located slot with the highest peak x lobe weight, or None when none is.
    """
    best, where = 0.0, None
    for t, weights in wanted:
        score = locations[t, :, 0] * np.asarray(weights, dtype=np.float32)
        score[locations[t, :, 1] < 0] = 0.0
        lobe = int(np.argmax(score))
        if score[lobe] > best:
            best, where = float(score[lobe]), locations[t, lobe, 1:]
    if where is None:
        return None
    key, *box = (int(v) for v in where)
    return key, box

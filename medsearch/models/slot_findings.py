"""Findings of one volume from the ``ctseg`` voxel maps, each with its key slice and box.

Every connected region where a finding type's probability reaches 0.5 is one
finding: its lobe is where most of its probability lies, its density and size
are the maps' weighted means over it, and its location is its peak.  The peak
is mapped from the canonical grid to the native series
(:func:`medsearch.models.localize.canonical_to_native`); for focal findings the
key slice is then refined on the native pixels within the finding's extent,
because the maps are 13 mm apart along the body axis while a small nodule spans
a few millimetres: to the slice where the box holds the most of the finding's
tissue inside the lungs (given the scan's lung mask), else to the box's highest
mean attenuation.

Pleural findings are reported per side at the pleura, emphysema per lung, as the
labels and the terminology do.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from medsearch import vocab
from medsearch.models.heads import DENSITY_TYPES
from medsearch.models.image_tower_seg import HEAD_SPLIT
from medsearch.models.localize import half_to_native
from medsearch.models.nodule_detector import located
from medsearch.models.phrases import SIZED_TYPES
from medsearch.models.slot_locations import REFINE_HU, refine_slice

THRESHOLD = 0.5
#: Types whose key slice is refined on the native pixels.
FOCAL_TYPES = ("nodule", "mass", "cavity", "ground-glass opacity", "consolidation", "atelectasis")

def _refine_slice(native_hu: np.ndarray, key: int, box: list[int], half_extent: int) -> int:
    """The slice within ``half_extent`` of ``key`` whose box has the highest mean attenuation."""
    nz = native_hu.shape[0]
    x0, y0, x1, y1 = box
    lo, hi = max(0, key - half_extent), min(nz - 1, key + half_extent)
    if hi <= lo or x1 <= x0 or y1 <= y0:
        return key
    means = native_hu[lo:hi + 1, y0:y1 + 1, x0:x1 + 1].reshape(hi - lo + 1, -1).mean(axis=1)
    return int(lo + int(np.argmax(means)))


def decode(maps: torch.Tensor, canon_affine: np.ndarray, native_affine: np.ndarray,
           native_shape, native_hu: np.ndarray | None = None, presence: torch.Tensor | None = None,
           detections: dict | None = None, lungs=None, spacing=None) -> list[dict]:
    """Findings of one volume.

    Args:
        maps: (20, z, y, x) raw head outputs of one volume (half the canonical resolution).
        canon_affine: 4x4 canonical voxel (x, y, z) -> RAS mm.
        native_affine: 4x4 native voxel (x, y, z) -> LPS mm.
        native_shape: native volume shape (z, y, x).
        native_hu: the native volume (z, y, x), for refining focal key slices; optional.
        lungs, spacing: the scan's :class:`~medsearch.models.candidates.LungGrid` and (dz, dy, dx) mm;
            with them the refinement counts the finding's tissue inside the lungs
            (:func:`medsearch.models.slot_locations.refine_slice`), which a neighbouring heart or
            diaphragm cannot outweigh; without them it takes the box's highest mean attenuation.
        presence: (T, L) calibrated slot presence (:func:`medsearch.models.slots.image_slots`); when
            given, a region counts only where its slot is present, and the slot's presence is its
            probability, so that the findings agree with the embedding.
        detections: finding type -> :class:`~medsearch.models.nodule_detector.NoduleEvidence` with native
            positions; a region of that type that holds a detection takes its key slice and box from
            the surest one (the detector knows the slice; the map's cell is 13 mm tall).

    Returns:
        dicts with ``type``, ``finding_type``, ``site``, ``laterality``, ``density``, ``size_mm``,
        ``probability``, ``key_slice`` (native slice index) and ``bbox`` ([x0, y0, x1, y1] on it).
    """
    nr, nt, nd, _ = HEAD_SPLIT
    m = maps.detach().float().cpu()
    types = torch.sigmoid(m[nr:nr + nt]).numpy()
    region = torch.softmax(m[:nr], dim=0).numpy()[1:]
    dens = torch.softmax(m[nr + nt:nr + nt + nd], dim=0).numpy()
    logsize = m[-1].numpy()
    nz, ny, nx = (int(n) for n in native_shape)
    # native slices per map voxel along z, for the refinement window
    step = abs(half_to_native(np.array([[1.0, 0, 0]]), canon_affine, native_affine)[0, 2]
               - half_to_native(np.array([[0.0, 0, 0]]), canon_affine, native_affine)[0, 2])
    out: list[dict] = []
    for t, ftype in enumerate(vocab.FINDING_TYPES):
        prob = types[t]
        labels, n = ndimage.label(prob >= THRESHOLD)
        if n == 0:
            continue
        found = []
        for comp in range(1, n + 1):
            vox = labels == comp
            w = np.where(vox, prob, 0.0)
            peak = np.unravel_index(int(np.argmax(w)), w.shape)
            lobe = int(np.argmax((region * w).reshape(len(vocab.LOBES), -1).sum(1)))
            slot_p = float(presence[t, lobe]) if presence is not None else None
            if slot_p is not None and slot_p < THRESHOLD:
                continue
            total = w.sum()
            density = vocab.DENSITIES[int(np.argmax((dens * w).reshape(nd, -1).sum(1)))] \
                if ftype in DENSITY_TYPES else None
            size = round(float(np.exp((logsize * w).sum() / total)), 1) if ftype in SIZED_TYPES else None
            zz, yy, xx = np.nonzero(vox)
            # the box: the component's in-plane extent (map voxels are 2 canonical voxels wide)
            corners = np.array([[peak[0], y, x] for y in (yy.min() - 0.5, yy.max() + 0.5)
                                for x in (xx.min() - 0.5, xx.max() + 0.5)])
            nat = half_to_native(np.vstack([np.array(peak, dtype=np.float64)[None], corners]), canon_affine,
                                 native_affine)
            key = int(np.clip(np.rint(nat[0, 2]), 0, nz - 1))
            bx0, bx1 = np.clip([nat[1:, 0].min(), nat[1:, 0].max()], 0, nx - 1)
            by0, by1 = np.clip([nat[1:, 1].min(), nat[1:, 1].max()], 0, ny - 1)
            box = [int(np.floor(bx0)), int(np.floor(by0)), int(np.ceil(bx1)), int(np.ceil(by1))]
            exact = located(detections.get(ftype), np.argwhere(vox), native_affine, native_shape) \
                if detections else None
            if exact is not None:
                key, box = exact
            elif native_hu is not None and ftype in FOCAL_TYPES:
                extent = int(np.ceil((zz.max() - zz.min() + 1) * step / 2)) + 1
                if lungs is not None and spacing is not None and ftype in REFINE_HU:
                    key = refine_slice(native_hu, lungs, key, box, extent, REFINE_HU[ftype], spacing)
                else:
                    key = _refine_slice(native_hu, key, box, extent)
            found.append({"lobe": vocab.LOBES[lobe],
                          "probability": round(slot_p if slot_p is not None else float(prob[peak]), 4),
                          "density": density, "size_mm": size, "key_slice": key, "bbox": box,
                          "mass": float(total)})
        out += _report(ftype, found)
    return out


def _report(ftype: str, found: list[dict]) -> list[dict]:
    """Components -> reported findings: per lobe, or per side for pleural types and emphysema."""
    groups: dict[tuple[str, str], dict] = {}
    for f in found:
        side = vocab.LOBE_SIDE[f["lobe"]]
        if ftype in ("pleural effusion", "pneumothorax"):
            key = ("pleura", side)
        elif ftype == "emphysema":
            key = (f"{side} lung", side)
        else:
            key = (f["lobe"], side)
        best = groups.get(key)
        if best is None or f["mass"] > best["mass"]:
            groups[key] = f
    out = []
    if ftype in ("pleural effusion", "pneumothorax") and len(groups) == 2:
        # both sides: one bilateral finding, located at the larger collection
        best = max(groups.values(), key=lambda f: f["mass"])
        groups = {("pleura", "bilateral"): {**best, "probability": max(f["probability"] for f in groups.values())}}
    for (site, lat), f in sorted(groups.items()):
        out.append({"type": ftype, "finding_type": ftype, "site": site, "laterality": lat, "density": f["density"],
                    "size_mm": f["size_mm"], "probability": f["probability"], "key_slice": f["key_slice"],
                    "bbox": f["bbox"]})
    return out

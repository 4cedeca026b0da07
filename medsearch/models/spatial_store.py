"""Per-series spatial feature maps, kept for reranking and localisation at query time.

The encoding step writes one file per series,
``<data_dir>/spatial/<series_pseudonym>.npz``, holding the image tower's
spatial map (float16, (C, X, Y, Z)) and the geometry needed to map a heatmap
back to the native slices: the canonical grid shape and affine, the native
affine and shape; for ``ctseg`` models also a key slice and box per finding slot
(:mod:`medsearch.models.slot_locations`).  Like the stored volumes, these are derived from
de-identified pixels and hold no identifier; the file name is the pseudonym.

The search pipeline reads only the few hundred candidates it reranks, through a
small in-process LRU (the maps are ~36 KB each).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class SpatialRecord:
    spatial: np.ndarray  # float16 (C, X, Y, Z)
    canon_shape: tuple[int, int, int]
    canon_affine: np.ndarray  # 4x4 canonical voxel -> RAS mm
    native_affine: np.ndarray  # 4x4 native voxel (x, y, z) -> LPS mm
    native_shape: tuple[int, int, int]  # (z, y, x)
    #: (T, L, 6) key slice and box per slot (:mod:`medsearch.models.slot_locations`); None in files
    #: written before they were kept
    locations: np.ndarray | None = None


def spatial_path(inst, series_pseudonym: str) -> Path:
    return inst.data_dir / "spatial" / f"{series_pseudonym}.npz"


def save_spatial(inst, series_pseudonym: str, spatial, canon_shape, canon_affine, native_affine,
                 native_shape, locations=None) -> Path:
    """Write a series' spatial map, geometry and (ctseg) slot locations atomically (a crash never leaves
    half a file)."""
    path = spatial_path(inst, series_pseudonym)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, spatial=np.asarray(spatial, dtype=np.float16), canon_shape=np.asarray(canon_shape),
             canon_affine=np.asarray(canon_affine, dtype=np.float64),
             native_affine=np.asarray(native_affine, dtype=np.float64), native_shape=np.asarray(native_shape),
             **({"locations": np.asarray(locations, dtype=np.float32)} if locations is not None else {}))
    os.replace(tmp, path)
    _cache.pop(str(path), None)
    return path


_cache: OrderedDict[str, SpatialRecord] = OrderedDict()
_lock = threading.Lock()
CACHE_ENTRIES = 4096


def load_spatial(inst, series_pseudonym: str) -> SpatialRecord | None:
    """The stored record, or None when the series has none (encoded before maps were kept)."""
    path = spatial_path(inst, series_pseudonym)
    key = str(path)
    with _lock:
        rec = _cache.get(key)
        if rec is not None:
            _cache.move_to_end(key)
            return rec
    if not path.exists():
        return None
    with np.load(path) as z:
        rec = SpatialRecord(z["spatial"], tuple(int(n) for n in z["canon_shape"]), z["canon_affine"],
                            z["native_affine"], tuple(int(n) for n in z["native_shape"]),
                            z["locations"] if "locations" in z.files else None)
    with _lock:
        _cache[key] = rec
        while len(_cache) > CACHE_ENTRIES:
            _cache.popitem(last=False)
    return rec


def remove_spatial(inst, series_pseudonym: str) -> None:
    """Erase a series' map (right to erasure)."""
    path = spatial_path(inst, series_pseudonym)
    with _lock:
        _cache.pop(str(path), None)
    path.unlink(missing_ok=True)

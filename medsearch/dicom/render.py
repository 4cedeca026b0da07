"""Render de-identified slices as PNG with a display window.

Only de-identified volumes reach this module, and the PNG carries no text
chunks (Pillow writes none unless asked), so a rendered image holds pixels and
nothing else.  Burned-in annotation is handled upstream: such series are
quarantined before they are stored (see :mod:`medsearch.dicom.profile`).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from medsearch.errors import InputError

#: Display windows as (level, width) in HU.
WINDOWS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "bone": (300.0, 2000.0),
}
THUMB_SIZE = 256


def apply_window(image: np.ndarray, window: str = "lung") -> np.ndarray:
    """Map HU to 8-bit grey with a named window.

    Args:
        image: 2-D array (y, x) in HU.
        window: a key of :data:`WINDOWS`.

    Returns:
        uint8 array (y, x).
    """
    if window not in WINDOWS:
        raise InputError(f"Unknown display window '{window}'.", f"Use one of {', '.join(WINDOWS)}.")
    level, width = WINDOWS[window]
    lo = level - width / 2.0
    scaled = (np.asarray(image, dtype=np.float32) - lo) * (255.0 / width)
    return np.clip(scaled, 0, 255).astype(np.uint8)


def png_bytes(grey: np.ndarray, max_size: int | None = None) -> bytes:
    """Encode an 8-bit image as PNG, optionally downscaled so its longer side is ``max_size``."""
    img = Image.fromarray(grey, mode="L") if grey.dtype == np.uint8 else Image.fromarray(grey)
    if max_size and max(img.size) > max_size:
        img.thumbnail((max_size, max_size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def render_slice(array: np.ndarray, index: int, window: str = "lung", max_size: int | None = None) -> bytes:
    """Render slice ``index`` of a (z, y, x) HU volume as PNG bytes.

    Args:
        array: (z, y, x) volume in HU (int16 as stored, or float).
        index: slice index in the main-series order (ascending along the slice normal).
        window: "lung", "mediastinum" or "bone".
        max_size: optional longest side of the output in pixels.
    """
    if array.ndim != 3:
        raise InputError(f"A volume must have 3 dimensions, not {array.ndim}.", "Pass a (z, y, x) array.")
    if not 0 <= index < array.shape[0]:
        raise InputError(f"Slice index {index} is outside the volume (0..{array.shape[0] - 1}).",
                         "Pass an index within the series.")
    return png_bytes(apply_window(array[index], window), max_size)


def render_thumbnail(array: np.ndarray, window: str = "lung") -> bytes:
    """The middle slice, windowed and downscaled to at most :data:`THUMB_SIZE` pixels."""
    return render_slice(array, array.shape[0] // 2, window, THUMB_SIZE)

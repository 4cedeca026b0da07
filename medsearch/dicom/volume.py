"""Assemble one DICOM series into a volume of Hounsfield units.

A series is a set of 2-D frames (one per classic CT/MR instance, or many in one
enhanced multi-frame instance).  :func:`load_series` turns it into an
:class:`HUVolume` only when the frames form a regular grid; anything else is
refused with a :class:`SeriesError` that names the problem, because a volume
with a silently missing slice would put findings at the wrong place.

Checks, in order: one series, decodable monochrome pixels, one orientation,
one matrix size and pixel spacing, no duplicate position, no gap, constant
slice spacing.  Slices are sorted ascending along the slice normal
``row x column`` (the projection of ImagePositionPatient on it); index ``k``
in that order is "the slice index in the main series" used across the
product.

Compressed transfer syntaxes are decoded by pydicom's pixel-data backends,
with the pylibjpeg plugins (libjpeg, openjpeg, rle) installed from PyPI.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from medsearch.dicom.reading import quiet, read_dicom
from medsearch.errors import InputError

#: Orientation cosines may differ by this much and still count as one orientation.
ORIENTATION_TOL = 1e-3
#: Slice spacing may vary by this fraction of the median (and at least SPACING_TOL_MM).
SPACING_TOL_FRACTION = 0.05
SPACING_TOL_MM = 0.01


class SeriesError(InputError):
    """A series cannot be assembled into a volume; the message says why (no identifiers)."""

    code = "series"


@dataclass(frozen=True)
class HUVolume:
    """A volume on its native grid.

    Attributes:
        hu: float32 array (z, y, x) in Hounsfield units (CT) or rescaled intensity (MR).
        spacing: (dz, dy, dx) in mm.
        affine: 4x4 array mapping voxel indices (x, y, z, 1) to patient LPS millimetres.
        modality: the DICOM Modality, e.g. "CT".
    """

    hu: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray
    modality: str

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.hu.shape)


@dataclass(frozen=True)
class _Frame:
    """One 2-D frame with the geometry needed to place it."""

    position: np.ndarray  # ImagePositionPatient, mm (LPS)
    orientation: np.ndarray  # 6 direction cosines: row, then column
    pixel_spacing: tuple[float, float]  # (between rows, between columns) in mm
    slope: float
    intercept: float
    pixels: np.ndarray  # (rows, columns), stored values
    thickness: float | None


def _read(item: str | Path | Dataset) -> Dataset:
    if isinstance(item, Dataset):
        return item
    try:
        ds = read_dicom(item)
    except OSError as exc:
        ds, reason = None, type(exc).__name__
    else:
        reason = "not DICOM"
    if ds is None:
        raise SeriesError(f"A file of the series is not readable DICOM ({reason}).",
                          "Check the file; ingest quarantines it with this reason.")
    return ds


def _floats(value, n: int, what: str) -> np.ndarray:
    try:
        out = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        out = np.zeros(0)
    if out.shape != (n,) or not np.all(np.isfinite(out)):
        raise SeriesError(f"The series has an invalid or missing {what}.",
                          f"Only series with a valid {what} on every slice can be assembled.")
    return out


def _decode(ds: Dataset) -> np.ndarray:
    """Decode the pixel data, or say which transfer syntax could not be decoded."""
    if "PixelData" not in ds:
        raise SeriesError("An instance of the series has no pixel data.",
                          "Send the image instances of the series, not only its metadata.")
    if int(ds.get("SamplesPerPixel", 1)) != 1 or not str(ds.get("PhotometricInterpretation", "")).startswith(
            "MONOCHROME"):
        raise SeriesError("The series is not monochrome (colour or palette images cannot be HU volumes).",
                          "Only grayscale CT/MR series are ingested.")
    try:
        with quiet():
            return ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - every decoder failure becomes one clear, PHI-free reason
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = ts.name if ts is not None else "unknown"
        fix = ("Install the pylibjpeg plugins listed in pyproject.toml, or send the series uncompressed."
               if ts is not None and ts.is_compressed else
               "The pixel data does not match its description (rows, columns, bits, frames): correct it at "
               "the source.")
        raise SeriesError(f"The pixel data cannot be decoded (transfer syntax {name}; {type(exc).__name__}).",
                          fix) from None


def _rescale(item: Dataset | None, default: tuple[float, float]) -> tuple[float, float]:
    if item is None or "RescaleSlope" not in item:
        return default
    try:
        return float(item.RescaleSlope), float(item.get("RescaleIntercept", 0.0))
    except (TypeError, ValueError):
        raise SeriesError("The series has an invalid RescaleSlope or RescaleIntercept.",
                          "Correct the rescale attributes at the source.") from None


def _first(seq_owner: Dataset | None, keyword: str) -> Dataset | None:
    if seq_owner is None:
        return None
    seq = seq_owner.get(keyword)
    return seq[0] if seq else None


def _enhanced_frames(ds: Dataset) -> list[_Frame]:
    """Frames of an enhanced multi-frame instance (per-frame or shared functional groups)."""
    shared = _first(ds, "SharedFunctionalGroupsSequence")
    per_frame = ds.PerFrameFunctionalGroupsSequence
    pixels = _decode(ds)
    n = int(ds.NumberOfFrames)
    if pixels.ndim == 2:
        pixels = pixels[None]
    if pixels.shape[0] != n or len(per_frame) != n:
        raise SeriesError("The multi-frame instance's frame count does not match its functional groups.",
                          "Correct the instance at the source.")

    def group(frame: Dataset, keyword: str) -> Dataset | None:
        return _first(frame, keyword) or _first(shared, keyword)

    frames = []
    for i, fg in enumerate(per_frame):
        pos = group(fg, "PlanePositionSequence")
        ori = group(fg, "PlaneOrientationSequence")
        meas = group(fg, "PixelMeasuresSequence")
        if pos is None or ori is None or meas is None:
            raise SeriesError("A frame of the multi-frame instance has no plane position, orientation or "
                              "pixel measures.", "Only frames with full geometry can be assembled.")
        slope, intercept = _rescale(group(fg, "PixelValueTransformationSequence"), _rescale(ds, (1.0, 0.0)))
        spacing = _floats(meas.get("PixelSpacing"), 2, "PixelSpacing")
        frames.append(_Frame(
            position=_floats(pos.get("ImagePositionPatient"), 3, "ImagePositionPatient"),
            orientation=_floats(ori.get("ImageOrientationPatient"), 6, "ImageOrientationPatient"),
            pixel_spacing=(float(spacing[0]), float(spacing[1])),
            slope=slope, intercept=intercept, pixels=pixels[i],
            thickness=float(meas.SliceThickness) if meas.get("SliceThickness") else None))
    return frames


def _classic_frame(ds: Dataset) -> _Frame:
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise SeriesError("A multi-frame instance has no per-frame functional groups, so its frames cannot "
                          "be placed in space.", "Send the series as enhanced CT/MR or as single-frame "
                          "instances.")
    pixels = _decode(ds)
    spacing = _floats(ds.get("PixelSpacing"), 2, "PixelSpacing")
    slope, intercept = _rescale(ds, (1.0, 0.0))
    thickness = ds.get("SliceThickness")
    return _Frame(
        position=_floats(ds.get("ImagePositionPatient"), 3, "ImagePositionPatient"),
        orientation=_floats(ds.get("ImageOrientationPatient"), 6, "ImageOrientationPatient"),
        pixel_spacing=(float(spacing[0]), float(spacing[1])),
        slope=slope, intercept=intercept, pixels=pixels,
        thickness=float(thickness) if thickness not in (None, "") else None)


def frames_of(ds: Dataset) -> list[_Frame]:
    """The 2-D frames of one instance (classic or enhanced multi-frame)."""
    if "PerFrameFunctionalGroupsSequence" in ds:
        return _enhanced_frames(ds)
    return [_classic_frame(ds)]


def _check_series(datasets: Sequence[Dataset]) -> str:
    uids = {str(ds.get("SeriesInstanceUID", "")) for ds in datasets}
    if len(uids) != 1:
        raise SeriesError(f"The instances belong to {len(uids)} different series.",
                          "Group instances by SeriesInstanceUID before assembling a volume.")
    modalities = {str(ds.get("Modality", "")) for ds in datasets}
    if len(modalities) != 1:
        raise SeriesError("The instances of the series have different modalities.",
                          "Correct the series at the source.")
    return modalities.pop()


def _slice_spacing(offsets: np.ndarray, thickness: float | None) -> float:
    """The constant spacing between sorted slice offsets, or a SeriesError saying what is wrong."""
    if len(offsets) == 1:
        return float(thickness) if thickness and thickness > 0 else 1.0
    steps = np.diff(offsets)
    if np.any(steps < SPACING_TOL_MM):
        raise SeriesError(f"The series has {int(np.sum(steps < SPACING_TOL_MM))} duplicate slice position(s).",
                          "Remove the duplicate instances (or split the series) at the source.")
    step = float(np.median(steps))
    tol = max(SPACING_TOL_MM, SPACING_TOL_FRACTION * step)
    off = np.abs(steps - step) > tol
    if np.any(off):
        ratios = steps[off] / step
        if np.all(np.abs(ratios - np.round(ratios)) * step <= tol) and np.all(ratios > 1.5):
            missing = int(np.sum(np.round(ratios) - 1))
            raise SeriesError(f"The series is missing {missing} slice(s): the gaps are whole multiples of the "
                              f"{step:.3g} mm slice spacing.",
                              "Resend the complete series; ingest assembles only complete series.")
        raise SeriesError(f"The slice spacing varies beyond tolerance ({float(steps.min()):.3g} to "
                          f"{float(steps.max()):.3g} mm, tolerance {tol:.3g} mm).",
                          "Only series with regular slice spacing can be assembled; reconstruct them with a "
                          "constant spacing.")
    return float(offsets[-1] - offsets[0]) / (len(offsets) - 1)


def assemble(frames: Sequence[_Frame], modality: str) -> HUVolume:
    """Sort frames along the slice normal, check the grid, rescale to HU."""
    if not frames:
        raise SeriesError("The series has no image frames.", "Send the image instances of the series.")
    ref = frames[0]
    for f in frames[1:]:
        if np.max(np.abs(f.orientation - ref.orientation)) > ORIENTATION_TOL:
            raise SeriesError("The series mixes image orientations (e.g. a localizer among axial slices).",
                              "Split the series by orientation at the source, or send only the axial "
                              "reconstruction.")
    shapes = {f.pixels.shape for f in frames}
    if len(shapes) != 1:
        raise SeriesError("The slices of the series have different matrix sizes.",
                          "Send a series whose slices all have the same rows and columns.")
    if any(np.max(np.abs(np.subtract(f.pixel_spacing, ref.pixel_spacing))) > SPACING_TOL_MM for f in frames):
        raise SeriesError("The slices of the series have different pixel spacings.",
                          "Send a series whose slices all have the same PixelSpacing.")
    row, col = ref.orientation[:3], ref.orientation[3:]
    normal = np.cross(row, col)
    if not np.isclose(np.linalg.norm(normal), 1.0, atol=1e-2):
        raise SeriesError("The series has an invalid ImageOrientationPatient (not orthonormal).",
                          "Correct the orientation attributes at the source.")
    offsets = np.array([float(f.position @ normal) for f in frames])
    order = np.argsort(offsets, kind="stable")
    frames = [frames[i] for i in order]
    offsets = offsets[order]
    dz = _slice_spacing(offsets, ref.thickness)

    hu = np.empty((len(frames),) + ref.pixels.shape, dtype=np.float32)
    for k, f in enumerate(frames):
        # Rescale per frame: vendors may vary slope/intercept slice by slice.
        np.multiply(f.pixels, f.slope, out=hu[k], casting="unsafe")
        hu[k] += f.intercept
    dy, dx = ref.pixel_spacing
    affine = np.eye(4)
    affine[:3, 0] = row * dx  # voxel x runs along the row direction (increasing column index)
    affine[:3, 1] = col * dy  # voxel y runs along the column direction (increasing row index)
    affine[:3, 2] = normal * dz
    affine[:3, 3] = frames[0].position
    return HUVolume(hu=hu, spacing=(dz, float(dy), float(dx)), affine=affine, modality=modality)


def load_series(paths: Iterable[str | Path | Dataset]) -> HUVolume:
    """Assemble the instances of one series into an :class:`HUVolume`.

    Args:
        paths: files (or already read datasets) of exactly one series: single-frame
            instances, or one or more enhanced multi-frame instances.

    Returns:
        The volume, slices sorted ascending along the slice normal.

    Raises:
        SeriesError: the series is not one regular, decodable volume; the message says why.
    """
    datasets = [_read(p) for p in paths]
    if not datasets:
        raise SeriesError("No instances were given for the series.", "Pass the files of one series.")
    modality = _check_series(datasets)
    frames = [f for ds in datasets for f in frames_of(ds)]
    return assemble(frames, modality)

"""Fixtures: tiny synthetic CT series written with pydicom.

The series are small (a few 16x16 slices) so that the whole area's tests stay
fast; each test states the geometry or identifiers it needs.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


def ct_slice(k: int, *, study_uid: str, series_uid: str, frame_uid: str, patient_id: str = "MRN0001",
             patient_name: str = "DOE^JOHN", rows: int = 16, cols: int = 16, z: float | None = None,
             spacing: float = 2.5, orientation=(1, 0, 0, 0, 1, 0), slope: float = 1.0,
             intercept: float = -1024.0, modality: str = "CT", study_date: str = "20240102",
             accession: str = "ACC0001", sop_class=CTImageStorage) -> Dataset:
    """One CT slice whose stored values are ``k * 10 + column`` (so HU are predictable)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    sop_uid = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19500101"
    ds.PatientSex = "F"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = frame_uid
    ds.StudyDate = study_date
    ds.SeriesDate = study_date
    ds.StudyTime = "101010"
    ds.AccessionNumber = accession
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = k + 1
    ds.Modality = modality
    ds.BodyPartExamined = "CHEST"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImageOrientationPatient = list(orientation)
    normal = np.cross(orientation[:3], orientation[3:])
    pos = normal * (k * spacing if z is None else z)
    ds.ImagePositionPatient = [float(v) for v in pos]
    ds.SliceThickness = spacing
    ds.PixelSpacing = [0.7, 0.8]
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    pixels = (np.arange(cols, dtype=np.int16)[None, :] + np.int16(k * 10)).repeat(rows, axis=0)
    ds.PixelData = pixels.astype("<i2").tobytes()
    return ds


@pytest.fixture
def make_series(tmp_path) -> Callable[..., list[Path]]:
    """Write a series to disk and return its paths (in a shuffled order, as a PACS would send them)."""

    def make(n: int = 5, *, folder: Path | None = None, zs: list[float] | None = None, seed: int = 0,
             study_uid: str | None = None, series_uid: str | None = None, **kwargs) -> list[Path]:
        folder = folder or tmp_path / f"series{dt.datetime.now().timestamp():.6f}"
        folder.mkdir(parents=True, exist_ok=True)
        study_uid = study_uid or generate_uid()
        series_uid = series_uid or generate_uid()
        frame_uid = generate_uid()
        paths = []
        count = len(zs) if zs is not None else n
        for k in range(count):
            ds = ct_slice(k, study_uid=study_uid, series_uid=series_uid, frame_uid=frame_uid,
                          z=zs[k] if zs is not None else None, **kwargs)
            path = folder / f"{k:04d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
        rng = np.random.default_rng(seed)
        return [paths[i] for i in rng.permutation(len(paths))]

    return make


@pytest.fixture
def slice_factory() -> Callable[..., Dataset]:
    """The :func:`ct_slice` builder, for tests that decorate slices before writing them."""
    return ct_slice


@pytest.fixture
def lenient_writing(monkeypatch):
    """Hostile test values are deliberately invalid for their VR (text in TM, DA): let pydicom hold them."""
    import pydicom

    monkeypatch.setattr(pydicom.config.settings, "writing_validation_mode", pydicom.config.IGNORE)
    monkeypatch.setattr(pydicom.config.settings, "reading_validation_mode", pydicom.config.IGNORE)

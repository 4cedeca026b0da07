"""Tiny, valid CT series for connectivity checks, the PACS tests and the SCP benchmark.

Each slice is a complete CT Image Storage instance (geometry, rescale, a
water-filled disc in air), so ingest can assemble it into a volume.  It is not
the synthetic archive (``medsearch synth``), which has findings and labels.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid


def ct_slices(n: int = 8, size: int = 32, study_uid: str | None = None, series_uid: str | None = None,
              patient_name: str = "SAMPLE^PATIENT", patient_id: str = "SAMPLE-0001",
              study_date: dt.date = dt.date(2024, 3, 1), accession: str = "ACC0001") -> list[Dataset]:
    """``n`` axial slices of one series, 2.5 mm apart, ``size`` x ``size`` pixels."""
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size * 0.4) ** 2
    out = []
    for k in range(n):
        hu = np.where(disc, 0, -1000).astype(np.int16)
        hu[size // 2, size // 2] = 40 + k  # slices differ, so duplicates are detectable
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.FrameOfReferenceUID = study_uid + ".1" if len(study_uid) < 62 else generate_uid()
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = patient_name, patient_id, "19600101", "F"
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = study_date.strftime("%Y%m%d")
        ds.StudyTime = ds.SeriesTime = "101500"
        ds.AccessionNumber, ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = accession, "1", 1, k + 1
        ds.Modality, ds.BodyPartExamined, ds.StudyDescription = "CT", "CHEST", "CT CHEST"
        ds.SeriesDescription, ds.ImageType = "AXIAL 2.5", ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.Manufacturer = "MEDSEARCH SAMPLE"
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-size / 2, -size / 2, -2.5 * k]
        ds.PixelSpacing, ds.SliceThickness = [1.0, 1.0], 2.5
        ds.KVP, ds.ConvolutionKernel = 120, "STANDARD"
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows = ds.Columns = size
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "HU"
        ds.WindowCenter, ds.WindowWidth = -600, 1500
        ds.PixelData = hu.tobytes()
        out.append(ds)
    return out


def write_ct_series(folder: Path, n: int = 8, size: int = 32, **kwargs) -> list[Path]:
    """Write :func:`ct_slices` as DICOM files into ``folder``; returns the paths in slice order."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, ds in enumerate(ct_slices(n, size, **kwargs)):
        path = folder / f"slice{k:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths

"""The DICOM files: readable, valid headers, pixels equal to the in-memory volume, deterministic."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medsearch.synth.acquisition import EXPLICIT_LE, IMPLICIT_LE, J2K_LOSSLESS, RLE
from medsearch.synth.dicom_writer import CT_IMAGE, ENHANCED_CT, SECONDARY_CAPTURE, write_study


def _files(root: Path):
    return sorted(root.rglob("*.dcm"))


def test_pydicom_reads_every_file(archive):
    files = _files(archive / "dicom")
    assert files
    for p in files:
        ds = pydicom.dcmread(p)
        assert ds.pixel_array.size > 0
        assert ds.SOPClassUID in (CT_IMAGE, ENHANCED_CT, SECONDARY_CAPTURE)
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert len(ds.SOPInstanceUID) <= 64 and len(ds.StudyInstanceUID) <= 64
        assert ds.PatientName and ds.PatientID and ds.AccessionNumber


def test_labels_match_files(archive):
    rows = [json.loads(line) for line in (archive / "labels.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 4
    for row in rows:
        for key in ("study_uid", "accession_number", "patient_id", "patient_name", "study_date", "series",
                    "findings", "report_en", "report_zh"):
            assert key in row
        roles = {s["role"] for s in row["series"]}
        assert {"localizer", "axial"} <= roles
        for s in row["series"]:
            files = sorted((archive / s["path"]).glob("*.dcm"))
            assert len(files) == s["files"]
            ds = pydicom.dcmread(files[0], stop_before_pixels=True)
            assert ds.SeriesInstanceUID == s["series_uid"] and ds.StudyInstanceUID == row["study_uid"]
            assert ds.AccessionNumber == row["accession_number"] and ds.PatientID == row["patient_id"]


def _decode(folder: Path) -> tuple[np.ndarray, list[float]]:
    """HU volume of a series ordered ascending along the slice normal."""
    slices = []
    for p in _files(folder):
        ds = pydicom.dcmread(p)
        if "PerFrameFunctionalGroupsSequence" in ds:
            tr = ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0]
            arr = ds.pixel_array.astype(np.float32) * float(tr.RescaleSlope) + float(tr.RescaleIntercept)
            for i, fg in enumerate(ds.PerFrameFunctionalGroupsSequence):
                slices.append((float(fg.PlanePositionSequence[0].ImagePositionPatient[2]), arr[i]))
        else:
            arr = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
            slices.append((float(ds.ImagePositionPatient[2]), arr))
    slices.sort(key=lambda t: t[0])
    return np.stack([s for _, s in slices]), [z for z, _ in slices]


@pytest.mark.parametrize("ts,multiframe", [(EXPLICIT_LE, False), (IMPLICIT_LE, False), (RLE, False),
                                           (J2K_LOSSLESS, False), (EXPLICIT_LE, True), (RLE, True)])
def test_dicom_pixels_equal_the_in_memory_volume(tmp_path, one_study, ts, multiframe):
    study = one_study
    study.acquisition.transfer_syntax = ts
    study.acquisition.multiframe = multiframe
    records = write_study(study, tmp_path / "ST00000", 2)
    axial = next(r for r in records if r["role"] == "axial")
    vol, zs = _decode(tmp_path / "ST00000" / axial["path"])
    assert vol.shape == study.hu.shape
    np.testing.assert_array_equal(vol, study.hu)
    assert np.allclose(zs, study.grid.axes()[2], atol=1e-3)
    ds = pydicom.dcmread(_files(tmp_path / "ST00000" / axial["path"])[0])
    assert ds.file_meta.TransferSyntaxUID == ts


def test_headers_carry_synthetic_phi_everywhere(archive):
    seen_private = seen_charset = 0
    for p in _files(archive / "dicom"):
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        for kw in ("InstitutionName", "ReferringPhysicianName", "OperatorsName", "StationName",
                   "PatientBirthDate", "PatientAddress", "OtherPatientIDsSequence"):
            assert kw in ds, kw
        assert ds.StudyDate in ds.StudyInstanceUID  # the date inside the UID
        seen_private += any(e.tag.is_private and str(ds.PatientID) in str(e.value) for e in ds)
        seen_charset += "SpecificCharacterSet" in ds
    assert seen_private and seen_charset


def test_burned_in_secondary_capture(tmp_path, one_study):
    study = one_study
    sc_info = type(study.series[0])("secondary_capture", 99, study.series[0].uid + ".99", "Key image")
    study.series.append(sc_info)
    try:
        records = write_study(study, tmp_path / "ST", 2)
    finally:
        study.series.remove(sc_info)
    sc = next(r for r in records if r["role"] == "secondary_capture")
    ds = pydicom.dcmread(_files(tmp_path / "ST" / sc["path"])[0])
    assert ds.BurnedInAnnotation == "YES" and ds.SOPClassUID == SECONDARY_CAPTURE
    # the text is in the pixels: the top-left corner holds bright glyphs
    assert (ds.pixel_array[:40, :120] > 200).sum() > 50


def _digest(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_different_seed_different_studies(tmp_path):
    from medsearch.synth.archive import generate_archive

    generate_archive(tmp_path / "a", 2, 9, 128, workers=1, progress=False)
    generate_archive(tmp_path / "b", 2, 9, 128, workers=2, progress=False)
    generate_archive(tmp_path / "c", 2, 10, 128, workers=1, progress=False)
    a, b, c = _digest(tmp_path / "a"), _digest(tmp_path / "b"), _digest(tmp_path / "c")
    assert a == b
    la = (tmp_path / "a" / "labels.jsonl").read_text(encoding="utf-8").splitlines()
    lc = (tmp_path / "c" / "labels.jsonl").read_text(encoding="utf-8").splitlines()
    for x, y in zip(la, lc):
        x, y = json.loads(x), json.loads(y)
        assert x["study_uid"] != y["study_uid"] and x["patient_name"] != y["patient_name"]
    assert not set(a.values()) & set(c.values())


def test_previews_written(archive):
    pngs = sorted((archive / "preview").rglob("*.png"))
    assert len(pngs) >= 4 * 3


def test_volume_assembly_reads_every_series(archive):
    """The project's volume loader assembles every CT series of the archive, and the main
    series equals what the labels' slice indices refer to."""
    from medsearch.dicom.volume import load_series

    rows = [json.loads(line) for line in (archive / "labels.jsonl").read_text(encoding="utf-8").splitlines()]
    for row in rows:
        for s in row["series"]:
            if s["role"] in ("axial", "mediastinal"):
                vol = load_series(_files(archive / s["path"]))
                assert vol.modality == "CT"
                if s["role"] == "axial":
                    assert vol.shape[0] == row["n_slices"]
                    assert np.allclose(vol.spacing, row["spacing_mm"], atol=1e-3)
                    for f in row["findings"]:
                        # the centre (patient mm) maps to the key slice through the loader's affine
                        ijk = np.linalg.solve(vol.affine, np.array(f["center_mm"] + [1.0]))[:3]
                        assert abs(ijk[2] - f["key_slice"]) <= 0.5 + 1e-6


@pytest.mark.parametrize("ts,multiframe", [(RLE, True), (J2K_LOSSLESS, False), (IMPLICIT_LE, False)])
def test_volume_assembly_matches_in_memory(tmp_path, one_study, ts, multiframe):
    from medsearch.dicom.volume import load_series

    study = one_study
    study.acquisition.transfer_syntax, study.acquisition.multiframe = ts, multiframe
    rec = next(r for r in write_study(study, tmp_path / "ST", 2) if r["role"] == "axial")
    vol = load_series(_files(tmp_path / "ST" / rec["path"]))
    np.testing.assert_array_equal(vol.hu, study.hu)
    np.testing.assert_allclose(vol.affine, study.affine, atol=1e-3)


def test_thick_mediastinal_series(tmp_path, one_study):
    """The second series: 5 mm, soft kernel, less noise, same frame of reference, loadable."""
    from medsearch.dicom.volume import load_series

    study = one_study
    info = type(study.series[0])("mediastinal", 3, study.series[0].uid + ".3", "Mediastinum 5.0")
    study.series.append(info)
    try:
        records = write_study(study, tmp_path / "ST", 2)
    finally:
        study.series.remove(info)
    rec = next(r for r in records if r["role"] == "mediastinal")
    files = _files(tmp_path / "ST" / rec["path"])
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert float(ds.SliceThickness) == 5.0 and ds.ConvolutionKernel == study.acquisition.soft_kernel
    assert ds.FrameOfReferenceUID == study.frame_uid and ds.WindowCenter == "40"
    vol = load_series(files)
    assert abs(vol.spacing[0] * vol.shape[0] - study.spacing[0] * study.hu.shape[0]) <= 5.0
    # noise in the air outside the body is lower than in the main series
    assert vol.hu[:, :6, 40:-40].std() < study.hu[:, :6, 40:-40].std()

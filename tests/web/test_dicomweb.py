"""STOW-RS (PS3.18 10.5) against the real ingest: 200, 202, 409, 400, 415."""

from __future__ import annotations

import io

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from sqlalchemy import func, select

from medsearch.store.models import Series

BOUNDARY = "medsearch-test-boundary"
CT = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


def _slice(k: int, study: str, series: str, frame: str, modality: str = "CT") -> tuple[bytes, str]:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    sop = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
    ds.PatientName, ds.PatientID, ds.AccessionNumber = "STOW^PATIENT", "MRN-STOW-1", "ACC-STOW-1"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
    ds.StudyDate, ds.Modality, ds.BodyPartExamined = "20240102", modality, "CHEST"
    ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [0.0, 0.0, k * 2.5]
    ds.SliceThickness, ds.PixelSpacing = 2.5, [0.7, 0.7]
    ds.Rows = ds.Columns = 16
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation = 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = 1.0, -1024.0
    ds.PixelData = (np.arange(256, dtype=np.int16).reshape(16, 16) + k).astype("<i2").tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue(), sop


def _series(n=4, modality="CT"):
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    return [_slice(k, study, series, frame, modality) for k in range(n)]


def _body(parts: list[tuple[bytes, str]]) -> bytes:
    out = b""
    for data, ctype in parts:
        out += f"--{BOUNDARY}\r\nContent-Type: {ctype}\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


@pytest.fixture
def stow(app, tokens):
    client = app.test_client()

    def post(body: bytes, content_type: str = CT, role: str = "pacs"):
        return client.post("/dicomweb/studies", data=body, headers={
            "Content-Type": content_type, "Authorization": f"Bearer {tokens[role]}",
            "Accept": "application/dicom+json"})

    return post


def _seq(resp, tag):
    return resp.get_json().get(tag, {}).get("Value", [])


def _series_count(inst):
    with inst.sessions() as s:
        return s.execute(select(func.count(Series.id))).scalar_one()


def test_all_stored_is_200_and_lists_the_instances(stow, web_inst):
    parts = _series(4)
    before = _series_count(web_inst)
    resp = stow(_body([(d, "application/dicom") for d, _ in parts]))
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert resp.mimetype == "application/dicom+json"
    refs = _seq(resp, "00081199")
    assert sorted(i["00081155"]["Value"][0] for i in refs) == sorted(uid for _, uid in parts)
    assert "00081198" not in resp.get_json()
    assert _series_count(web_inst) == before + 1
    assert not any((web_inst.spool_dir / "stow").iterdir()), "the identifiable spool must be removed"
    again = stow(_body([(d, "application/dicom") for d, _ in parts]))  # idempotent resend
    assert again.status_code == 200 and _series_count(web_inst) == before + 1


def test_some_failed_is_202_with_the_failures_listed(stow):
    parts = _series(3)
    resp = stow(_body([(d, "application/dicom") for d, _ in parts] + [(b"this is not DICOM", "application/dicom")]))
    assert resp.status_code == 202
    assert len(_seq(resp, "00081199")) == 3
    failed = _seq(resp, "00081198")
    assert len(failed) == 1 and failed[0]["00081197"]["Value"] == [0xC000]


def test_nothing_stored_is_409(stow):
    parts = _series(2, modality="US")  # not an accepted modality: ingest rejects it
    resp = stow(_body([(d, "application/dicom") for d, _ in parts]))
    assert resp.status_code == 409
    assert [f["00081197"]["Value"][0] for f in _seq(resp, "00081198")] == [0x0110, 0x0110]
    assert "00081199" not in resp.get_json()


@pytest.mark.parametrize("content_type", [
    "application/dicom", "application/json", "multipart/form-data; boundary=x",
    f'multipart/related; type="application/json"; boundary={BOUNDARY}',
    f"multipart/related; boundary={BOUNDARY}",
])
def test_wrong_media_type_is_415(stow, content_type):
    resp = stow(_body([(b"x", "application/dicom")]), content_type)
    assert resp.status_code == 415 and resp.get_json()["error"] == "unsupported_media_type"


@pytest.mark.parametrize("body, content_type", [
    (b"", CT),
    (b"no boundary anywhere", CT),
    (f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\nno blank line".encode(), CT),
    (_body([(b"x", "application/dicom")]), 'multipart/related; type="application/dicom"'),
])
def test_malformed_request_is_400(stow, body, content_type):
    resp = stow(body, content_type)
    assert resp.status_code == 400 and resp.get_json()["error"] == "input"


def test_a_real_dicomweb_client_can_store(web_inst, tokens):
    """dicomweb-client's STOW-RS against the live server (its multipart encoding, not ours)."""
    import threading

    import pydicom
    from dicomweb_client.api import DICOMwebClient

    from medsearch.web.serve import make_server

    server, _ = make_server(web_inst, "127.0.0.1", 0)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        client = DICOMwebClient(f"http://127.0.0.1:{server.port}/dicomweb",
                                headers={"Authorization": f"Bearer {tokens['pacs']}", "Connection": "close"})
        datasets = [pydicom.dcmread(io.BytesIO(data)) for data, _ in _series(3)]
        before = _series_count(web_inst)
        result = client.store_instances(datasets)
        assert len(result.ReferencedSOPSequence) == 3
        assert _series_count(web_inst) == before + 1
    finally:
        server.close()
        thread.join(10)


def test_stale_spool_folders_are_cleared(web_inst):
    import os
    import time

    from medsearch.web.dicomweb import STALE_SPOOL_SECONDS, clear_stale_spool

    root = web_inst.spool_dir / "stow"
    old, fresh = root / "old", root / "fresh"
    for folder in (old, fresh):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "part00000.dcm").write_bytes(b"identifiable")
    past = time.time() - STALE_SPOOL_SECONDS - 5
    os.utime(old, (past, past))
    assert clear_stale_spool(web_inst) == 1
    assert not old.exists() and fresh.exists()

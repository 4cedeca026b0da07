"""Ingest a small generated archive (``medsearch synth``): every file handled, no header identifier stored."""

from __future__ import annotations

import pydicom
import pytest
from sqlalchemy import select

from medsearch.dicom.ingest import ingest_paths
from medsearch.store.models import Series, Study

IDENTIFYING = ("PatientName", "PatientID", "AccessionNumber", "StudyInstanceUID", "SeriesInstanceUID",
               "SOPInstanceUID", "PatientBirthDate", "InstitutionName", "ReferringPhysicianName")


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    from medsearch.synth.archive import generate_archive

    out = tmp_path_factory.mktemp("synth")
    generate_archive(out, studies=2, seed=7, matrix=128, workers=1, progress=False)
    return out


def test_synthetic_archive_ingests_every_file(sqlite_instance, archive):
    dicom_files = sorted(p for p in archive.rglob("*.dcm"))
    identifiers = set()
    axial_series = set()
    for path in dicom_files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        identifiers |= {str(ds.get(k)) for k in IDENTIFYING if ds.get(k) not in (None, "")}
        if "LOCALIZER" not in ds.ImageType:
            axial_series.add(ds.SeriesInstanceUID)
    report = ingest_paths(sqlite_instance, [archive], encode=False)
    files = report.counts()["files"]
    assert files.get("ingested", 0) + files.get("rejected", 0) == len(dicom_files), files
    assert all("localizer" in f.reason for f in report.files if f.outcome == "rejected")
    assert report.counts()["series"] == {"stored": len(axial_series)}
    with sqlite_instance.sessions() as session:
        assert session.scalar(select(Study.id)) is not None
        assert len(session.scalars(select(Series)).all()) == len(axial_series)
    written = [p.read_bytes() for p in sqlite_instance.home.rglob("*") if p.is_file()]
    leaks = [value for value in sorted(identifiers) if len(value) >= 6
             and any(value.encode() in blob for blob in written)]
    assert not leaks

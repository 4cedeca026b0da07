"""Every file of pydicom's bundled test data is de-identified or quarantined with a reason; nothing crashes.

The corpus covers many vendors, transfer syntaxes (JPEG, JPEG-LS, JPEG 2000, RLE, big
endian, deflate), malformed headers, files without a preamble and DICOMDIRs.
"""

from __future__ import annotations

import shutil
import warnings
from collections import Counter
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_files

from medsearch.dicom.deid_tree import DEIDENTIFIED, deid_tree
from medsearch.dicom.ingest import ingest_paths


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns that optional downloadable files are absent
        files = [Path(f) for f in get_testdata_files() if Path(f).is_file()]
    assert len(files) > 150
    root = tmp_path_factory.mktemp("corpus")
    for i, f in enumerate(files):
        shutil.copy(f, root / f"{i:03d}_{f.name}")
    return root


def test_every_file_deidentified_or_quarantined(sqlite_instance, corpus, tmp_path):
    report = deid_tree(sqlite_instance, corpus, tmp_path / "out")
    counts = Counter(f.outcome for f in report.files)
    assert len(report.files) == len(list(corpus.iterdir()))
    assert set(counts) <= {DEIDENTIFIED, "quarantined", "not_dicom"}, counts
    assert counts[DEIDENTIFIED] >= 100 and counts["quarantined"] >= 10
    assert report.all_handled
    assert all(f.reason for f in report.files if f.outcome != DEIDENTIFIED)
    for path in sorted((tmp_path / "out").rglob("*.dcm")):
        ds = pydicom.dcmread(path)
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert not any(t.is_private for t in ds.keys())


def test_every_file_ingested_or_rejected_with_reason(sqlite_instance, corpus):
    report = ingest_paths(sqlite_instance, [corpus], encode=False)
    counts = report.counts()
    assert sum(counts["files"].values()) == len(list(corpus.iterdir()))
    assert counts["files"].get("ingested", 0) >= 10, counts
    assert "unreadable" not in counts["files"]
    assert all(f.reason for f in report.files if f.outcome in ("quarantined", "rejected", "not_dicom"))

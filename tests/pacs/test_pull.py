"""DICOMweb pull from a real Orthanc (QIDO-RS + WADO-RS through dicomweb-client), resumable."""

from __future__ import annotations

import datetime as dt

import pydicom
import pytest
from sqlalchemy import select

from medsearch.errors import InputError
from medsearch.pacs.pull import pull
from medsearch.pacs.spool import Spool
from medsearch.store.models import IngestJob

from .conftest import assert_no_phi


def _sealed_uids(inst):
    spool = Spool.for_instance(inst)
    return {str(pydicom.dcmread(p).StudyInstanceUID) for folder in spool.sealed() for p in spool.files(folder)}


@pytest.fixture
def orthanc_with_studies(orthanc_factory, series_factory):
    orthanc = orthanc_factory()
    studies = {}
    for year in (2019, 2023, 2024):
        paths = series_factory(n=3, study_date=dt.date(year, 6, 1))
        orthanc.upload(paths)
        studies[year] = str(pydicom.dcmread(paths[0]).StudyInstanceUID)
    mr = series_factory(n=1, study_date=dt.date(2024, 1, 1))
    for p in mr:
        ds = pydicom.dcmread(p)
        ds.Modality = "MR"
        ds.save_as(p)
    orthanc.upload(mr)
    return orthanc, studies


def test_pull_takes_ct_studies_since_a_date_and_resumes(sqlite_instance, orthanc_with_studies, pacs_log):
    orthanc, studies = orthanc_with_studies
    url = orthanc.url + "/dicom-web"
    first = pull(sqlite_instance, url, since="2020-01-01", limit=1, ingest=False)
    assert first.found == 2 and first.fetched == 1 and first.instances == 3
    second = pull(sqlite_instance, url, since="2020-01-01", ingest=False)
    assert second.found == 2 and second.skipped == 1 and second.fetched == 1
    assert _sealed_uids(sqlite_instance) == {studies[2023], studies[2024]}
    with sqlite_instance.sessions() as s:
        jobs = s.execute(select(IngestJob.source, IngestJob.status)).all()
    assert jobs == [("pull", "queued"), ("pull", "queued")]
    third = pull(sqlite_instance, url, ingest=False)  # no date limit: the 2019 study too
    assert (third.found, third.skipped, third.fetched) == (3, 2, 1)
    checkpoint = " ".join(p.read_text() for p in (sqlite_instance.spool_dir / "pull").iterdir())
    assert_no_phi(checkpoint + pacs_log.text, list(studies.values()))


@pytest.mark.parametrize("url, since, problem", [
    ("ftp://pacs/dicom-web", None, "must start with http"),
    ("http://127.0.0.1:9/dicom-web", None, "QIDO-RS search"),
    ("http://127.0.0.1:9/dicom-web", "last tuesday", "is not a date"),
])
def test_bad_pull_arguments_name_the_fix(sqlite_instance, url, since, problem):
    with pytest.raises(InputError) as err:
        pull(sqlite_instance, url, since=since, ingest=False)
    assert problem in err.value.problem and err.value.fix

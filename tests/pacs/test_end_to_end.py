"""The whole path with the real ingest: C-STORE (dcmtk) -> spool -> queue -> worker -> ingest, on SQLite and
PostgreSQL; and DICOMweb pull from Orthanc -> ingest."""

from __future__ import annotations

import pydicom
from sqlalchemy import func, select

from medsearch.pacs.pull import pull
from medsearch.pacs.worker import run_worker
from medsearch.store.models import IngestJob, Series, Study, Volume

from .conftest import CANARY_ID, CANARY_NAME, assert_no_phi, dcmtk, run_tool, wait_for


def _series(inst):
    with inst.sessions() as s:
        return s.execute(select(Series.n_instances, Series.modality, Series.uid)).all()


def _jobs(inst):
    with inst.sessions() as s:
        return s.execute(select(IngestJob.status)).scalars().all()


def test_storescu_study_is_ingested(make_receiver, db_url, series_factory, pacs_log):
    receiver, inst = make_receiver(database_url=db_url, quiet_seconds=0.5)
    assert inst.engine.dialect.name == db_url.split(":")[0].split("+")[0]
    a, b = series_factory(n=5, size=32), None
    study_uid = str(pydicom.dcmread(a[0]).StudyInstanceUID)
    b = series_factory(n=3, size=32, study_uid=study_uid)  # a second series of the same study
    echo = run_tool(dcmtk("echoscu"), "-aec", "MEDSEARCH", "127.0.0.1", receiver.port)
    assert echo.returncode == 0, echo.stderr
    sent = run_tool(dcmtk("storescu"), "-aec", "MEDSEARCH", "127.0.0.1", receiver.port, *a, *b)
    assert sent.returncode == 0, sent.stderr
    wait_for(lambda: len(_jobs(inst)) == 2, timeout=10, what="both series to be queued")
    report = run_worker(inst, once=True)
    assert report.as_dict() == {"done": 2, "retried": 0, "dead": 0, "instances": 8}, report.errors
    assert sorted((n, m) for n, m, _ in _series(inst)) == [(3, "CT"), (5, "CT")]
    with inst.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Study)) == 1
        stored_uids = {u for _, _, u in _series(inst)}
    sent_uids = {str(pydicom.dcmread(p).SeriesInstanceUID) for p in (a[0], b[0])}
    assert not stored_uids & sent_uids, "the stored series UIDs must be the de-identified ones"
    assert _jobs(inst) == ["done", "done"] and receiver.spool.sealed() == []
    # Sending the same study again ingests nothing twice.
    again = run_tool(dcmtk("storescu"), "-aec", "MEDSEARCH", "127.0.0.1", receiver.port, *a)
    assert again.returncode == 0
    wait_for(lambda: len(_jobs(inst)) == 3, timeout=10, what="the resent series to be queued")
    run_worker(inst, once=True)
    assert sorted(n for n, _, _ in _series(inst)) == [3, 5]
    assert_no_phi(pacs_log.text, [study_uid, *sent_uids])


def test_pull_from_orthanc_is_ingested(sqlite_instance, orthanc_factory, series_factory):
    orthanc = orthanc_factory()
    orthanc.upload(series_factory(n=4, size=32))
    orthanc.upload(series_factory(n=3, size=32))
    report = pull(sqlite_instance, orthanc.url + "/dicom-web")
    assert (report.found, report.fetched, report.instances, report.ingested_jobs) == (2, 2, 7, 2)
    assert sorted(n for n, _, _ in _series(sqlite_instance)) == [3, 4]
    rerun = pull(sqlite_instance, orthanc.url + "/dicom-web")
    assert (rerun.skipped, rerun.fetched) == (2, 0)
    with sqlite_instance.sessions() as s:
        text = " ".join(str(r) for r in s.execute(select(Study.uid, Study.description, Series.description)
                                                   .join(Series)).all())
    assert CANARY_NAME not in text and CANARY_ID not in text


def test_synthetic_study_over_dcmtk_is_ingested_and_searchable_on_postgresql(
        make_receiver, postgres_url, synthetic_study, untrained_model_dir, pacs_log):
    from medsearch.search import search

    receiver, inst = make_receiver({"model_dir": str(untrained_model_dir), "model_int8": False},
                                   database_url=postgres_url, quiet_seconds=0.5)
    assert inst.engine.dialect.name == "postgresql"
    files = sorted(synthetic_study.rglob("*.dcm"))
    per_series = sorted(len(list(d.glob("*.dcm"))) for d in synthetic_study.iterdir())
    echo = run_tool(dcmtk("echoscu"), "-aet", "PACS1", "-aec", "MEDSEARCH", "127.0.0.1", receiver.port)
    assert echo.returncode == 0, echo.stderr
    sent = run_tool(dcmtk("storescu"), "+sd", "+r", "-aet", "PACS1", "-aec", "MEDSEARCH", "127.0.0.1",
                    receiver.port, synthetic_study)
    assert sent.returncode == 0, sent.stderr[-2000:]
    wait_for(lambda: len(_jobs(inst)) == len(per_series), timeout=15, what="every series to be queued")
    report = run_worker(inst, once=True)
    assert report.done == len(per_series) and report.instances == len(files), report.errors
    stored = sorted(n for n, m, _ in _series(inst))
    assert max(per_series) in stored, "the main CT series was not stored whole"
    assert all(n in per_series for n in stored)
    with inst.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Study)) == 1
        study = s.scalar(select(Study.pseudonym))
        encoded = s.scalar(select(func.count()).select_from(Volume).where(Volume.vector_id.is_not(None)))
    assert encoded >= 1, "the received series was stored but not encoded"
    found = search(inst, "ground-glass nodule in the right upper lobe", k=5)
    assert [r["study"] for r in found["results"]] == [study]
    source = pydicom.dcmread(files[0])
    assert_no_phi(pacs_log.text, [str(source.StudyInstanceUID), str(source.PatientID), str(source.PatientName)])

"""The worker's retry, dead-letter and clean-up logic around the ingest call."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from medsearch.doctor import run_doctor
from medsearch.errors import InputError
from medsearch.pacs import queue
from medsearch.pacs.spool import Spool
from medsearch.pacs.worker import WorkerReport, process_one
from medsearch.store.models import IngestJob

from .conftest import CANARY_NAME


def _sealed_job(inst, name="abc.1"):
    spool = Spool.for_instance(inst)
    path = spool.add_sealed(name, {"a.dcm": b"x", "b.dcm": b"y"})
    queue.enqueue(inst, path, "scp")
    return spool, path


def _status(inst):
    with inst.sessions() as s:
        return s.execute(select(IngestJob.status, IngestJob.attempts, IngestJob.last_error)).one()


def test_done_job_hands_all_files_to_ingest_then_deletes_its_folder(sqlite_instance):
    spool, path = _sealed_job(sqlite_instance)
    seen = []

    def ingest_paths(inst, paths, source):
        seen.append(([p.name for p in paths], source))

    report = WorkerReport()
    assert process_one(sqlite_instance, spool, ingest_paths, report)
    assert seen == [(["a.dcm", "b.dcm"], "scp")]
    assert _status(sqlite_instance)[0] == "done"
    assert spool.sealed() == [] and report.done == 1 and report.instances == 2
    assert not process_one(sqlite_instance, spool, ingest_paths, report)


@pytest.mark.parametrize("exc, stored", [
    (InputError("The series has no slices.", "Send the whole series."), "The series has no slices."),
    (ValueError(f"patient {CANARY_NAME} broke it"), "unexpected ValueError"),
])
def test_failures_are_retried_then_dead_lettered_and_doctor_lists_them(sqlite_instance, exc, stored):
    sqlite_instance.settings._values.update(worker_max_attempts=2, worker_backoff_seconds=0)
    spool, path = _sealed_job(sqlite_instance)

    def ingest_paths(inst, paths, source):
        raise exc

    report = WorkerReport()
    assert process_one(sqlite_instance, spool, ingest_paths, report)
    assert _status(sqlite_instance)[:2] == ("queued", 1)
    assert process_one(sqlite_instance, spool, ingest_paths, report)
    status, attempts, error = _status(sqlite_instance)
    assert (status, attempts) == ("dead", 2) and stored in error and CANARY_NAME not in error
    assert report.retried == 1 and report.dead == 1
    assert spool.sealed() == [path], "a dead letter keeps its instances for the retry"
    doctor = run_doctor(sqlite_instance)
    check = next(c for c in doctor["checks"] if c["name"] == "ingest_queue")
    assert check["status"] == "fail" and stored in check["detail"] and "--retry-dead" in check["fix"]
    assert doctor["counts"]["dead_letters"] == 1 and not doctor["ok"]


def test_a_job_that_keeps_killing_its_worker_is_dead_lettered(sqlite_instance):
    from sqlalchemy import update

    from medsearch.pacs.queue import utcnow

    sqlite_instance.settings._values.update(worker_max_attempts=2)
    spool, path = _sealed_job(sqlite_instance)
    for _ in range(2):  # two workers died mid-job: their leases ran out
        assert queue.claim(sqlite_instance, lease_seconds=60) is not None
        with sqlite_instance.sessions() as s:
            s.execute(update(IngestJob).values(next_attempt_at=utcnow() - timedelta(seconds=1)))
            s.commit()

    def ingest_paths(inst, paths, source):
        raise AssertionError("a dead-lettered job must not be ingested again")

    report = WorkerReport()
    assert process_one(sqlite_instance, spool, ingest_paths, report)
    status, attempts, error = _status(sqlite_instance)
    assert status == "dead" and "stopped during this job 2 times" in error and report.dead == 1
    assert spool.sealed() == [path]

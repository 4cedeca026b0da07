"""The ingest job state machine, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from sqlalchemy import select, update

from medsearch.doctor import Check
from medsearch.pacs import queue
from medsearch.pacs.spool import Spool
from medsearch.store.models import IngestJob


def _job(inst, job_id):
    with inst.sessions() as s:
        return s.get(IngestJob, job_id)


def _make_due(inst, job_id):
    with inst.sessions() as s:
        s.execute(update(IngestJob).where(IngestJob.id == job_id)
                  .values(next_attempt_at=queue.utcnow() - dt.timedelta(seconds=1)))
        s.commit()


def test_enqueue_is_idempotent(instance):
    assert queue.enqueue(instance, "sealed/a.1", "scp") is True
    assert queue.enqueue(instance, "sealed/a.1", "scp") is False
    with instance.sessions() as s:
        assert s.scalar(select(IngestJob.status)) == "queued"


def test_a_job_is_claimed_by_one_worker_only(instance):
    queue.enqueue(instance, "sealed/a.1", "scp")
    first = queue.claim(instance, lease_seconds=60)
    assert first is not None and first.attempts == 1 and first.spool_path == "sealed/a.1"
    assert queue.claim(instance, lease_seconds=60) is None
    assert queue.complete(instance, first)
    assert _job(instance, first.id).status == "done"
    assert queue.claim(instance, lease_seconds=60) is None


def test_concurrent_claims_never_share_a_job(instance):
    for i in range(12):
        queue.enqueue(instance, f"sealed/s{i}.1", "scp")
    claimed, lock = [], threading.Lock()

    def worker():
        while (c := queue.claim(instance, lease_seconds=60)) is not None:
            with lock:
                claimed.append(c.id)
            queue.complete(instance, c)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(set(claimed)) and len(claimed) == 12


def test_failures_back_off_exponentially_then_dead_letter(instance):
    queue.enqueue(instance, "sealed/a.1", "scp")
    delays = []
    for attempt in (1, 2, 3):
        c = queue.claim(instance, lease_seconds=60)
        assert c is not None and c.attempts == attempt
        before = queue.utcnow()
        outcome = queue.fail(instance, c, "Input error. Fix: something", max_attempts=3, backoff_seconds=10)
        job = _job(instance, c.id)
        if attempt < 3:
            assert outcome == "queued" and job.status == "queued"
            assert queue.claim(instance, lease_seconds=60) is None, "claimable before its backoff ended"
            due = job.next_attempt_at.replace(tzinfo=dt.timezone.utc) if job.next_attempt_at.tzinfo is None \
                else job.next_attempt_at
            delays.append(round((due - before).total_seconds()))
            _make_due(instance, c.id)
        else:
            assert outcome == "dead" and job.status == "dead"
    assert delays == [10, 20]
    assert queue.claim(instance, lease_seconds=60) is None
    check = queue.doctor_check(instance, Check)
    assert check.status == "fail" and "1 dead-lettered" in check.detail and "Input error" in check.detail
    assert "--retry-dead" in check.fix
    assert queue.retry_dead(instance) == 1
    again = queue.claim(instance, lease_seconds=60)
    assert again is not None and again.attempts == 1
    assert queue.doctor_check(instance, Check).status == "ok"


def test_an_expired_lease_is_claimed_again_and_the_old_holder_cannot_finish(instance):
    queue.enqueue(instance, "sealed/a.1", "scp")
    dead_worker = queue.claim(instance, lease_seconds=60)
    assert queue.claim(instance, lease_seconds=60) is None
    _make_due(instance, dead_worker.id)  # the lease ran out: its worker was killed
    successor = queue.claim(instance, lease_seconds=60)
    assert successor is not None and successor.id == dead_worker.id and successor.attempts == 2
    assert queue.complete(instance, dead_worker) is False
    assert queue.heartbeat(instance, dead_worker, 60) is False
    assert queue.complete(instance, successor) is True


def test_heartbeat_keeps_the_lease(instance):
    queue.enqueue(instance, "sealed/a.1", "scp")
    c = queue.claim(instance, lease_seconds=1)
    assert queue.heartbeat(instance, c, 3600)
    job = _job(instance, c.id)
    due = job.next_attempt_at if job.next_attempt_at.tzinfo else job.next_attempt_at.replace(tzinfo=dt.timezone.utc)
    assert due > queue.utcnow() + dt.timedelta(minutes=50)


def test_release_gives_the_attempt_back(instance):
    queue.enqueue(instance, "sealed/a.1", "scp")
    c = queue.claim(instance, lease_seconds=60)
    assert queue.release(instance, c)
    assert _job(instance, c.id).attempts == 0 and _job(instance, c.id).status == "queued"


def test_reconcile_queues_orphans_and_removes_done_folders(instance):
    spool = Spool.for_instance(instance)
    orphan = spool.add_sealed("pull-abc", {"x.dcm": b"1"})
    done = spool.add_sealed("def.1", {"y.dcm": b"2"})
    queue.enqueue(instance, done, "scp")
    c = queue.claim(instance, 60)
    queue.complete(instance, c)  # crash here: done, but the folder is still there
    assert queue.reconcile(instance, spool) == {"queued": 1, "removed": 1}
    assert spool.sealed() == [orphan]
    with instance.sessions() as s:
        rows = s.execute(select(IngestJob.spool_path, IngestJob.source, IngestJob.status)).all()
    assert (orphan, "pull", "queued") in rows
    assert queue.reconcile(instance, spool) == {"queued": 0, "removed": 0}


@pytest.mark.parametrize("relative", ["../outside", "sealed/../../x"])
def test_spool_paths_outside_the_spool_are_refused(sqlite_instance, relative):
    from medsearch.errors import StorageError

    with pytest.raises(StorageError, match="outside the spool"):
        Spool.for_instance(sqlite_instance).files(relative)

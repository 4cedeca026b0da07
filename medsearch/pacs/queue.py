"""The ingest job queue: a crash-safe state machine over the ``ingest_jobs`` table.

States::

    queued ──claim──► running ──complete──► done
      ▲                  │ fail (attempts < max)      (spool folder deleted)
      └──── backoff ◄────┤
                         └ fail (attempts = max) ──► dead   (doctor lists it; retry_dead() requeues)

A claim is one conditional ``UPDATE``: it sets ``status='running'``, a fresh
claim token and a lease end (``next_attempt_at``), and succeeds only if the
row was still claimable, so two workers never hold the same job, on SQLite
(database-level write lock) or PostgreSQL (``SELECT ... FOR UPDATE SKIP
LOCKED`` picks the row; the guarded update re-checks it).  A worker that dies
(kill -9) leaves its job ``running``; once the lease ends, any worker claims it
again.  Ingest is idempotent per instance, so re-running a job never stores an
instance twice.  Every later transition is guarded by the claim token, so a
worker that lost its lease cannot overwrite the new holder's state.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
from dataclasses import dataclass

from sqlalchemy import and_, or_, select, update
from sqlalchemy.exc import IntegrityError

from medsearch.store.models import IngestJob

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 3600


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass(frozen=True)
class Claim:
    id: int
    spool_path: str
    source: str
    attempts: int
    token: str


def enqueue(inst, spool_path: str, source: str) -> bool:
    """Queue a sealed spool folder; False if it was queued already (idempotent)."""
    with inst.sessions() as s:
        if s.scalar(select(IngestJob.id).where(IngestJob.spool_path == spool_path)) is not None:
            return False
        s.add(IngestJob(source=source, spool_path=spool_path, status="queued", attempts=0,
                        next_attempt_at=utcnow(), updated_at=utcnow()))
        try:
            s.commit()
        except IntegrityError:  # another process queued the same folder a moment ago
            s.rollback()
            return False
    return True


def _claimable(now: dt.datetime):
    return or_(
        and_(IngestJob.status == "queued", or_(IngestJob.next_attempt_at.is_(None), IngestJob.next_attempt_at <= now)),
        and_(IngestJob.status == "running", IngestJob.next_attempt_at <= now),  # lease ended: worker died
    )


def claim(inst, lease_seconds: int) -> Claim | None:
    """Claim the oldest claimable job, or None when there is none."""
    now = utcnow()
    token = secrets.token_hex(16)
    with inst.sessions() as s:
        for _ in range(5):  # lost races retry with the next candidate
            pick = select(IngestJob.id).where(_claimable(now)).order_by(IngestJob.id).limit(1)
            if s.get_bind().dialect.name == "postgresql":
                pick = pick.with_for_update(skip_locked=True)
            job_id = s.scalar(pick)
            if job_id is None:
                s.rollback()
                return None
            result = s.execute(
                update(IngestJob)
                .where(IngestJob.id == job_id, _claimable(now))
                .values(status="running", claimed_by=token, attempts=IngestJob.attempts + 1,
                        next_attempt_at=now + dt.timedelta(seconds=lease_seconds), updated_at=now))
            if result.rowcount == 1:
                job = s.execute(select(IngestJob.spool_path, IngestJob.source, IngestJob.attempts)
                                .where(IngestJob.id == job_id)).one()
                s.commit()
                return Claim(job_id, job.spool_path, job.source, job.attempts, token)
            s.rollback()
    return None


def _transition(inst, c: Claim, **values) -> bool:
    with inst.sessions() as s:
        result = s.execute(update(IngestJob)
                           .where(IngestJob.id == c.id, IngestJob.status == "running", IngestJob.claimed_by == c.token)
                           .values(updated_at=utcnow(), **values))
        s.commit()
    if result.rowcount != 1:
        log.warning("ingest job %d: lease lost before the update; another worker holds it", c.id)
    return result.rowcount == 1


def heartbeat(inst, c: Claim, lease_seconds: int) -> bool:
    """Extend the lease of a job still being worked on."""
    return _transition(inst, c, next_attempt_at=utcnow() + dt.timedelta(seconds=lease_seconds))


def complete(inst, c: Claim) -> bool:
    return _transition(inst, c, status="done", last_error=None, next_attempt_at=None)


def release(inst, c: Claim) -> bool:
    """Put a claimed job back without counting the attempt (the worker, not the job, could not go on)."""
    return _transition(inst, c, status="queued", attempts=c.attempts - 1, next_attempt_at=utcnow())


def fail(inst, c: Claim, error: str, max_attempts: int, backoff_seconds: int) -> str:
    """Record a failure; the job is retried after an exponential backoff, or dead-lettered."""
    if c.attempts >= max_attempts:
        _transition(inst, c, status="dead", last_error=error, next_attempt_at=None)
        return "dead"
    delay = min(backoff_seconds * 2 ** (c.attempts - 1), MAX_BACKOFF_SECONDS)
    _transition(inst, c, status="queued", last_error=error, next_attempt_at=utcnow() + dt.timedelta(seconds=delay))
    return "queued"


def dead_letters(inst) -> list[dict]:
    with inst.sessions() as s:
        rows = s.execute(select(IngestJob.id, IngestJob.source, IngestJob.attempts, IngestJob.last_error,
                                IngestJob.updated_at).where(IngestJob.status == "dead").order_by(IngestJob.id)).all()
    return [dict(r._mapping) for r in rows]


def retry_dead(inst) -> int:
    """Requeue every dead-lettered job with a fresh attempt budget."""
    with inst.sessions() as s:
        result = s.execute(update(IngestJob).where(IngestJob.status == "dead")
                           .values(status="queued", attempts=0, next_attempt_at=utcnow(), claimed_by=None,
                                   updated_at=utcnow()))
        s.commit()
    return result.rowcount


def reconcile(inst, spool) -> dict:
    """Bring the queue and the spool into agreement after a crash.

    - a sealed folder without a job (crash between seal and enqueue) is queued;
    - a done job's folder that still exists (crash between complete and delete) is deleted.
    """
    folders = spool.sealed()
    queued = removed = 0
    if folders:
        with inst.sessions() as s:
            known = dict(s.execute(select(IngestJob.spool_path, IngestJob.status)
                                   .where(IngestJob.spool_path.in_(folders))).all())
        for folder in folders:
            status = known.get(folder)
            if status is None:
                queued += enqueue(inst, folder, _source_of(folder))
            elif status == "done":
                spool.remove(folder)
                removed += 1
    return {"queued": queued, "removed": removed}


def _source_of(folder: str) -> str:
    return "pull" if folder.split("/", 1)[-1].startswith("pull-") else "scp"


def doctor_check(inst, Check):
    """List dead-lettered ingest jobs, with the fix."""
    dead = dead_letters(inst)
    if not dead:
        return Check("ingest_queue", "ok", "no dead-lettered ingest jobs")
    listing = "; ".join(f"job {d['id']} ({d['source']}, {d['attempts']} attempts): {d['last_error']}"
                        for d in dead[:10])
    more = f" and {len(dead) - 10} more" if len(dead) > 10 else ""
    return Check("ingest_queue", "fail", f"{len(dead)} dead-lettered ingest jobs: {listing}{more}",
                 "Fix the cause named in each error, then run 'medsearch worker --retry-dead' to queue them again.")

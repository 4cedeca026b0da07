"""``medsearch worker``: ingest the queued series, with retries and a dead-letter list.

Crash safety: the job is marked done only after ``ingest_paths`` returned, and
its spool folder is deleted only after that; a crash anywhere leaves either a
``running`` job whose lease ends (claimed again, re-ingested idempotently) or
a done job whose folder :func:`medsearch.pacs.queue.reconcile` deletes.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass, field

from sqlalchemy.exc import SQLAlchemyError

from medsearch.errors import MedsearchError, NotBuiltError, StorageError
from medsearch.pacs import queue
from medsearch.pacs.spool import Spool

log = logging.getLogger(__name__)

IDLE_POLL_SECONDS = 1.0
DB_RETRY_SECONDS = 5.0


def ingest_function():
    """The one ingest interface; the worker refuses to run until it exists."""
    try:
        from medsearch.dicom.ingest import ingest_paths
    except ImportError:
        raise NotBuiltError("ingest (issue 4)") from None
    return ingest_paths


@dataclass
class WorkerReport:
    done: int = 0
    retried: int = 0
    dead: int = 0
    instances: int = 0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"done": self.done, "retried": self.retried, "dead": self.dead, "instances": self.instances}


def _error_text(exc: BaseException) -> str:
    """A failure description without PHI: our errors are PHI-free by contract; others by type only."""
    if isinstance(exc, MedsearchError):
        return exc.message[:500]
    return f"unexpected {type(exc).__name__} during ingest (see the worker log)"


class _Heartbeat(threading.Thread):
    """Extends the job's lease while a long ingest runs, so no other worker takes it over."""

    def __init__(self, inst, c: queue.Claim, lease_seconds: int):
        super().__init__(daemon=True, name=f"heartbeat-{c.id}")
        self.inst, self.c, self.lease = inst, c, lease_seconds
        self.stop = threading.Event()

    def run(self):
        while not self.stop.wait(max(self.lease / 3, 0.5)):
            try:
                queue.heartbeat(self.inst, self.c, self.lease)
            except Exception:  # a DB blip: the next beat retries, and the lease has slack
                log.warning("ingest job %d: heartbeat failed", self.c.id)


def process_one(inst, spool: Spool, ingest_paths, report: WorkerReport) -> bool:
    """Claim and process one job; False when nothing was claimable."""
    s = inst.settings
    c = queue.claim(inst, s.worker_lease_seconds)
    if c is None:
        return False
    if c.attempts > s.worker_max_attempts:
        # Claimed again after its lease ran out each time: a job that kills its worker (out of memory,
        # a crashing decoder) must not crash-loop the service forever.
        error = (f"the worker stopped during this job {c.attempts - 1} times (killed or crashed); "
                 "see the worker log around those times")
        queue.fail(inst, c, error, s.worker_max_attempts, s.worker_backoff_seconds)
        log.error("ingest job %d dead-lettered: %s", c.id, error)
        report.dead += 1
        report.errors.append(error)
        return True
    files = spool.files(c.spool_path)
    if not files:
        log.warning("ingest job %d: its spool folder is empty or gone; marking it done", c.id)
    beat = _Heartbeat(inst, c, s.worker_lease_seconds)
    beat.start()
    try:
        if files:
            ingest_paths(inst, files, source=c.source)
    except NotBuiltError:
        queue.release(inst, c)  # not the job's fault: give the attempt back
        raise
    except Exception as exc:  # every failure is recorded; none may stop the worker
        error = _error_text(exc)
        outcome = queue.fail(inst, c, error, s.worker_max_attempts, s.worker_backoff_seconds)
        log.warning("ingest job %d failed (attempt %d of %d, now %s): %s", c.id, c.attempts,
                    s.worker_max_attempts, outcome, error)
        report.errors.append(error)
        if outcome == "dead":
            report.dead += 1
        else:
            report.retried += 1
        return True
    finally:
        beat.stop.set()
    if queue.complete(inst, c):
        spool.remove(c.spool_path)
        report.done += 1
        report.instances += len(files)
        log.info("ingest job %d done: %d instances from %s", c.id, len(files), c.source)
    return True


def run_worker(inst, once: bool = False, stop: threading.Event | None = None) -> WorkerReport:
    """Process jobs until stopped (SIGTERM/SIGINT); with ``once``, until the queue has nothing claimable."""
    ingest_paths = ingest_function()
    spool = Spool.for_instance(inst)
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread() and not once:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    report = WorkerReport()
    last_reconcile = 0.0
    while not stop.is_set():
        try:
            if time.monotonic() - last_reconcile > 10:
                queue.reconcile(inst, spool)
                last_reconcile = time.monotonic()
            if process_one(inst, spool, ingest_paths, report):
                continue
        except SQLAlchemyError as exc:  # the database is away: nothing is lost, the jobs wait for it
            if once:
                raise StorageError(f"The database is unreachable ({type(exc).__name__}).",
                                   "Check database_url and that the database server runs.") from None
            log.error("database unavailable (%s); retrying in %.0f s", type(exc).__name__, DB_RETRY_SECONDS)
            stop.wait(DB_RETRY_SECONDS)
            continue
        if once:
            break
        stop.wait(IDLE_POLL_SECONDS)
    log.info("worker stopped: %s", report.as_dict())
    return report

"""``medsearch pull --dicomweb URL [--since DATE]``: backfill CT studies over DICOMweb.

QIDO-RS finds the CT studies (``ModalitiesInStudy=CT``, optionally
``StudyDate=<since>-``), page by page; WADO-RS retrieves each study; its CT
instances are sealed into the spool as one folder and queued, exactly like a
series received by the SCP, and the worker logic ingests them.

Resumable: after a study is queued, its keyed hash is added to a checkpoint
file (``<spool>/pull/<source>.json``, written atomically), so a rerun after an
interruption skips the studies already taken.  Nothing identifying is written:
the checkpoint holds keyed hashes only, and the log holds counts.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
from dataclasses import dataclass

from tqdm import tqdm

from medsearch.errors import InputError, MedsearchError
from medsearch.pacs import queue
from medsearch.pacs.spool import PULL, SUFFIX, Spool, write_durable
from medsearch.pacs.worker import WorkerReport, ingest_function, process_one

log = logging.getLogger(__name__)

PAGE = 100


@dataclass
class PullReport:
    found: int = 0
    skipped: int = 0
    fetched: int = 0
    instances: int = 0
    not_ct: int = 0
    ingested_jobs: int = 0
    failed_jobs: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _parse_since(since: str | None) -> str | None:
    if not since:
        return None
    try:
        return dt.date.fromisoformat(since).strftime("%Y%m%d")
    except ValueError:
        raise InputError(f"--since '{since}' is not a date.", "Write it as YYYY-MM-DD, e.g. 2024-01-31.") from None


def _client(url: str):
    from dicomweb_client.api import DICOMwebClient

    if not url.startswith(("http://", "https://")):
        raise InputError("The --dicomweb URL must start with http:// or https://.",
                         "Pass the service root, e.g. http://pacs:8042/dicom-web.")
    client = DICOMwebClient(url=url.rstrip("/"))
    # Transient errors (503, 429, timeouts, refused connections) are retried a few times, briefly:
    # a long outage ends the run, and the checkpoint lets the next run resume.
    client.set_http_retry_params(max_attempts=3, wait_exponential_multiplier=250)
    return client


class Checkpoint:
    """The set of studies (keyed hashes) already queued from one DICOMweb source."""

    def __init__(self, spool: Spool, url: str):
        self.path = spool.root / PULL / f"{spool.key('source', url.rstrip('/'))}.json"
        self.tmp_dir = spool.root / "tmp"
        self.done: set[str] = set()
        if self.path.exists():
            try:
                self.done = set(json.loads(self.path.read_text(encoding="utf-8"))["done"])
            except (ValueError, KeyError, TypeError):
                raise InputError(f"The pull checkpoint {self.path} is damaged.",
                                 "Delete it; the next pull re-fetches, and ingest skips what it already has.") \
                    from None

    def add(self, study_key: str) -> None:
        self.done.add(study_key)
        write_durable(self.path, json.dumps({"done": sorted(self.done)}).encode(), self.tmp_dir)


def search_ct_studies(client, since: str | None):
    """Yield the StudyInstanceUID of every CT study (QIDO-RS, paged)."""
    filters = {"ModalitiesInStudy": "CT"}
    if since:
        filters["StudyDate"] = f"{since}-"
    offset = 0
    while True:
        page = client.search_for_studies(search_filters=filters, offset=offset, limit=PAGE,
                                         fields=["StudyInstanceUID", "ModalitiesInStudy"])
        for item in page:
            uid = (item.get("0020000D", {}).get("Value") or [None])[0]
            modalities = item.get("00080061", {}).get("Value") or ["CT"]
            if uid and "CT" in modalities:
                yield uid
        if len(page) < PAGE:
            return
        offset += len(page)


def _encode(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def pull(inst, url: str, since: str | None = None, client=None, limit: int | None = None,
         ingest: bool = True) -> PullReport:
    """Backfill CT studies from ``url``; ``limit`` stops after that many new studies (a partial run)."""
    since_q = _parse_since(since)
    ingest_paths = ingest_function() if ingest else None  # refuse before downloading anything
    client = client or _client(url)
    spool = Spool.for_instance(inst)
    checkpoint = Checkpoint(spool, url)
    report, worker_report = PullReport(), WorkerReport()
    try:
        uids = list(search_ct_studies(client, since_q))
    except MedsearchError:
        raise
    except Exception as exc:
        raise InputError(f"The QIDO-RS search at the --dicomweb URL failed ({type(exc).__name__}).",
                         "Check the URL (the DICOMweb root, e.g. http://pacs:8042/dicom-web) and that the "
                         "server is reachable.") from None
    report.found = len(uids)
    for uid in tqdm(uids, desc="pull", unit="study", disable=None):
        study_key = spool.key("study", uid)
        if study_key in checkpoint.done:
            report.skipped += 1
            continue
        if limit is not None and report.fetched >= limit:
            break
        writer = spool.sealed_writer(f"pull-{study_key}")
        try:
            for ds in client.iter_study(uid):  # streamed: a large study never sits in memory whole
                if getattr(ds, "Modality", None) != "CT":
                    report.not_ct += 1
                    continue
                writer.write(spool.key("instance", str(ds.SOPInstanceUID)) + SUFFIX, _encode(ds))
        except Exception as exc:
            writer.abort()
            raise InputError(f"WADO-RS retrieval of a study failed ({type(exc).__name__}); "
                             f"{report.fetched} studies were taken before it.",
                             "Run the same pull again: it resumes after the studies already taken.") from None
        if writer.count:
            queue.enqueue(inst, writer.commit(), "pull")
        else:
            writer.abort()
        checkpoint.add(study_key)
        report.fetched += 1
        report.instances += writer.count
        if ingest_paths is not None:
            while process_one(inst, spool, ingest_paths, worker_report):
                pass
    report.ingested_jobs, report.failed_jobs = worker_report.done, worker_report.retried + worker_report.dead
    log.info("pull finished: %s", report.as_dict())
    return report

"""Ingest: de-identify, assemble and store DICOM series; idempotent and transactional.

``ingest_paths(inst, paths)`` is the one ingest path (CLI, STOW-RS, the Storage
SCP worker and pull call it).  Per series:

1. **Headers** of every file are read (no pixels) to group files by series and
   reject what is not DICOM, not an accepted modality, a localizer, or already stored.
2. :func:`medsearch.dicom.prepare.prepare_series` reads each file of a new series in full and
   **de-identifies** it (:func:`medsearch.dicom.deidentify.deidentify`; nothing identifying goes
   further than this step except into the encrypted vault), **assembles** the HU volume
   (:func:`medsearch.dicom.volume.load_series`) and writes the volume (int16 ``.npy``) and its
   thumbnail to temporary files that are **renamed** into place.  It runs in this process, or in
   worker processes for large runs of ``medsearch ingest`` (setting ``ingest_workers``).
3. This process then writes **one database transaction** per series: the patient, study, series
   and volume rows and the vault records.  A kill before the commit leaves at most a file with
   no row, which the rerun overwrites; a kill after it leaves a complete series.  A series is
   stored once: its pseudonym is unique, so a second ingest (or a concurrent one) skips it.
4. If a model is installed, the volume is **encoded** and added to the index;
   otherwise it stays ``stored`` until :func:`encode_pending` runs.

Anything not ingested gets an outcome with a reason, and a quarantine row when
it is DICOM.  Outcomes and the summary carry hashes, pseudonyms and counts,
never identifiers (file paths are not echoed either: directory names often
hold patient names).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import multiprocessing
import os
from collections import Counter, defaultdict
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError as DBIntegrityError
from tqdm import tqdm

from medsearch.dicom import quarantine, vault
from medsearch.dicom.deidentify import Keys
from medsearch.dicom.prepare import (
    ALREADY, INGESTED, NOT_DICOM, QUARANTINED, REJECTED, UNREADABLE, FileOutcome, PreparedSeries, SeriesRecord,
    atomic_write, prepare_series, thumb_relpath, volume_relpath,
)
from medsearch.dicom.profile import Options
from medsearch.dicom.pseudonym import normalise, pseudonym
from medsearch.dicom.reading import Header, read_header
from medsearch.dicom.volume import HUVolume
from medsearch.errors import MedsearchError
from medsearch.store.models import Patient, Series, Study, Volume

log = logging.getLogger(__name__)
#: Below this many files an ingest runs in-process: starting worker processes would cost more than it saves.
PARALLEL_MIN_FILES = 64
#: Up to this many files, headers read in pass 1 are kept for pass 2 (a few KB each).
KEEP_HEADERS_MAX_FILES = 50000
__all__ = ["ingest_paths", "encode_pending", "IngestReport", "FileOutcome", "SeriesOutcome", "atomic_write",
           "volume_relpath", "thumb_relpath", "ALREADY", "INGESTED", "NOT_DICOM", "QUARANTINED", "REJECTED",
           "UNREADABLE"]

#: Modalities named in reasons; any other value is reported as "An unlisted modality", because a
#: hostile file can put anything in Modality and reasons must never echo file content.
KNOWN_MODALITIES = frozenset(
    "AR ASMT AU BDUS BI BMD CR CT CTPROTOCOL DG DOC DX ECG EPS ES FID GM HC HD IO IOL IVOCT IVUS KER KO "
    "LEN LS MG MR M3D NM OAM OCT OP OPM OPT OPTBSV OPTENF OPV OSS OT PLAN POS PR PT PX REG RESP RF RG "
    "RTDOSE RTIMAGE RTPLAN RTRECORD RTSTRUCT RWV SEG SM SMR SR SRF STAIN TEXTUREMAP TG US VA XA XC".split())


@dataclass
class SeriesOutcome:
    series: str  # pseudonym
    study: str | None
    outcome: str  # stored | encoded | already_ingested | quarantined
    n_instances: int
    reason: str | None = None


@dataclass
class IngestReport:
    files: list[FileOutcome] = field(default_factory=list)
    series: list[SeriesOutcome] = field(default_factory=list)
    encoding: str | None = None  # why volumes were not encoded, when they were not

    def counts(self) -> dict:
        return {"files": dict(Counter(f.outcome for f in self.files)),
                "series": dict(Counter(s.outcome for s in self.series))}

    def summary(self) -> str:
        c = self.counts()
        parts = [f"{len(self.files)} file(s): " + (", ".join(f"{n} {k}" for k, n in sorted(c["files"].items()))
                                                   or "none"),
                 f"{len(self.series)} series: " + (", ".join(f"{n} {k}" for k, n in sorted(c["series"].items()))
                                                   or "none")]
        if self.encoding:
            parts.append(f"not encoded: {self.encoding}")
        return "; ".join(parts)

    def to_dict(self) -> dict:
        return {"counts": self.counts(), "encoding": self.encoding,
                "files": [vars(f) for f in self.files], "series": [vars(s) for s in self.series]}


def iter_files(paths: Iterable[str | Path]) -> list[Path]:
    """Files under ``paths`` (recursively), sorted, hidden files included (DICOM has no suffix rule)."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(q for q in p.rglob("*") if q.is_file()))
        elif p.is_file():
            out.append(p)
    return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temp_files(data_dir: Path) -> int:
    """Remove temporary files left by an ingest that was killed (their writer's pid is gone)."""
    removed = 0
    for sub in ("volumes", "thumbs"):
        for tmp in (data_dir / sub).glob(".*.tmp") if (data_dir / sub).is_dir() else ():
            try:
                pid = int(tmp.name.rsplit(".", 2)[-2])
            except ValueError:
                continue
            if not _pid_alive(pid):
                tmp.unlink(missing_ok=True)
                removed += 1
    return removed


def _modality_reason(modality: str, accepted: list[str]) -> str:
    named = f"Modality {modality}" if modality in KNOWN_MODALITIES else "An unlisted modality"
    return f"{named} is not accepted (ingest_modalities: {', '.join(accepted)})."


@dataclass
class _Header:
    source: Path | Header  # the header itself when it is kept for pass 2
    series_key: str  # series pseudonym
    modality: str


class Ingestor:
    """One ingest run over an instance (holds keys, options and the report)."""

    def __init__(self, inst, source: str = "cli", progress: bool = True, encode: bool = True,
                 site: str | None = None, workers: int = 1):
        self.inst = inst
        self.workers = workers
        self.source = source
        self.progress = progress
        self.encode = encode
        self.site = site
        self.keys = Keys.from_instance(inst)
        self.options = Options.from_settings(inst.settings)
        self.accepted = [m.upper() for m in inst.settings.ingest_modalities]
        self.report = IngestReport()
        self._encoder = None
        self._encoder_checked = False

    # -- pass 1: headers
    def _header(self, path: Path, keep: bool) -> _Header | FileOutcome:
        try:
            header = read_header(path)
        except OSError as exc:
            return FileOutcome(None, UNREADABLE, f"The file cannot be read ({type(exc).__name__}).")
        if header is None:
            return FileOutcome(None, NOT_DICOM, "Not a DICOM file; skipped.")
        ds = header.dataset
        modality = normalise(ds.get("Modality", "")).upper()
        series_uid = normalise(ds.get("SeriesInstanceUID", ""))
        if modality not in self.accepted:
            return self._quarantine_file(path, REJECTED, _modality_reason(modality, self.accepted))
        if not series_uid:
            return self._quarantine_file(path, QUARANTINED, "The instance has no SeriesInstanceUID.")
        if "LOCALIZER" in [str(v).strip().upper() for v in (ds.get("ImageType") or [])]:
            return self._quarantine_file(path, REJECTED, "A localizer (scout) is a projection image, not a "
                                                         "cross-sectional volume; it is not ingested.")
        # Keeping the header saves parsing it again in pass 2 (a third of the per-file work).
        return _Header(header if keep else path, pseudonym(self.keys.secret, "series", series_uid), modality)

    def _quarantine_file(self, path: Path, outcome: str, reason: str, data: bytes | None = None,
                         series: str | None = None) -> FileOutcome:
        sha = hashlib.sha256(data if data is not None else path.read_bytes()).hexdigest()
        with self.inst.sessions() as session, session.begin():
            quarantine.record(session, sha, reason)
        return FileOutcome(sha, outcome, reason, series)

    # -- pass 2: series
    def _stored(self, series_key: str) -> bool:
        with self.inst.sessions() as session:
            return session.scalar(select(Volume.id).join(Series).where(Series.pseudonym == series_key)) is not None

    def _commit(self, prepared: PreparedSeries) -> None:
        """Record what :func:`prepare_series` did: quarantines, or the series in one transaction."""
        key = prepared.series_key
        quarantined = [f for f in prepared.files if f.outcome == QUARANTINED and f.sha256]
        if quarantined:
            with self.inst.sessions() as session, session.begin():
                for f in quarantined:
                    quarantine.record(session, f.sha256, f.reason)
        self.report.files.extend(prepared.files)
        n_files = len(prepared.files) + len(prepared.ingested_sha256)
        rec = prepared.record
        if rec is None:
            self.report.series.append(SeriesOutcome(key, None, QUARANTINED, n_files, prepared.failure))
            return
        outcome = self._store(rec, prepared.ingested_sha256)
        self.report.files.extend(FileOutcome(sha, INGESTED if outcome != ALREADY else ALREADY, None, key)
                                 for sha in prepared.ingested_sha256)
        self.report.series.append(SeriesOutcome(key, rec.study, outcome, len(prepared.ingested_sha256)))

    def _store(self, rec: SeriesRecord, shas: list[str]) -> str:
        try:
            with self.inst.sessions() as session, session.begin():
                keys = vault.MasterKeys(self.inst)
                patient = session.scalar(select(Patient).where(Patient.pseudonym == rec.patient))
                if patient is None:
                    patient = Patient(pseudonym=rec.patient, sex=rec.sex, age_years=rec.age)
                    session.add(patient)
                study = session.scalar(select(Study).where(Study.pseudonym == rec.study))
                if study is None:
                    study = Study(pseudonym=rec.study, patient=patient, uid=rec.study_uid,
                                  study_date=rec.study_date, modality=rec.modality, body_part=rec.body_part,
                                  description=rec.study_description, site=self.site)
                    session.add(study)
                series = Series(pseudonym=rec.series, study=study, uid=rec.series_uid, modality=rec.modality,
                                body_part=rec.body_part, description=rec.series_description,
                                n_instances=rec.n_instances)
                session.add(series)
                session.add(Volume(series=series, path=volume_relpath(rec.series), shape=rec.shape,
                                   spacing=rec.spacing, affine=rec.affine, sha256=rec.sha256, status="stored"))
                vault.store(session, keys, "patient", rec.patient, rec.originals.patient)
                vault.store(session, keys, "study", rec.study, rec.originals.study)
                vault.store(session, keys, "series", rec.series, rec.originals.series)
                quarantine.release(session, shas)
        except DBIntegrityError:
            # Another process stored the same series (or patient/study) first: the series is there.
            if self._stored(rec.series):
                return ALREADY
            raise
        if self.encode and self.encoder() is not None:
            with self.inst.sessions() as session:
                row = session.scalar(select(Volume).join(Series).where(Series.pseudonym == rec.series))
                vol = load_stored_volume(self.inst, row)
            return "encoded" if encode_volume(self.inst, self.encoder(), rec.series, vol) else "stored"
        return "stored"

    def _skip_stored(self, groups: dict[str, list]) -> dict[str, list]:
        todo = {}
        for key, paths in groups.items():
            if self._stored(key):
                self.report.files.extend(FileOutcome(None, ALREADY, None, key) for _ in paths)
                self.report.series.append(SeriesOutcome(key, None, ALREADY, len(paths)))
            else:
                todo[key] = paths
        return todo

    def _workers(self, groups: dict[str, list]) -> int:
        """Worker processes for this run: in-process for small runs (process start-up would dominate)."""
        n_files = sum(len(v) for v in groups.values())
        if self.workers <= 1 or len(groups) < 2 or n_files < PARALLEL_MIN_FILES:
            return 1
        return min(self.workers, len(groups))

    # -- encoding through the model interface
    def encoder(self):
        if not self._encoder_checked:
            self._encoder_checked = True
            self._encoder, self.report.encoding = load_encoder(self.inst)
        return self._encoder

    def run(self, paths: Iterable[str | Path]) -> IngestReport:
        remove_stale_temp_files(self.inst.data_dir)
        files = iter_files(paths)
        # Headers are kept for pass 2 when this process prepares the series and memory allows.
        keep = self.workers <= 1 and len(files) <= KEEP_HEADERS_MAX_FILES
        groups: dict[str, list] = defaultdict(list)
        with tqdm(total=len(files), desc="read headers", unit="file", disable=not self.progress) as bar:
            for path in files:
                got = self._header(path, keep)
                bar.update(1)
                if isinstance(got, FileOutcome):
                    self.report.files.append(got)
                else:
                    groups[got.series_key].append(got.source)
        groups = self._skip_stored(groups)
        workers = self._workers(groups)
        jobs = [(key, groups[key], self.keys, self.options, self.inst.data_dir) for key in sorted(groups)]
        with tqdm(total=sum(len(v) for v in groups.values()), desc="ingest", unit="file",
                  disable=not self.progress) as bar:
            if workers == 1:
                for job in jobs:
                    self._commit(prepare_series(*job))
                    bar.update(len(job[1]))
            else:
                # Series are prepared in parallel; the database is written by this process only.
                ctx = multiprocessing.get_context("spawn")
                with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
                    futures = {pool.submit(prepare_series, *job): job for job in jobs}
                    for future in as_completed(futures):
                        self._commit(future.result())
                        bar.update(len(futures[future][1]))
        from medsearch.audit.events import IngestEvent

        self.inst.track(IngestEvent(actor=self.source, source=self.source, counts=self.report.counts()))
        log.info("ingest finished: %s", self.report.summary())
        return self.report


def default_workers(inst) -> int:
    """Worker processes per setting ``ingest_workers`` (0: one per core, at most 4)."""
    return inst.settings.ingest_workers or min(4, os.cpu_count() or 1)


def ingest_paths(inst, paths: Iterable[str | Path], source: str = "cli", progress: bool = False,
                 encode: bool = True, site: str | None = None, workers: int = 1) -> IngestReport:
    """De-identify, assemble and store the DICOM series found under ``paths``.

    Args:
        inst: the instance.
        paths: files and/or folders.
        source: who ingests: "cli", "stow", "scp" or "pull" (recorded in the audit event).
        progress: show tqdm progress bars.
        encode: encode new volumes when a model is installed.
        site: the hospital site of the studies (Study.site), when the caller knows it.
        workers: processes that prepare series in parallel (``spawn`` start method, so the calling
            program's main module must be import-safe: ``if __name__ == "__main__":``).  1 (the default,
            used by the web and PACS paths) prepares in this process.

    Returns:
        The per-file and per-series outcomes with their counts.
    """
    return Ingestor(inst, source=source, progress=progress, encode=encode, site=site, workers=workers).run(paths)


# --------------------------------------------------------------------------- encoding
def load_encoder(inst):
    """(encoder, None) when a model is installed, else (None, why not) — never raises for absence."""
    try:
        from medsearch.models.registry import get_encoder
    except ImportError:
        return None, "no model is installed yet (medsearch.models.registry is absent)"
    try:
        return get_encoder(inst), None
    except MedsearchError as exc:
        log.warning("volumes are stored but not encoded: %s", exc.problem)
        return None, exc.problem


def encode_volume(inst, encoder, series_key: str, vol: HUVolume) -> bool:
    """Encode one stored volume, store its embedding and findings, and add it to the index."""
    from medsearch.store.models import Finding

    try:
        encoded = encoder.encode_volume(vol)
    except Exception as exc:  # noqa: BLE001 - one volume the model cannot encode must not stop an ingest
        log.warning("encoding a volume failed: %s", exc.problem if isinstance(exc, MedsearchError)
                    else type(exc).__name__)
        with inst.sessions() as session, session.begin():
            row = session.scalar(select(Volume).join(Series).where(Series.pseudonym == series_key))
            row.status = "failed"
        return False
    embedding = np.asarray(encoded.embedding, dtype=np.float32).reshape(-1)
    with inst.sessions() as session, session.begin():
        row = session.scalar(select(Volume).join(Series).where(Series.pseudonym == series_key))
        row.embedding = embedding.tobytes()
        row.model_version = str(encoded.model_version)[:64]
        row.status = "encoded"
        row.encoded_at = dt.datetime.now(dt.timezone.utc)
        row.vector_id = row.id
        row.findings.clear()
        for f in encoded.findings or []:
            row.findings.append(Finding(**{k: f.get(k) for k in (
                "finding_type", "site", "laterality", "density", "size_mm", "probability", "key_slice", "bbox")}))
    _save_spatial(inst, series_key, vol, encoded)
    try:
        from medsearch.index import sync
    except ImportError:
        return True
    sync(inst)
    return True


def _save_spatial(inst, series_key: str, vol: HUVolume, encoded) -> None:
    """Keep the spatial map for reranking when the model provides its geometry."""
    if getattr(encoded, "spatial", None) is None or not hasattr(encoded, "canon_affine"):
        return
    try:
        from medsearch.models.spatial_store import save_spatial
    except ImportError:
        return
    save_spatial(inst, series_key, encoded.spatial, encoded.canon_shape, encoded.canon_affine, vol.affine,
                 vol.shape, locations=getattr(encoded, "locations", None))


def load_stored_volume(inst, row: Volume) -> HUVolume:
    """Read a stored int16 volume back as an :class:`HUVolume`."""
    hu = np.load(inst.data_dir / row.path, allow_pickle=False).astype(np.float32)
    affine = np.asarray(row.affine, dtype=np.float64) if row.affine else np.diag(
        [row.spacing[2], row.spacing[1], row.spacing[0], 1.0])
    return HUVolume(hu=hu, spacing=tuple(row.spacing), affine=affine, modality=row.series.modality or "CT")


def encode_pending(inst, progress: bool = False) -> dict:
    """Encode every stored volume that is not encoded yet (after a model is installed)."""
    encoder, why = load_encoder(inst)
    with inst.sessions() as session:
        pending = session.execute(select(Volume.id, Series.pseudonym).join(Series)
                                  .where(Volume.status.in_(("stored", "failed"))).order_by(Volume.id)).all()
    n_pending = len(pending)
    if encoder is None:
        return {"pending": n_pending, "encoded": 0, "failed": 0, "not_encoded_because": why}
    counts = Counter()
    for volume_id, key in tqdm(pending, desc="encode", unit="series", disable=not progress):
        with inst.sessions() as session:  # one volume in memory at a time
            vol = load_stored_volume(inst, session.get(Volume, volume_id))
        counts["encoded" if encode_volume(inst, encoder, key, vol) else "failed"] += 1
    return {"pending": n_pending, "encoded": counts["encoded"], "failed": counts["failed"],
            "not_encoded_because": None}

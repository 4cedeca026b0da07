"""Ingest: de-identify, assemble and store DICOM series; idempotent and transactional.

``ingest_paths(inst, paths)`` is the one ingest path (CLI, STOW-RS, the Storage
SCP worker and pull call it).  Per series:

1. **Headers** of every file are read (no pixels) to group files by series and
   reject what is not DICOM, not an accepted modality, or already stored.
2. Each file of a new series is read in full and **de-identified**
   (:func:`medsearch.dicom.deidentify.deidentify`); nothing identifying goes
   further than this step except into the encrypted vault.
3. The de-identified instances are **assembled** into an HU volume
   (:func:`medsearch.dicom.volume.load_series`).
4. The volume (int16 ``.npy``) and its thumbnail are written to temporary files
   and **renamed** into place; then one **database transaction** creates the
   patient/study/series/volume rows and the vault records.  A kill before the
   commit leaves at most a file with no row, which the rerun overwrites; a kill
   after it leaves a complete series.  A series is stored once: its pseudonym
   is unique, so a second ingest (or a concurrent one) finds it and skips it.
5. If a model is installed, the volume is **encoded** and added to the index;
   otherwise it stays ``stored`` until :func:`encode_pending` runs.

Anything not ingested gets an outcome with a reason, and a quarantine row when
it is DICOM.  Outcomes and the summary carry hashes, pseudonyms and counts,
never identifiers (file paths are not echoed either: directory names often
hold patient names).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import logging
import os
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError as DBIntegrityError
from tqdm import tqdm

from medsearch.dicom import quarantine, vault
from medsearch.dicom.deidentify import DeidResult, Keys, deidentify
from medsearch.dicom.profile import Options
from medsearch.dicom.pseudonym import normalise, pseudonym
from medsearch.dicom.reading import quiet, read_dicom
from medsearch.dicom.render import render_thumbnail
from medsearch.dicom.volume import HUVolume, SeriesError, load_series
from medsearch.errors import MedsearchError
from medsearch.store.models import Patient, Series, Study, Volume

log = logging.getLogger(__name__)

#: Modalities named in reasons; any other value is reported as "an unlisted modality", because a
#: hostile file can put anything in Modality and reasons must never echo file content.
KNOWN_MODALITIES = frozenset(
    "AR ASMT AU BDUS BI BMD CR CT CTPROTOCOL DG DOC DX ECG EPS ES FID GM HC HD IO IOL IVOCT IVUS KER KO "
    "LEN LS MG MR M3D NM OAM OCT OP OPM OPT OPTBSV OPTENF OPV OSS OT PLAN POS PR PT PX REG RESP RF RG "
    "RTDOSE RTIMAGE RTPLAN RTRECORD RTSTRUCT RWV SEG SM SMR SR SRF STAIN TEXTUREMAP TG US VA XA XC".split())

# File outcomes
INGESTED, ALREADY, NOT_DICOM, REJECTED, QUARANTINED, UNREADABLE = (
    "ingested", "already_ingested", "not_dicom", "rejected", "quarantined", "unreadable")


@dataclass
class FileOutcome:
    sha256: str | None
    outcome: str
    reason: str | None = None
    series: str | None = None  # series pseudonym


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


def atomic_write(path: Path, data: bytes) -> None:
    """Write to a temporary file, fsync, rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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


def volume_relpath(series_pseudonym: str) -> str:
    return f"volumes/{series_pseudonym}.npy"


def thumb_relpath(series_pseudonym: str) -> str:
    return f"thumbs/{series_pseudonym}.png"


def _modality_reason(modality: str, accepted: list[str]) -> str:
    named = f"Modality {modality}" if modality in KNOWN_MODALITIES else "An unlisted modality"
    return f"{named} is not accepted (ingest_modalities: {', '.join(accepted)})."


@dataclass
class _Header:
    path: Path
    series_key: str  # series pseudonym
    modality: str


class Ingestor:
    """One ingest run over an instance (holds keys, options and the report)."""

    def __init__(self, inst, source: str = "cli", progress: bool = True, encode: bool = True,
                 site: str | None = None):
        self.inst = inst
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
    def _header(self, path: Path) -> _Header | FileOutcome:
        try:
            with quiet():
                ds = read_dicom(path, stop_before_pixels=True)
        except OSError as exc:
            return FileOutcome(None, UNREADABLE, f"The file cannot be read ({type(exc).__name__}).")
        if ds is None:
            return FileOutcome(None, NOT_DICOM, "Not a DICOM file; skipped.")
        modality = normalise(ds.get("Modality", "")).upper()
        series_uid = normalise(ds.get("SeriesInstanceUID", ""))
        if modality not in self.accepted:
            return self._quarantine_file(path, REJECTED, _modality_reason(modality, self.accepted))
        if not series_uid:
            return self._quarantine_file(path, QUARANTINED, "The instance has no SeriesInstanceUID.")
        if "LOCALIZER" in [str(v).strip().upper() for v in (ds.get("ImageType") or [])]:
            return self._quarantine_file(path, REJECTED, "A localizer (scout) is a projection image, not a "
                                                         "cross-sectional volume; it is not ingested.")
        return _Header(path, pseudonym(self.keys.secret, "series", series_uid), modality)

    def _quarantine_file(self, path: Path, outcome: str, reason: str, data: bytes | None = None,
                         series: str | None = None) -> FileOutcome:
        sha = hashlib.sha256(data if data is not None else path.read_bytes()).hexdigest()
        with self.inst.sessions() as session, session.begin():
            quarantine.record(session, sha, reason)
        return FileOutcome(sha, outcome, reason, series)

    # -- pass 2: one series
    def _stored(self, series_key: str) -> bool:
        with self.inst.sessions() as session:
            return session.scalar(select(Volume.id).join(Series).where(Series.pseudonym == series_key)) is not None

    def _deidentify_file(self, path: Path, series_key: str) -> tuple[DeidResult, str, bytes] | FileOutcome:
        try:
            data = path.read_bytes()
        except OSError as exc:
            return FileOutcome(None, UNREADABLE, f"The file cannot be read ({type(exc).__name__}).")
        sha = hashlib.sha256(data).hexdigest()
        try:
            with quiet():
                ds = read_dicom(io.BytesIO(data))
                if ds is None:
                    return FileOutcome(sha, NOT_DICOM, "Not a DICOM file; skipped.")
                result = deidentify(ds, self.keys, self.options)
        except quarantine.Quarantined as exc:
            return self._quarantine_file(path, QUARANTINED, exc.message, data, series_key)
        except Exception as exc:  # noqa: BLE001 - a malformed header is quarantined, never a crash
            return self._quarantine_file(path, QUARANTINED,
                                         f"The header cannot be de-identified ({type(exc).__name__}).",
                                         data, series_key)
        return result, sha, data

    def ingest_series(self, series_key: str, paths: list[Path], bar) -> None:
        if self._stored(series_key):
            for p in paths:
                self.report.files.append(FileOutcome(None, ALREADY, None, series_key))
            self.report.series.append(SeriesOutcome(series_key, None, ALREADY, len(paths)))
            bar.update(len(paths))
            return
        results: list[tuple[DeidResult, str]] = []
        for path in paths:
            got = self._deidentify_file(path, series_key)
            bar.update(1)
            if isinstance(got, FileOutcome):
                self.report.files.append(got)
            else:
                results.append((got[0], got[1]))
        if not results:
            self.report.series.append(SeriesOutcome(series_key, None, QUARANTINED, len(paths),
                                                    "No instance of the series could be de-identified."))
            return
        try:
            vol = load_series([r.dataset for r, _ in results])
        except SeriesError as exc:
            with self.inst.sessions() as session, session.begin():
                for _, sha in results:
                    quarantine.record(session, sha, exc.message)
            for _, sha in results:
                self.report.files.append(FileOutcome(sha, QUARANTINED, exc.message, series_key))
            self.report.series.append(SeriesOutcome(series_key, results[0][0].study, QUARANTINED, len(paths),
                                                    exc.message))
            return
        outcome = self._store(results, vol)
        for _, sha in results:
            self.report.files.append(FileOutcome(sha, INGESTED if outcome != ALREADY else ALREADY, None,
                                                 series_key))
        self.report.series.append(SeriesOutcome(series_key, results[0][0].study, outcome, len(results)))

    def _store(self, results: list[tuple[DeidResult, str]], vol: HUVolume) -> str:
        first = results[0][0]
        ds = first.dataset
        hu16 = np.clip(np.rint(vol.hu), -32768, 32767).astype(np.int16)
        buf = io.BytesIO()
        np.save(buf, hu16, allow_pickle=False)
        payload = buf.getvalue()
        data_dir = self.inst.data_dir
        atomic_write(data_dir / volume_relpath(first.series), payload)
        atomic_write(data_dir / thumb_relpath(first.series), render_thumbnail(hu16))
        try:
            with self.inst.sessions() as session, session.begin():
                keys = vault.MasterKeys(self.inst)
                patient = session.scalar(select(Patient).where(Patient.pseudonym == first.patient))
                if patient is None:
                    patient = Patient(pseudonym=first.patient, sex=first.sex, age_years=first.age)
                    session.add(patient)
                study = session.scalar(select(Study).where(Study.pseudonym == first.study))
                if study is None:
                    study = Study(pseudonym=first.study, patient=patient, uid=str(ds.StudyInstanceUID),
                                  study_date=first.study_date, modality=first.modality,
                                  body_part=first.body_part, description=first.study_description)
                    if self.site is not None:
                        study.site = self.site
                    session.add(study)
                series = Series(pseudonym=first.series, study=study, uid=str(ds.SeriesInstanceUID),
                                modality=first.modality, body_part=first.body_part,
                                description=first.series_description, n_instances=len(results))
                session.add(series)
                session.add(Volume(series=series, path=volume_relpath(first.series), shape=list(hu16.shape),
                                   spacing=[float(s) for s in vol.spacing], affine=vol.affine.tolist(),
                                   sha256=hashlib.sha256(payload).hexdigest(), status="stored"))
                vault.store(session, keys, "patient", first.patient, first.originals.patient)
                vault.store(session, keys, "study", first.study, first.originals.study)
                vault.store(session, keys, "series", first.series, first.originals.series)
                quarantine.release(session, [sha for _, sha in results])
        except DBIntegrityError:
            # Another process stored the same series (or patient/study) first: the series is there.
            if self._stored(first.series):
                return ALREADY
            raise
        if self.encode:
            return "encoded" if self._encode(first.series, vol) else "stored"
        return "stored"

    # -- encoding through the model interface
    def encoder(self):
        if not self._encoder_checked:
            self._encoder_checked = True
            self._encoder, self.report.encoding = load_encoder(self.inst)
        return self._encoder

    def _encode(self, series_key: str, vol: HUVolume) -> bool:
        encoder = self.encoder()
        if encoder is None:
            return False
        return encode_volume(self.inst, encoder, series_key, vol)

    def run(self, paths: Iterable[str | Path]) -> IngestReport:
        remove_stale_temp_files(self.inst.data_dir)
        files = iter_files(paths)
        groups: dict[str, list[Path]] = defaultdict(list)
        with tqdm(total=len(files), desc="read headers", unit="file", disable=not self.progress) as bar:
            for path in files:
                got = self._header(path)
                bar.update(1)
                if isinstance(got, FileOutcome):
                    self.report.files.append(got)
                else:
                    groups[got.series_key].append(got.path)
        total = sum(len(v) for v in groups.values())
        with tqdm(total=total, desc="ingest", unit="file", disable=not self.progress) as bar:
            for key in sorted(groups):
                self.ingest_series(key, groups[key], bar)
        from medsearch.audit.events import IngestEvent

        self.inst.track(IngestEvent(actor=self.source, source=self.source, counts=self.report.counts()))
        log.info("ingest finished: %s", self.report.summary())
        return self.report


def ingest_paths(inst, paths: Iterable[str | Path], source: str = "cli", progress: bool = False,
                 encode: bool = True, site: str | None = None) -> IngestReport:
    """De-identify, assemble and store the DICOM series found under ``paths``.

    Args:
        inst: the instance.
        paths: files and/or folders.
        source: who ingests: "cli", "stow", "scp" or "pull" (recorded in the audit event).
        progress: show tqdm progress bars.
        encode: encode new volumes when a model is installed.
        site: the hospital site of the studies (Study.site), when the caller knows it.

    Returns:
        The per-file and per-series outcomes with their counts.
    """
    return Ingestor(inst, source=source, progress=progress, encode=encode, site=site).run(paths)


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
                 vol.shape)


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

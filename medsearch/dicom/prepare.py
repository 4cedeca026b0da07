"""The database-free half of ingest: read, de-identify, assemble and write one series.

:func:`prepare_series` reads the files of one series, de-identifies every
instance, assembles the HU volume and writes the volume and thumbnail files
(temporary file, fsync, rename).  It touches no database and no key but the
pseudonym secret it is given, so it can run in a worker process; the caller
commits what it returns (:class:`PreparedSeries`) in one transaction.

What it returns holds pseudonyms, shifted dates, geometry and hashes, plus the
original identifiers destined for the encrypted vault (in :class:`Originals`,
whose ``repr`` hides them).  It never returns a dataset.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medsearch.dicom.deidentify import DeidResult, Keys, Originals, deidentify
from medsearch.dicom.profile import Options
from medsearch.dicom.quarantine import Quarantined
from medsearch.dicom.reading import Header, attach_pixels, quiet, read_dicom
from medsearch.dicom.render import render_thumbnail
from medsearch.dicom.volume import SeriesError, load_series

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
class SeriesRecord:
    """Everything the database needs about one stored series (no dataset, no plaintext identifier
    outside ``originals``)."""

    patient: str
    study: str
    series: str
    originals: Originals = field(repr=False)
    study_uid: str  # de-identified
    series_uid: str  # de-identified
    study_date: dt.date | None
    sex: str | None
    age: str | None
    modality: str
    body_part: str | None
    study_description: str | None
    series_description: str | None
    n_instances: int
    shape: list
    spacing: list
    affine: list
    sha256: str


@dataclass
class PreparedSeries:
    series_key: str
    files: list[FileOutcome]  # outcomes of files that are not part of the stored volume
    ingested_sha256: list[str]  # files that make up the stored volume
    record: SeriesRecord | None = None
    failure: str | None = None  # why the series was not stored


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


def volume_relpath(series_pseudonym: str) -> str:
    return f"volumes/{series_pseudonym}.npy"


def thumb_relpath(series_pseudonym: str) -> str:
    return f"thumbs/{series_pseudonym}.png"


def deidentify_file(item: Path | Header, keys: Keys, options: Options,
                    series_key: str) -> tuple[DeidResult, str] | FileOutcome:
    """Read and de-identify one file, or say why not (quarantine reasons are constant text).

    Args:
        item: a path, or a :class:`~medsearch.dicom.reading.Header` already read up to the pixel
            data (then only the rest of the file is parsed).
    """
    header = item if isinstance(item, Header) else None
    path = header.path if header else item
    try:
        data = path.read_bytes()
    except OSError as exc:
        return FileOutcome(None, UNREADABLE, f"The file cannot be read ({type(exc).__name__}).")
    sha = hashlib.sha256(data).hexdigest()
    try:
        with quiet():
            if header is not None and header.pixel_offset is not None:
                ds = attach_pixels(header, data)
            else:
                ds = read_dicom(io.BytesIO(data))
            if ds is None:
                return FileOutcome(sha, NOT_DICOM, "Not a DICOM file; skipped.")
            return deidentify(ds, keys, options), sha
    except Quarantined as exc:
        return FileOutcome(sha, QUARANTINED, exc.message, series_key)
    except Exception as exc:  # noqa: BLE001 - a malformed header is quarantined, never a crash
        return FileOutcome(sha, QUARANTINED, f"The header cannot be de-identified ({type(exc).__name__}).",
                           series_key)


def prepare_series(series_key: str, paths: list[Path | Header], keys: Keys, options: Options,
                   data_dir: Path) -> PreparedSeries:
    """De-identify and assemble one series, and write its volume and thumbnail files.

    Args:
        series_key: the series pseudonym (files are grouped by it).
        paths: the files of the series (paths, or headers read by the caller's grouping pass).
        keys: the pseudonym secret and UID root.
        options: the PS3.15 options in force.
        data_dir: the instance data folder.
    """
    prepared = PreparedSeries(series_key, [], [])
    results: list[tuple[DeidResult, str]] = []
    for path in paths:
        got = deidentify_file(path, keys, options, series_key)
        if isinstance(got, FileOutcome):
            prepared.files.append(got)
        else:
            results.append(got)
    if not results:
        prepared.failure = "No instance of the series could be de-identified."
        return prepared
    try:
        vol = load_series([r.dataset for r, _ in results])
    except SeriesError as exc:
        prepared.failure = exc.message
        prepared.files.extend(FileOutcome(sha, QUARANTINED, exc.message, series_key) for _, sha in results)
        return prepared
    hu16 = np.clip(np.rint(vol.hu), -32768, 32767).astype(np.int16)
    buf = io.BytesIO()
    np.save(buf, hu16, allow_pickle=False)
    payload = buf.getvalue()
    atomic_write(data_dir / volume_relpath(series_key), payload)
    atomic_write(data_dir / thumb_relpath(series_key), render_thumbnail(hu16))
    first = results[0][0]
    prepared.ingested_sha256 = [sha for _, sha in results]
    prepared.record = SeriesRecord(
        patient=first.patient, study=first.study, series=first.series, originals=first.originals,
        study_uid=str(first.dataset.StudyInstanceUID), series_uid=str(first.dataset.SeriesInstanceUID),
        study_date=first.study_date, sex=first.sex, age=first.age, modality=first.modality,
        body_part=first.body_part, study_description=first.study_description,
        series_description=first.series_description, n_instances=len(results), shape=list(hu16.shape),
        spacing=[float(s) for s in vol.spacing], affine=vol.affine.tolist(),
        sha256=hashlib.sha256(payload).hexdigest())
    return prepared

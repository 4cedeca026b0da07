"""``medsearch deid SRC DST``: write a de-identified copy of a tree of DICOM files.

The same :func:`~medsearch.dicom.deidentify.deidentify` as ingest, with the
instance's keys, so a copy and an ingest of the same study agree on every
pseudonym and UID.  Output files are named by pseudonyms and the new
SOPInstanceUID (``DST/<study>/<series>/<sop uid>.dcm``), never by the source
path: folder and file names often carry patient names.  Non-DICOM files are
reported and skipped, never copied; quarantined files are not written.
"""

from __future__ import annotations

import hashlib
import io
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from medsearch.dicom.deidentify import Keys, deidentify
from medsearch.dicom.ingest import iter_files
from medsearch.dicom.prepare import NOT_DICOM, QUARANTINED, UNREADABLE, FileOutcome, atomic_write
from medsearch.dicom.profile import Options
from medsearch.dicom.quarantine import Quarantined
from medsearch.dicom.reading import quiet, read_dicom
from medsearch.errors import InputError

DEIDENTIFIED = "deidentified"


@dataclass
class DeidReport:
    files: list[FileOutcome] = field(default_factory=list)

    def counts(self) -> dict:
        return dict(Counter(f.outcome for f in self.files))

    def summary(self) -> str:
        counts = self.counts()
        return f"{len(self.files)} file(s): " + (", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "none")

    @property
    def all_handled(self) -> bool:
        """Every DICOM file was de-identified or quarantined with a reason (exit code 0)."""
        return all(f.outcome in (DEIDENTIFIED, NOT_DICOM) or (f.outcome == QUARANTINED and f.reason)
                   for f in self.files)


def _one(path: Path, dst: Path, keys: Keys, options: Options) -> FileOutcome:
    try:
        data = path.read_bytes()
    except OSError as exc:
        return FileOutcome(None, UNREADABLE, f"The file cannot be read ({type(exc).__name__}).")
    sha = hashlib.sha256(data).hexdigest()
    with quiet():
        ds = read_dicom(io.BytesIO(data))
        if ds is None:
            return FileOutcome(sha, NOT_DICOM, "Not a DICOM file; skipped, not copied.")
        try:
            result = deidentify(ds, keys, options)
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
        except Quarantined as exc:
            return FileOutcome(sha, QUARANTINED, exc.message)
        except Exception as exc:  # noqa: BLE001 - malformed input is quarantined, never a crash
            return FileOutcome(sha, QUARANTINED, f"The file cannot be de-identified ({type(exc).__name__}).")
    atomic_write(dst / result.study / result.series / f"{ds.SOPInstanceUID}.dcm", buf.getvalue())
    return FileOutcome(sha, DEIDENTIFIED, None, result.series)


def deid_tree(inst, src: Path, dst: Path, progress: bool = False) -> DeidReport:
    """De-identify every DICOM file under ``src`` into ``dst``.

    Raises:
        InputError: ``dst`` is inside ``src`` (the copy would be read back as input).
    """
    src, dst = Path(src).resolve(), Path(dst).resolve()
    if dst == src or src in dst.parents:
        raise InputError("The destination folder is inside the source folder.",
                         "Choose a destination outside SRC.")
    keys = Keys.from_instance(inst)
    options = Options.from_settings(inst.settings)
    report = DeidReport()
    files = iter_files([src])
    for path in tqdm(files, desc="de-identify", unit="file", disable=not progress):
        report.files.append(_one(path, dst, keys, options))
    return report

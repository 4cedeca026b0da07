"""Right to erasure: remove everything medsearch holds about one patient.

Order matters for crash safety (see :mod:`medsearch.index.dbsync`):

1. collect the patient's study/series pseudonyms, vector ids and file paths;
2. in ONE database transaction: delete the vault records owned by the patient,
   its studies and its series, then the Patient row (studies, series, volumes
   with their stored embeddings, and findings go with it);
3. remove the vectors from the index and save it (re-encrypted: the removed
   vectors are no longer in the file);
4. delete the volume files, thumbnails and any other file under ``data_dir``
   named after one of the pseudonyms;
5. record an AdminEvent in the audit chain (counts only; the pseudonym is the
   target, no identifier).

A crash after step 2 leaves the index with vectors the database no longer
lists; the next open of the index drops them (reconcile), and doctor reports
them until then.  A crash during step 4 leaves files that no row points to;
``medsearch doctor`` does not see them, so the erasure logs its counts only
after every file is gone and the audit event is the proof of completion.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sqlalchemy import delete, or_, select

from medsearch.errors import InputError, NotFoundError

log = logging.getLogger(__name__)


@dataclass
class ErasureReport:
    patient: str
    studies: int = 0
    series: int = 0
    vectors: int = 0
    vault_records: int = 0
    files: int = 0
    pseudonyms: list[str] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict:
        data = asdict(self)
        data.pop("pseudonyms")
        return data


def _owned_files(data_dir: Path, names: set[str], recorded: set[Path]) -> list[Path]:
    """Files/folders under ``data_dir`` recorded in Volume rows, or named ``<pseudonym>`` / ``<pseudonym>.*``."""
    found = {p for p in recorded if p.exists()}
    if data_dir.exists():
        for path in data_dir.rglob("*"):
            stem = path.name.split(".", 1)[0]
            if stem in names or path.name in names:
                found.add(path)
    # a folder named after a pseudonym takes its content with it: drop entries inside it
    return sorted(p for p in found if not any(parent in found for parent in p.parents))


def erase_patient(inst, patient: str, actor: str, reason: str) -> ErasureReport:
    """Erase one patient (by pseudonym) from the database, the vault, the index and ``data_dir``.

    Raises:
        InputError: no reason given.
        NotFoundError: no patient with this pseudonym.
    """
    from medsearch.audit.events import AdminEvent
    from medsearch.index import writing
    from medsearch.store.models import Patient, VaultRecord

    if not reason or not reason.strip():
        raise InputError("An erasure needs a reason for the audit log.", "Pass --reason 'erasure request <ref>'.")
    report = ErasureReport(patient=patient)
    data_dir = inst.data_dir.resolve()
    with inst.sessions() as s, s.begin():
        row = s.scalar(select(Patient).where(Patient.pseudonym == patient))
        if row is None:
            raise NotFoundError("No patient with this pseudonym.",
                                "Check the pseudonym (medsearch shows pseudonyms, never names or patient IDs).")
        studies = list(row.studies)
        series = [se for st in studies for se in st.series]
        volumes = [se.volume for se in series if se.volume is not None]
        names = {patient} | {st.pseudonym for st in studies} | {se.pseudonym for se in series}
        vector_ids = [v.vector_id for v in volumes if v.vector_id is not None]
        recorded = set()
        for v in volumes:
            path = (data_dir / v.path).resolve()
            if path.is_relative_to(data_dir):  # a row must never make us delete outside data_dir
                recorded.add(path)
        result = s.execute(delete(VaultRecord).where(or_(
            (VaultRecord.owner_kind == "patient") & (VaultRecord.owner_pseudonym == patient),
            (VaultRecord.owner_kind == "study") & VaultRecord.owner_pseudonym.in_([st.pseudonym for st in studies]),
            (VaultRecord.owner_kind == "series") & VaultRecord.owner_pseudonym.in_([se.pseudonym for se in series]),
        )))
        report.vault_records = result.rowcount
        s.delete(row)  # ORM cascade: studies, series, volumes (with their embeddings), findings
    report.studies, report.series, report.vectors = len(studies), len(series), len(vector_ids)
    report.pseudonyms = sorted(names)
    with writing(inst) as index:
        index.remove(vector_ids)
    for path in _owned_files(data_dir, names, recorded):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
        report.files += 1
    inst.track(AdminEvent(actor=actor, action="erase_patient", target=patient,
                          detail={"reason": reason, **report.to_dict()}))
    log.info("erased one patient: %d studies, %d series, %d vectors, %d files", report.studies, report.series,
             report.vectors, report.files)
    return report

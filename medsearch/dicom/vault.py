"""The encrypted identifier vault: AES-256-GCM envelope encryption of original identifiers.

What is stored: the identifiers a radiologist needs to find a study in the PACS
(PatientID, PatientName, IssuerOfPatientID, StudyInstanceUID, AccessionNumber,
StudyDate, SeriesInstanceUID), one :class:`~medsearch.store.models.VaultRecord`
per (owner_kind, owner_pseudonym, field).

How (envelope encryption):

* each record has its own random 256-bit **data key**; the value is encrypted
  with AES-256-GCM under it, with a random 96-bit nonce;
* the data key is **wrapped** (AES-256-GCM) under the instance **master key**
  (``keys/master.key`` or ``MEDSEARCH_MASTER_KEY``); the record stores the
  wrapped key and the master key's id (``key_id``), never a key;
* both encryptions take **associated data** = (owner_kind, owner_pseudonym,
  field): a ciphertext or a wrapped key copied to another row does not decrypt.

Why envelope encryption: rotating the master key rewraps 32-byte data keys and
never touches the ciphertexts (see :mod:`medsearch.dicom.rotate`).

:func:`reveal` is the **only** decryption path.  It requires an actor and a
non-empty reason and records a :class:`~medsearch.audit.events.ReidentifyEvent`
through ``inst.track`` *before* returning anything, so no value leaves the vault
unaudited.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import select

from medsearch.errors import InputError, IntegrityError, KeyringError, NotFoundError
from medsearch.keyring import key_id, read_key_file
from medsearch.store.models import VaultRecord

NONCE_BYTES = 12
OWNER_KINDS = ("patient", "study", "series")
FIELDS = {
    "patient": ("PatientID", "PatientName", "IssuerOfPatientID"),
    "study": ("StudyInstanceUID", "AccessionNumber", "StudyDate"),
    "series": ("SeriesInstanceUID",),
}
_AAD_PREFIX = b"medsearch-vault-v1"
_WRAP_PREFIX = b"medsearch-vault-wrap-v1"


def next_key_path(inst) -> Path:
    """Where a rotation in progress keeps the new master key: beside the current one, ``.next``."""
    current = inst.path(inst.settings.key_file)
    return current.with_name(current.name + ".next")


class MasterKeys:
    """The master keys that may be in use: the current one and, during a rotation, the next.

    New records are wrapped under the next key while a rotation is in progress, so that
    nothing written during a rotation needs rewrapping afterwards.
    """

    def __init__(self, inst):
        self.current = inst.keyring.master_key()
        self.by_id = {key_id(self.current): self.current}
        self.next = None
        path = next_key_path(inst)
        if path.exists() and not inst.env.get("MEDSEARCH_MASTER_KEY"):
            self.next = read_key_file(path)
            self.by_id[key_id(self.next)] = self.next

    @property
    def writing(self) -> bytes:
        return self.next or self.current

    def get(self, wanted_id: str) -> bytes:
        try:
            return self.by_id[wanted_id]
        except KeyError:
            raise KeyringError(
                f"A vault record is encrypted under master key id {wanted_id}, but the key in use has id "
                f"{key_id(self.current)}.",
                "Restore the master key file (keys/master.key) from your backup, or set MEDSEARCH_MASTER_KEY "
                "to the key this instance was created with.") from None


def aad(owner_kind: str, owner_pseudonym: str, field: str) -> bytes:
    """Associated data binding a ciphertext to its row."""
    return b"\x00".join((_AAD_PREFIX, owner_kind.encode(), owner_pseudonym.encode(), field.encode()))


def wrap(master: bytes, data_key: bytes, bound: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(master).encrypt(nonce, data_key, _WRAP_PREFIX + bound)


def unwrap(master: bytes, wrapped: bytes, bound: bytes) -> bytes:
    return AESGCM(master).decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], _WRAP_PREFIX + bound)


def _check_field(owner_kind: str, field: str) -> None:
    if owner_kind not in FIELDS or field not in FIELDS[owner_kind]:
        raise InputError(f"'{owner_kind}.{field}' is not a vault field.",
                         f"Use one of: {', '.join(k + '.' + f for k, fs in FIELDS.items() for f in fs)}.")


def store(session, keys: MasterKeys, owner_kind: str, owner_pseudonym: str, values: dict[str, str]) -> None:
    """Encrypt and store identifiers of one owner (within the caller's transaction).

    Existing records of the same (owner, field) are left as they are: an identifier of a
    pseudonym never changes, and re-encrypting would only churn keys.
    """
    existing = set(session.scalars(select(VaultRecord.field).where(
        VaultRecord.owner_kind == owner_kind, VaultRecord.owner_pseudonym == owner_pseudonym)))
    master = keys.writing
    for field, value in values.items():
        _check_field(owner_kind, field)
        if field in existing or value in (None, ""):
            continue
        bound = aad(owner_kind, owner_pseudonym, field)
        data_key = AESGCM.generate_key(bit_length=256)
        nonce = os.urandom(NONCE_BYTES)
        session.add(VaultRecord(
            owner_kind=owner_kind, owner_pseudonym=owner_pseudonym, field=field, key_id=key_id(master),
            wrapped_key=wrap(master, data_key, bound), nonce=nonce,
            ciphertext=AESGCM(data_key).encrypt(nonce, str(value).encode("utf-8"), bound)))


def _decrypt(keys: MasterKeys, rec: VaultRecord) -> str:
    master = keys.get(rec.key_id)
    bound = aad(rec.owner_kind, rec.owner_pseudonym, rec.field)
    try:
        data_key = unwrap(master, rec.wrapped_key, bound)
        return AESGCM(data_key).decrypt(rec.nonce, rec.ciphertext, bound).decode("utf-8")
    except InvalidTag:
        raise IntegrityError(
            f"Vault record {rec.id} does not decrypt with the key it names: it was altered or moved to "
            "another row.", "Restore the database from a backup; run 'medsearch doctor'.") from None


def reveal(inst, owner_kind: str, owner_pseudonym: str, fields, actor: str, reason: str) -> dict[str, str]:
    """Decrypt original identifiers: the single re-identification path, always audited.

    Args:
        inst: the instance.
        owner_kind: "patient", "study" or "series".
        owner_pseudonym: the pseudonym whose identifiers are wanted.
        fields: field names (see :data:`FIELDS`).
        actor: who asks (a user name).
        reason: why; required and recorded.

    Returns:
        {field: original value} for the fields that are stored.

    Raises:
        InputError: no actor or reason, or an unknown field.
        NotFoundError: nothing is stored for this owner.
        KeyringError / IntegrityError: wrong master key / altered record.
    """
    from medsearch.audit.events import ReidentifyEvent

    fields = list(fields)
    if not str(actor or "").strip():
        raise InputError("Re-identification needs an actor.", "Pass the name of the user who asks.")
    if not str(reason or "").strip():
        raise InputError("Re-identification needs a reason.", "State why the original identifiers are needed; "
                                                              "the reason is recorded in the audit log.")
    for field in fields:
        _check_field(owner_kind, field)
    with inst.sessions() as session:
        records = session.scalars(select(VaultRecord).where(
            VaultRecord.owner_kind == owner_kind, VaultRecord.owner_pseudonym == owner_pseudonym,
            VaultRecord.field.in_(fields))).all()
        if not records:
            inst.track(ReidentifyEvent(actor=actor, outcome="failure", reason=reason, owner_kind=owner_kind,
                                       owner=owner_pseudonym, fields=fields))
            raise NotFoundError(f"The vault holds no identifiers for {owner_kind} {owner_pseudonym}.",
                                "Check the pseudonym; the study may have been ingested without identifiers.")
        keys = MasterKeys(inst)
        values = {rec.field: _decrypt(keys, rec) for rec in records}
    # Audit before anything is returned: a failure to record stops the reveal.
    inst.track(ReidentifyEvent(actor=actor, reason=reason, owner_kind=owner_kind, owner=owner_pseudonym,
                               fields=sorted(values), patient=_patient_of(inst, owner_kind, owner_pseudonym)))
    return values


def _patient_of(inst, owner_kind: str, owner_pseudonym: str) -> str:
    """The patient pseudonym behind an owner, so a compliance review can group reveals by patient."""
    from medsearch.store.models import Patient, Series, Study

    if owner_kind == "patient":
        return owner_pseudonym
    query = select(Patient.pseudonym).join(Study)
    if owner_kind == "study":
        query = query.where(Study.pseudonym == owner_pseudonym)
    else:
        query = query.join(Series).where(Series.pseudonym == owner_pseudonym)
    with inst.sessions() as session:
        return session.scalar(query) or ""


def doctor_check(inst, Check):
    """Every vault record names a master key this instance holds; a rotation in progress is reported.

    Decrypts nothing (so it needs no reason and leaves no audit event): it compares key ids only.
    """
    from sqlalchemy import func

    try:
        keys = MasterKeys(inst)
    except KeyringError as exc:
        return Check("vault", "fail", exc.problem, exc.fix or "")
    with inst.sessions() as session:
        by_key = dict(session.execute(select(VaultRecord.key_id, func.count()).group_by(VaultRecord.key_id)).all())
    unknown = {k: n for k, n in by_key.items() if k not in keys.by_id}
    if unknown:
        return Check("vault", "fail",
                     f"{sum(unknown.values())} vault record(s) are encrypted under master key id(s) "
                     f"{', '.join(sorted(unknown))}, which this instance does not hold",
                     "Restore the master key from your backup (keys/master.key or MEDSEARCH_MASTER_KEY).")
    total = sum(by_key.values())
    if keys.next is not None:
        pending = sum(n for k, n in by_key.items() if k != key_id(keys.next))
        return Check("vault", "fail", f"a master key rotation is in progress: {pending} of {total} record(s) "
                                      "still under the old key", "Run 'medsearch keys rotate' to finish it.")
    return Check("vault", "ok", f"{total} record(s) under master key {key_id(keys.current)}")

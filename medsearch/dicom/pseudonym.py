"""Keyed pseudonyms for patients, studies and series, and the per-patient date shift.

A pseudonym is ``HMAC-SHA256(secret, kind || 0x00 || normalised value)``, with the
instance secret ``keys/pseudonym.key``.  Keyed, because an unkeyed hash of a
Patient ID can be reversed by hashing every plausible ID; without the secret,
no one can compute or confirm a pseudonym.  The same input always gives the same
pseudonym, across runs and restarts, and rotating the *master* key never
changes one (the secret is separate).

Values are normalised first, so that spellings of the same identifier that
DICOM treats as equal map to the same pseudonym: "DOE^JOHN" and "DOE^JOHN^",
or an ID padded with a trailing space.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import unicodedata

#: Pseudonym prefixes, so a pseudonym says what it names.
PREFIX = {"patient": "P", "study": "S", "series": "R"}
#: Hex characters kept: 96 bits, collision-free for any realistic archive, short enough for URLs.
PSEUDONYM_HEX = 24
#: Date shift range in days (always into the past: a shifted date is never in the future).
SHIFT_MIN_DAYS, SHIFT_MAX_DAYS = 365, 3652


def normalise(value: object, person_name: bool = False) -> str:
    """Canonical text of an identifier.

    Strips the padding DICOM allows (trailing spaces and NULs), applies Unicode NFC,
    and for person names drops empty trailing components ("DOE^JOHN^" == "DOE^JOHN")
    and compares case-insensitively.
    """
    text = unicodedata.normalize("NFC", str(value if value is not None else ""))
    text = text.strip(" \x00\t\r\n")
    if person_name:
        groups = []
        for group in text.split("="):
            parts = [p.strip() for p in group.split("^")]
            while parts and not parts[-1]:
                parts.pop()
            groups.append("^".join(parts))
        while groups and not groups[-1]:
            groups.pop()
        text = "=".join(groups).casefold()
    return text


def keyed_digest(secret: bytes, kind: str, value: str) -> bytes:
    """HMAC-SHA256 over a domain-separated value (kind and value cannot be confused)."""
    return hmac.new(secret, kind.encode("ascii") + b"\x00" + value.encode("utf-8"), hashlib.sha256).digest()


def pseudonym(secret: bytes, kind: str, value: str) -> str:
    """The pseudonym of an already normalised identifier, e.g. ``P3f9c...`` for a patient."""
    return PREFIX[kind] + keyed_digest(secret, kind, value).hex()[:PSEUDONYM_HEX]


def patient_key(patient_id: object, issuer: object, name: object, birth_date: object,
                study_uid: object) -> str:
    """The normalised identity a patient pseudonym is computed from.

    PatientID (qualified by IssuerOfPatientID) identifies a patient.  Without an ID,
    name and birth date do; without either, the study stands alone, because
    merging unidentified patients would be worse than splitting them.
    """
    pid = normalise(patient_id)
    if pid:
        return "id:" + normalise(issuer) + "\x1f" + pid
    pname = normalise(name, person_name=True)
    if pname:
        return "name:" + pname + "\x1f" + normalise(birth_date)
    return "study:" + normalise(study_uid)


def date_shift_days(secret: bytes, patient_pseudonym: str) -> int:
    """The keyed, per-patient date shift (negative days): the same for all of a patient's studies."""
    digest = keyed_digest(secret, "dateshift", patient_pseudonym)
    span = SHIFT_MAX_DAYS - SHIFT_MIN_DAYS + 1
    return -(SHIFT_MIN_DAYS + int.from_bytes(digest[:8], "big") % span)


def shift_date(value: dt.date, days: int) -> dt.date:
    return value + dt.timedelta(days=days)

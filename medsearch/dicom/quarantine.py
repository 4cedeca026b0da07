"""Quarantine: input that is not de-identified or ingested, kept out with a stated reason.

Nothing is dropped silently.  A quarantined file is recorded by its SHA-256 and
a reason built from constant text (never a value read from the file), in the
``quarantine`` table for ingest, and in the outcome list of ``medsearch deid``.
"""

from __future__ import annotations

from sqlalchemy import delete, select

from medsearch.errors import InputError
from medsearch.store.models import Quarantine


class Quarantined(InputError):
    """An instance or series that must not be de-identified or ingested automatically."""

    code = "quarantined"


def record(session, file_sha256: str, reason: str) -> None:
    """Add or update the quarantine row of one file (within the caller's transaction)."""
    row = session.scalar(select(Quarantine).where(Quarantine.file_sha256 == file_sha256))
    if row is None:
        session.add(Quarantine(file_sha256=file_sha256, reason=reason))
    else:
        row.reason = reason


def release(session, file_sha256s: list[str]) -> None:
    """Forget quarantine rows of files that were ingested after all (e.g. a series now complete)."""
    if file_sha256s:
        session.execute(delete(Quarantine).where(Quarantine.file_sha256.in_(file_sha256s)))

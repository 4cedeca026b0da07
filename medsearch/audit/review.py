"""Reading the audit log back: filtered queries and per-user access reports.

Used by the compliance page, the export command and the API.  Rows are
returned as plain dicts with the payload decoded; nothing here writes.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.sql import Select

from medsearch.audit.events import EVENT_TYPES
from medsearch.audit.log import _ts
from medsearch.errors import InputError
from medsearch.store.models import AuditEvent as AuditRow


@dataclass(frozen=True)
class EventFilter:
    """Which events to read.  ``patient`` matches any pseudonym in the payload."""

    actor: str | None = None
    event_type: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    patient: str | None = None

    def __post_init__(self):
        if self.event_type and self.event_type not in EVENT_TYPES:
            raise InputError(f"Unknown event type '{self.event_type}'.",
                             f"Use one of: {', '.join(sorted(EVENT_TYPES))}.")
        if self.patient and not all(c.isalnum() or c in "-_." for c in self.patient):
            raise InputError("A pseudonym has only letters, digits, '-', '_' and '.'.",
                             "Copy the pseudonym from a search result or an audit entry.")


def parse_time(value: str | None, name: str, end: bool = False) -> dt.datetime | None:
    """``YYYY-MM-DD`` or ISO 8601 (naive means UTC).

    With ``end``, a bare date means the end of that day (an "until" date includes the day itself).
    """
    if not value:
        return None
    text = value.strip()
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        raise InputError(f"'{name}' is not a date or time.", "Use YYYY-MM-DD or YYYY-MM-DDTHH:MM.") from None
    if end and len(text) == 10:
        parsed += dt.timedelta(days=1)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


def _where(stmt: Select, f: EventFilter) -> Select:
    if f.actor:
        stmt = stmt.where(AuditRow.actor == f.actor)
    if f.event_type:
        stmt = stmt.where(AuditRow.event_type == f.event_type)
    if f.since:
        stmt = stmt.where(AuditRow.ts >= f.since)
    if f.until:
        stmt = stmt.where(AuditRow.ts < f.until)
    if f.patient:
        # Pseudonyms are unique tokens, so a substring match over the canonical
        # JSON finds the patient, study or series wherever the payload names it.
        stmt = stmt.where(AuditRow.payload.contains(f.patient, autoescape=True))
    return stmt


def row_dict(row: AuditRow) -> dict:
    return {"id": row.id, "ts": _ts(row.ts), "event_type": row.event_type, "actor": row.actor,
            "outcome": row.outcome, "payload": json.loads(row.payload), "prev_hash": row.prev_hash,
            "hash": row.hash, "mac": row.mac}


def query_events(inst, flt: EventFilter | None = None, limit: int | None = 100, offset: int = 0,
                 newest_first: bool = True) -> tuple[list[dict], int]:
    """Return (events, total matching)."""
    flt = flt or EventFilter()
    with inst.sessions() as s:
        total = s.execute(_where(select(func.count(AuditRow.id)), flt)).scalar_one()
        stmt = _where(select(AuditRow), flt).order_by(AuditRow.id.desc() if newest_first else AuditRow.id)
        if limit is not None:
            stmt = stmt.limit(limit).offset(offset)
        return [row_dict(r) for r in s.execute(stmt).scalars()], total


def iter_events(inst, flt: EventFilter | None = None, batch: int = 1000):
    """All matching events, oldest first, in batches (exports of any size)."""
    flt = flt or EventFilter()
    last = 0
    while True:
        with inst.sessions() as s:
            rows = s.execute(_where(select(AuditRow), flt).where(AuditRow.id > last)
                             .order_by(AuditRow.id).limit(batch)).scalars().all()
        if not rows:
            return
        for r in rows:
            yield row_dict(r)
        last = rows[-1].id


def access_report(inst, actor: str, flt: EventFilter | None = None) -> dict:
    """What one user did: counts by event type, studies viewed, re-identifications with reasons."""
    base = flt or EventFilter()
    flt = EventFilter(actor=actor, event_type=base.event_type, since=base.since, until=base.until,
                      patient=base.patient)
    counts: dict[str, int] = {}
    studies: dict[str, int] = {}
    reids: list[dict] = []
    failures = 0
    for ev in iter_events(inst, flt):
        counts[ev["event_type"]] = counts.get(ev["event_type"], 0) + 1
        if ev["outcome"] != "success":
            failures += 1
        p = ev["payload"]
        if ev["event_type"] == "study_view" and p.get("study"):
            studies[p["study"]] = studies.get(p["study"], 0) + 1
        if ev["event_type"] == "reidentify":
            reids.append({"ts": ev["ts"], "owner": p.get("owner"), "reason": p.get("reason"),
                          "fields": p.get("fields")})
    return {"actor": actor, "counts": counts, "failures": failures,
            "studies_viewed": sorted(({"study": k, "views": v} for k, v in studies.items()),
                                     key=lambda d: (-d["views"], d["study"])),
            "reidentifications": reids}

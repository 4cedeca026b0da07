"""The append-only, hash-chained audit log.

Every event goes out through :func:`track_event`.  Row *n* stores
``hash = SHA-256(prev_hash || canonical(row))`` and ``mac = HMAC-SHA256(audit
key, hash)``.  Editing, deleting, reordering or inserting a row breaks the chain
at that row, and forging a whole new chain needs the audit key, which lives in
the keyring, not the database.  ``prev_hash`` is unique, so two writers that
race for the same tail cannot fork the chain: the loser retries.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import threading
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError as SAIntegrityError
from sqlalchemy.orm import Session, sessionmaker

from medsearch.audit.events import AuditEvent
from medsearch.store.models import AuditEvent as AuditRow

log = logging.getLogger(__name__)
GENESIS = "0" * 64
_lock = threading.Lock()
#: Subscribers (e.g. the syslog forwarder) called after an event is stored.
listeners: list = []


def canonical(ts: str, event_type: str, actor: str, outcome: str, payload: str) -> bytes:
    return json.dumps([ts, event_type, actor, outcome, payload], ensure_ascii=False,
                      separators=(",", ":")).encode("utf-8")


def _digest(prev_hash: str, body: bytes) -> str:
    return hashlib.sha256(prev_hash.encode("ascii") + body).hexdigest()


def _mac(key: bytes, digest: str) -> str:
    return hmac.new(key, digest.encode("ascii"), hashlib.sha256).hexdigest()


def _ts(value: dt.datetime) -> str:
    if value.tzinfo is None:  # SQLite returns naive datetimes; they were stored as UTC
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def track_event(factory: sessionmaker[Session], audit_key: bytes, event: AuditEvent) -> int:
    """Append ``event`` to the chain and return its row id."""
    payload = json.dumps(event.payload(), ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    for _attempt in range(20):
        with _lock, factory() as session, session.begin():
            last = session.execute(select(AuditRow.hash).order_by(AuditRow.id.desc()).limit(1)).scalar()
            prev = last or GENESIS
            now = dt.datetime.now(dt.timezone.utc)
            ts = _ts(now)
            digest = _digest(prev, canonical(ts, event.event_type, event.actor, event.outcome, payload))
            row = AuditRow(ts=now, event_type=event.event_type, actor=event.actor, outcome=event.outcome,
                           payload=payload, prev_hash=prev, hash=digest, mac=_mac(audit_key, digest))
            session.add(row)
            try:
                session.flush()
            except SAIntegrityError:
                session.rollback()
                continue
            row_id = row.id
        for listener in listeners:
            try:
                listener(row_id, event)
            except Exception:  # a forwarder failing must not lose the stored event
                log.exception("audit listener failed")
        return row_id
    raise RuntimeError("could not append to the audit chain after 20 attempts")


@dataclass
class VerifyResult:
    ok: bool
    checked: int
    first_bad_id: int | None = None
    problem: str | None = None


def verify_chain(factory: sessionmaker[Session], audit_key: bytes) -> VerifyResult:
    """Walk the chain in id order; name the first entry that does not verify."""
    prev = GENESIS
    checked = 0
    with factory() as session:
        for row in session.execute(select(AuditRow).order_by(AuditRow.id)).scalars():
            body = canonical(_ts(row.ts), row.event_type, row.actor, row.outcome, row.payload)
            if row.prev_hash != prev:
                return VerifyResult(False, checked, row.id,
                                    "does not link to the entry before it (an entry was deleted, inserted "
                                    "or reordered)")
            if _digest(prev, body) != row.hash:
                return VerifyResult(False, checked, row.id, "its content was changed after it was written")
            if not hmac.compare_digest(_mac(audit_key, row.hash), row.mac):
                return VerifyResult(False, checked, row.id, "its MAC is wrong (forged with another key)")
            prev = row.hash
            checked += 1
    return VerifyResult(True, checked)


def doctor_check(inst, Check):
    """``medsearch doctor``: the audit chain verifies end to end."""
    from medsearch.errors import MedsearchError

    try:
        key = inst.keyring.secret("audit")
    except MedsearchError as exc:
        return Check("audit", "fail", exc.problem, exc.fix or "")
    result = verify_chain(inst.sessions, key)
    if result.ok:
        return Check("audit", "ok", f"hash chain intact ({result.checked} entries)")
    return Check("audit", "fail", f"entry {result.first_bad_id} {result.problem}",
                 "Treat it as a security incident: keep the database as evidence, compare it with a backup, "
                 "and see 'medsearch audit verify'.")

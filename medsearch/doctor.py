"""Health checks for an instance: ``medsearch doctor``.

Each check returns a :class:`Check`; a failed check names the fix.  Other
capabilities contribute checks by adding a function to :data:`CHECKS`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

from sqlalchemy import func, select

from medsearch.errors import MedsearchError
from medsearch.instance import Instance


@dataclass
class Check:
    name: str
    status: str  # ok | fail | skip
    detail: str = ""
    fix: str = ""


def check_keys(inst: Instance) -> Check:
    try:
        inst.keyring.master_key()
        for name in ("pseudonym", "audit", "session"):
            inst.keyring.secret(name)
    except MedsearchError as exc:
        return Check("keys", "fail", exc.problem, exc.fix or "")
    return Check("keys", "ok", f"master key id {inst.keyring.master_key_id()}")


def check_database(inst: Instance) -> Check:
    from medsearch.store.db import current_revision, head_revision

    try:
        current = current_revision(inst.engine)
    except MedsearchError as exc:
        return Check("database", "fail", exc.problem, exc.fix or "")
    head = head_revision()
    if current != head:
        return Check("database", "fail", f"schema at migration {current or 'none'}, expected {head}",
                     "Run 'medsearch init' to apply the pending migrations.")
    return Check("database", "ok", f"{inst.engine.dialect.name} at migration {head}")


def check_index(inst: Instance) -> Check:
    """The index must hold exactly the vectors the database says are encoded."""
    from medsearch.store.models import Volume

    with inst.sessions() as s:
        encoded = s.scalar(select(func.count()).select_from(Volume).where(Volume.vector_id.is_not(None))) or 0
    try:
        from medsearch.index import consistency  # built by the search capability
    except ImportError:
        if encoded:
            return Check("index", "fail", f"{encoded} vectors recorded but no index backend is installed",
                         "Install the index capability, then run 'medsearch ingest --reindex'.")
        return Check("index", "ok", "empty (no encoded volumes yet)")
    return consistency.doctor_check(inst, Check)


def check_model(inst: Instance) -> Check:
    try:
        from medsearch.models import registry  # built by the model capability
    except ImportError:
        return Check("model", "skip", "the model capability is not built yet")
    return registry.doctor_check(inst, Check)


def check_ingest_queue(inst: Instance) -> Check:
    """Dead-lettered ingest jobs, listed with their errors and the fix."""
    from medsearch.pacs import queue

    return queue.doctor_check(inst, Check)


def check_terminology(inst: Instance) -> Check:
    """The configured terminology (core folder and imported layers) loads."""
    from medsearch.query import health

    return health.doctor_check(inst, Check)


def check_vault(inst: Instance) -> Check:
    """Vault records are readable with the keys at hand; no key rotation is left half done."""
    from medsearch.dicom import vault

    return vault.doctor_check(inst, Check)


def check_audit(inst: Instance) -> Check:
    """The audit hash chain verifies end to end."""
    from medsearch.audit import log

    return log.doctor_check(inst, Check)


def check_web(inst: Instance) -> Check:
    """The web server's TLS settings load."""
    from medsearch.web import serve

    return serve.doctor_check(inst, Check)


CHECKS: list[Callable[[Instance], Check]] = [check_keys, check_database, check_index, check_model, check_ingest_queue,
                                             check_terminology, check_vault, check_audit, check_web]


def counts(inst: Instance) -> dict[str, int]:
    from medsearch.store import models as m

    def n(model, *where):
        with inst.sessions() as s:
            return s.scalar(select(func.count()).select_from(model).where(*where)) or 0

    return {
        "patients": n(m.Patient),
        "studies": n(m.Study),
        "series": n(m.Series),
        "volumes": n(m.Volume),
        "vectors": n(m.Volume, m.Volume.vector_id.is_not(None)),
        "not_encoded": n(m.Volume, m.Volume.vector_id.is_(None)),
        "quarantined": n(m.Quarantine),
        "ingest_queued": n(m.IngestJob, m.IngestJob.status == "queued"),
        "dead_letters": n(m.IngestJob, m.IngestJob.status == "dead"),
        "users": n(m.User),
        "audit_events": n(m.AuditEvent),
    }


#: Checks that read tables; they are skipped while the database check fails.
NEEDS_DATABASE = {"check_index", "check_ingest_queue", "check_vault", "check_audit"}


def run_doctor(inst: Instance) -> dict:
    checks: list[Check] = []
    db_ok = True
    for check in CHECKS:
        if check.__name__ in NEEDS_DATABASE and not db_ok:
            checks.append(Check(check.__name__.removeprefix("check_"), "skip", "the database check failed"))
            continue
        result = check(inst)
        if result.name == "database":
            db_ok = result.status == "ok"
        checks.append(result)
    ok = all(c.status != "fail" for c in checks)
    report = {"ok": ok, "home": str(inst.home), "checks": [asdict(c) for c in checks]}
    report["counts"] = counts(inst) if db_ok else {}
    return report

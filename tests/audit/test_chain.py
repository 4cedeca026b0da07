import datetime as dt

import pytest
from sqlalchemy import delete, select, update

from medsearch.audit.events import LoginEvent, SearchEvent
from medsearch.audit.log import verify_chain
from medsearch.store.models import AuditEvent as Row


def _fill(instance, n=5):
    for i in range(n):
        instance.track(SearchEvent(actor=f"user{i}", query=f"nodule {i}", result_count=i))


def test_intact_chain_verifies(instance):
    _fill(instance)
    instance.track(LoginEvent(actor="alice", outcome="failure", remote_addr="127.0.0.1"))
    result = verify_chain(instance.sessions, instance.keyring.secret("audit"))
    assert result.ok and result.checked == 6


def _edit(s):
    s.execute(update(Row).where(Row.id == 3).values(payload='{"query":"edited"}'))


def _delete(s):
    s.execute(delete(Row).where(Row.id == 3))


def _swap(s):
    a, b = (s.get(Row, 2), s.get(Row, 3))
    fields = ("ts", "event_type", "actor", "outcome", "payload", "prev_hash", "hash", "mac")
    va, vb = ({f: getattr(a, f) for f in fields}, {f: getattr(b, f) for f in fields})
    # prev_hash is unique: park one value to swap rows in place
    s.execute(update(Row).where(Row.id == 2).values(prev_hash="x" * 64))
    s.execute(update(Row).where(Row.id == 3).values(**va))
    s.execute(update(Row).where(Row.id == 2).values(**vb))


def _insert(s):
    last = s.execute(select(Row).where(Row.id == 3)).scalar_one()
    s.execute(update(Row).where(Row.id == 4).values(prev_hash="y" * 64))
    s.add(Row(id=100, ts=dt.datetime.now(dt.timezone.utc), event_type="search", actor="mallory",
              outcome="success", payload="{}", prev_hash=last.hash, hash="0" * 64, mac="0" * 64))


@pytest.mark.parametrize("tamper, first_bad", [(_edit, 3), (_delete, 4), (_swap, 2), (_insert, 4)])
def test_tampering_is_detected_and_located(instance, tamper, first_bad):
    _fill(instance)
    with instance.sessions() as s, s.begin():
        tamper(s)
    result = verify_chain(instance.sessions, instance.keyring.secret("audit"))
    assert not result.ok
    assert result.first_bad_id == first_bad


def test_forged_chain_without_key_is_detected(instance):
    _fill(instance, 2)
    result = verify_chain(instance.sessions, b"k" * 32)
    assert not result.ok and "MAC" in result.problem and result.first_bad_id == 1


def test_doctor_reports_the_chain(instance):
    from medsearch.audit.log import doctor_check
    from medsearch.doctor import Check

    _fill(instance, 3)
    assert doctor_check(instance, Check).status == "ok"
    with instance.sessions() as s, s.begin():
        _edit(s)
    check = doctor_check(instance, Check)
    assert check.status == "fail" and "entry 3" in check.detail and check.fix

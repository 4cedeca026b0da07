import datetime as dt
import json

import pytest
from sqlalchemy import select, update

from medsearch import accounts
from medsearch.errors import AuthError, ForbiddenError, InputError, NotFoundError
from medsearch.store.models import ApiToken, AuditEvent, User

PW = "a-long-enough-password"


@pytest.fixture(autouse=True)
def _cheap_hashing(monkeypatch):
    """argon2id with small parameters: behaviour, not cost, is under test (production keeps the defaults)."""
    from argon2 import PasswordHasher

    monkeypatch.setattr(accounts, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))


def test_production_hasher_is_argon2id_with_rfc9106_parameters():
    from argon2 import Type

    p = accounts.PRODUCTION_HASHER
    assert p.type is Type.ID and p.memory_cost >= 64 * 1024 and p.time_cost >= 3


def _events(inst, event_type):
    with inst.sessions() as s:
        rows = s.execute(select(AuditEvent).where(AuditEvent.event_type == event_type)
                         .order_by(AuditEvent.id)).scalars().all()
        return [(r.actor, r.outcome, json.loads(r.payload)) for r in rows]


def test_password_is_stored_as_argon2id_and_checks(instance):
    accounts.add_user(instance, "alice", PW, "radiologist", actor="root")
    with instance.sessions() as s:
        stored = s.execute(select(User.password_hash)).scalar_one()
    assert stored.startswith("$argon2id$") and PW not in stored
    p = accounts.authenticate(instance, "alice", PW, "10.0.0.1")
    assert (p.name, p.role, p.kind) == ("alice", "radiologist", "user")
    assert _events(instance, "admin")[0] == ("root", "success", {"action": "user.add", "target": "alice",
                                                                 "detail": {"role": "radiologist",
                                                                            "allowed_sites": None}})
    assert _events(instance, "login")[-1][:2] == ("alice", "success")


@pytest.mark.parametrize("name, password, role, problem", [
    ("bob", "short", "radiologist", "shorter than"),
    ("bob", "x" * 1025, "radiologist", "longer than"),
    ("bob", PW, "superuser", "Unknown role"),
    ("bad name", PW, "radiologist", "name is not valid"),
    ("", PW, "radiologist", "name is not valid"),
    ("x" * 65, PW, "radiologist", "name is not valid"),
])
def test_bad_user_input_is_refused(sqlite_instance, name, password, role, problem):
    with pytest.raises(InputError, match=problem):
        accounts.add_user(sqlite_instance, name, password, role)


def test_duplicate_user_is_refused(sqlite_instance):
    accounts.add_user(sqlite_instance, "alice", PW, "admin")
    with pytest.raises(InputError, match="exists already"):
        accounts.add_user(sqlite_instance, "alice", PW, "admin")


def test_wrong_password_unknown_user_and_disabled_give_the_same_error(sqlite_instance):
    accounts.add_user(sqlite_instance, "alice", PW, "radiologist")
    messages = set()
    for name, pw in (("alice", "wrong-password!"), ("nobody", PW)):
        with pytest.raises(AuthError) as err:
            accounts.authenticate(sqlite_instance, name, pw)
        messages.add(err.value.message)
    accounts.disable_user(sqlite_instance, "alice", actor="root")
    with pytest.raises(AuthError) as err:
        accounts.authenticate(sqlite_instance, "alice", PW)
    messages.add(err.value.message)
    assert len(messages) == 1, "the error must not reveal which check failed"
    methods = [p["method"] for _, outcome, p in _events(sqlite_instance, "login") if outcome == "failure"]
    assert methods == ["password:bad_credentials", "password:bad_credentials", "password:disabled"]
    assert accounts.list_users(sqlite_instance)[0]["disabled"] is True


def test_lockout_after_max_failures_then_expires(instance):
    accounts.add_user(instance, "alice", PW, "radiologist")
    limit = instance.settings.login_max_failures
    for _ in range(limit):
        with pytest.raises(AuthError):
            accounts.authenticate(instance, "alice", "wrong-password!")
    with pytest.raises(AuthError):  # the right password no longer helps
        accounts.authenticate(instance, "alice", PW)
    assert _events(instance, "login")[-1][2]["method"] == "password:locked"
    assert accounts.list_users(instance)[0]["locked"] is True
    with instance.sessions() as s, s.begin():  # the lockout period passes
        s.execute(update(User).values(locked_until=dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)))
    assert accounts.authenticate(instance, "alice", PW).name == "alice"


def test_enable_clears_lockout_and_is_audited(sqlite_instance):
    accounts.add_user(sqlite_instance, "alice", PW, "radiologist")
    for _ in range(sqlite_instance.settings.login_max_failures):
        with pytest.raises(AuthError):
            accounts.authenticate(sqlite_instance, "alice", "wrong-password!")
    accounts.enable_user(sqlite_instance, "alice", actor="root")
    assert accounts.authenticate(sqlite_instance, "alice", PW)
    assert [p["action"] for _, _, p in _events(sqlite_instance, "admin")] == ["user.add", "user.enable"]


def test_token_is_hashed_at_rest_and_role_scoped(instance):
    token = accounts.create_token(instance, "pacs1", "pacs", days=5, actor="root")
    assert token.startswith(accounts.TOKEN_PREFIX) and len(token) > 40
    with instance.sessions() as s:
        row = s.execute(select(ApiToken)).scalar_one()
    assert row.token_hash != token and token not in row.token_hash
    p = accounts.verify_token(instance, token)
    assert (p.name, p.role, p.kind) == ("pacs1", "pacs", "token")
    assert accounts.list_tokens(instance)[0]["state"] == "live"
    assert token not in json.dumps(_events(instance, "admin"))


@pytest.mark.parametrize("mutate, problem", [
    (lambda s: s.execute(update(ApiToken).values(expires_at=dt.datetime.now(dt.timezone.utc)
                                                 - dt.timedelta(minutes=1))), "expired"),
    (lambda s: s.execute(update(ApiToken).values(revoked_at=dt.datetime.now(dt.timezone.utc))), "revoked"),
])
def test_expired_and_revoked_tokens_are_refused(sqlite_instance, mutate, problem):
    token = accounts.create_token(sqlite_instance, "pacs1", "pacs", days=1)
    with sqlite_instance.sessions() as s, s.begin():
        mutate(s)
    with pytest.raises(AuthError, match=problem):
        accounts.verify_token(sqlite_instance, token)


@pytest.mark.parametrize("token", ["", "Bearer", "mst_" + "x" * 43, "not-a-token", "mst_" + "a" * 300])
def test_wrong_tokens_are_refused(sqlite_instance, token):
    accounts.create_token(sqlite_instance, "pacs1", "pacs")
    with pytest.raises(AuthError):
        accounts.verify_token(sqlite_instance, token)


def test_revoke_and_bad_lifetimes(sqlite_instance):
    token = accounts.create_token(sqlite_instance, "pacs1", "pacs")
    assert accounts.revoke_token(sqlite_instance, "pacs1", actor="root") == 1
    with pytest.raises(AuthError, match="revoked"):
        accounts.verify_token(sqlite_instance, token)
    with pytest.raises(NotFoundError):
        accounts.revoke_token(sqlite_instance, "pacs1")
    for days in (0, -1, 5000):
        with pytest.raises(InputError, match="lifetime"):
            accounts.create_token(sqlite_instance, "t", "pacs", days=days)


def test_require_role():
    p = accounts.Principal("a", "pacs")
    assert accounts.require_role(p, {"pacs"}) is p
    with pytest.raises(AuthError):
        accounts.require_role(None, {"pacs"})
    with pytest.raises(ForbiddenError, match="pacs"):
        accounts.require_role(p, {"admin"})


def test_external_login_seam_is_audited(sqlite_instance):
    p = accounts.principal_for_external(sqlite_instance, "dr.li", "radiologist", "oidc", "10.1.1.1", ["site-a"])
    assert (p.kind, p.allowed_sites) == ("sso", ("site-a",))
    assert _events(sqlite_instance, "login")[-1] == ("dr.li", "success", {"method": "oidc",
                                                                          "remote_addr": "10.1.1.1"})

"""CLI bodies of users, tokens and audit export."""

import json

from click.testing import CliRunner

from medsearch import accounts
from medsearch.cli import cli
from medsearch.instance import open_instance


def run(home, args, input=None):
    return CliRunner().invoke(cli, ["--home", str(home), *args], input=input, catch_exceptions=False)


def test_users_and_tokens_lifecycle(home):
    assert run(home, ["init"]).exit_code == 0
    assert run(home, ["users", "add", "alice", "--role", "radiologist"], input="a-good-password\n").exit_code == 0
    short = run(home, ["users", "add", "bob", "--role", "admin"], input="short\n")
    assert short.exit_code == 7 and "shorter than" in short.output
    assert run(home, ["users", "list"]).output.split() == ["alice", "radiologist", "active"]
    created = run(home, ["tokens", "create", "pacs1", "--role", "pacs", "--days", "7"])
    token = created.output.strip().splitlines()[-1]
    inst = open_instance(home)
    assert accounts.verify_token(inst, token).role == "pacs"
    assert accounts.authenticate(inst, "alice", "a-good-password").name == "alice"
    assert "pacs1" in run(home, ["tokens", "list"]).output and token not in run(home, ["tokens", "list"]).output
    assert run(home, ["tokens", "revoke", "pacs1"]).exit_code == 0
    assert "revoked" in run(home, ["tokens", "list"]).output
    assert run(home, ["tokens", "revoke", "pacs1"]).exit_code == 8
    assert run(home, ["users", "disable", "alice"]).exit_code == 0
    assert "disabled" in run(home, ["users", "list"]).output
    assert run(home, ["users", "disable", "nobody"]).exit_code == 8
    out = home / "audit.json"
    assert run(home, ["audit", "export", "--format", "json", "--out", str(out)]).exit_code == 0
    actions = [e["payload"].get("action") for e in json.loads(out.read_text()) if e["event_type"] == "admin"]
    assert actions == ["user.add", "token.create", "token.revoke", "user.disable"]
    assert all(e["actor"].startswith("cli") for e in json.loads(out.read_text()) if e["event_type"] == "admin")
    assert run(home, ["audit", "verify"]).exit_code == 0
    inst.close()


def test_audit_verify_cli_names_the_first_bad_entry(home):
    from sqlalchemy import update

    from medsearch.store.models import AuditEvent

    run(home, ["init"])
    for name in ("a1", "a2", "a3"):
        run(home, ["tokens", "create", name])
    inst = open_instance(home)
    with inst.sessions() as s, s.begin():
        s.execute(update(AuditEvent).where(AuditEvent.id == 2).values(actor="mallory"))
    result = CliRunner().invoke(cli, ["--home", str(home), "audit", "verify"])
    assert result.exit_code == 6 and "BROKEN at entry 2" in result.output
    inst.close()

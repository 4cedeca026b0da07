"""The encrypted vault: envelope encryption, row binding, audited reveal, wrong keys, key rotation."""

from __future__ import annotations

import base64
import secrets

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from medsearch.cli import cli
from medsearch.dicom import rotate as rotate_mod
from medsearch.dicom import vault
from medsearch.errors import InputError, IntegrityError, KeyringError, NotFoundError
from medsearch.instance import Instance
from medsearch.keyring import key_id
from medsearch.store.models import AuditEvent, VaultRecord

VALUES = {"StudyInstanceUID": "1.2.840.113619.2.55.20240102", "AccessionNumber": "ACC-778899",
          "StudyDate": "20240102"}


def _fill(inst, n: int = 3) -> dict[str, dict]:
    stored = {}
    with inst.sessions() as session, session.begin():
        keys = vault.MasterKeys(inst)
        for i in range(n):
            values = {k: f"{v}{i}" for k, v in VALUES.items()}
            vault.store(session, keys, "study", f"S{i:024d}", values)
            stored[f"S{i:024d}"] = values
    return stored


def _reveal_all(inst, stored):
    return {p: vault.reveal(inst, "study", p, list(VALUES), "alice", "PACS lookup") for p in stored}


def test_roundtrip_and_ciphertext_only_at_rest(instance):
    stored = _fill(instance)
    assert _reveal_all(instance, stored) == stored
    with instance.sessions() as session:
        rows = session.scalars(select(VaultRecord)).all()
    assert len(rows) == 9
    for row in rows:
        assert row.key_id == instance.keyring.master_key_id()
        assert b"ACC-778899" not in row.ciphertext and len(row.nonce) == 12
    assert len({row.wrapped_key for row in rows}) == 9  # one data key per record


def test_reveal_is_audited_with_actor_and_reason(instance):
    stored = _fill(instance, 1)
    pseudonym = next(iter(stored))
    vault.reveal(instance, "study", pseudonym, ["AccessionNumber"], "alice", "PACS lookup for tumour board")
    with instance.sessions() as session:
        event = session.scalars(select(AuditEvent).where(AuditEvent.event_type == "reidentify")).one()
    assert event.actor == "alice" and "tumour board" in event.payload and pseudonym in event.payload
    assert "ACC-778899" not in event.payload  # what was revealed is not logged, only that it was


@pytest.mark.parametrize("actor, reason, fields, error", [
    ("alice", "", ["AccessionNumber"], "needs a reason"),
    ("alice", "   ", ["AccessionNumber"], "needs a reason"),
    ("", "why", ["AccessionNumber"], "needs an actor"),
    ("alice", "why", ["PatientBirthDate"], "not a vault field"),
])
def test_reveal_refuses_bad_requests(sqlite_instance, actor, reason, fields, error):
    stored = _fill(sqlite_instance, 1)
    with pytest.raises(InputError, match=error):
        vault.reveal(sqlite_instance, "study", next(iter(stored)), fields, actor, reason)


def test_reveal_unknown_owner(sqlite_instance):
    with pytest.raises(NotFoundError):
        vault.reveal(sqlite_instance, "study", "S-none", ["AccessionNumber"], "alice", "why")


def test_ciphertext_moved_to_another_row_does_not_decrypt(sqlite_instance):
    stored = _fill(sqlite_instance, 2)
    a, b = list(stored)
    with sqlite_instance.sessions() as session, session.begin():
        ra = session.scalars(select(VaultRecord).where(VaultRecord.owner_pseudonym == a,
                                                       VaultRecord.field == "AccessionNumber")).one()
        rb = session.scalars(select(VaultRecord).where(VaultRecord.owner_pseudonym == b,
                                                       VaultRecord.field == "AccessionNumber")).one()
        rb.wrapped_key, rb.nonce, rb.ciphertext = ra.wrapped_key, ra.nonce, ra.ciphertext
    with pytest.raises(IntegrityError, match="altered or moved"):
        vault.reveal(sqlite_instance, "study", b, ["AccessionNumber"], "alice", "why")


def test_wrong_master_key_is_a_clear_error(sqlite_instance):
    stored = _fill(sqlite_instance, 1)
    wrong = base64.b64encode(secrets.token_bytes(32)).decode()
    other = Instance(sqlite_instance.home, env={"MEDSEARCH_MASTER_KEY": wrong})
    with pytest.raises(KeyringError, match="Restore the master key") as err:
        vault.reveal(other, "study", next(iter(stored)), ["AccessionNumber"], "alice", "why")
    assert key_id(base64.b64decode(wrong)) in err.value.problem
    result = CliRunner().invoke(cli, ["--home", str(sqlite_instance.home), "keys", "rotate"],
                                env={"MEDSEARCH_MASTER_KEY": wrong})
    assert result.exit_code == KeyringError.exit_code and "Traceback" not in result.output


def test_rotation_loses_no_record(instance):
    stored = _fill(instance, 4)
    old_id = instance.keyring.master_key_id()
    report = rotate_mod.rotate(instance, progress=False)
    assert report.complete and report.rewrapped == 12 and report.old_key_id == old_id
    assert instance.keyring.master_key_id() == report.new_key_id != old_id
    assert _reveal_all(instance, stored) == stored
    keys_dir = instance.keys_dir
    assert not (keys_dir / "master.key.next").exists()
    assert (keys_dir / f"master.key.retired-{old_id}").stat().st_mode & 0o077 == 0
    with instance.sessions() as session:
        assert set(session.scalars(select(VaultRecord.key_id))) == {report.new_key_id}


def test_interrupted_rotation_resumes(sqlite_instance):
    inst = sqlite_instance
    stored = _fill(inst, 4)
    first = rotate_mod.rotate(inst, limit=5, progress=False)  # stops as a kill would
    assert not first.complete and first.rewrapped == 5 and first.remaining == 7
    # Mid-rotation: both keys readable, new records go under the next key.
    assert _reveal_all(inst, stored) == stored
    stored.update(_fill(Instance(inst.home), 6))
    second = rotate_mod.rotate(Instance(inst.home), progress=False)
    assert second.complete and second.new_key_id == first.new_key_id and second.rewrapped == 7
    fresh = Instance(inst.home)
    assert fresh.keyring.master_key_id() == first.new_key_id
    assert _reveal_all(fresh, stored) == stored


def test_rotation_via_cli_and_refused_for_env_key(sqlite_instance):
    _fill(sqlite_instance, 1)
    result = CliRunner().invoke(cli, ["--home", str(sqlite_instance.home), "keys", "rotate"])
    assert result.exit_code == 0 and "3 vault record(s) rewrapped" in result.output and "complete" in result.output
    env_key = base64.b64encode(Instance(sqlite_instance.home).keyring.master_key()).decode()
    result = CliRunner().invoke(cli, ["--home", str(sqlite_instance.home), "keys", "rotate"],
                                env={"MEDSEARCH_MASTER_KEY": env_key})
    assert result.exit_code == KeyringError.exit_code and "secrets manager" in result.output


def test_rotation_reseals_the_encrypted_index(sqlite_instance):
    from medsearch.index.crypto import seal, unseal

    inst = sqlite_instance
    inst.index_dir.mkdir(parents=True, exist_ok=True)
    sealed = inst.index_dir / "vectors.msidx"
    seal(sealed, inst.keyring.master_key(), b"index payload")
    report = rotate_mod.rotate(inst, progress=False)
    assert report.complete and report.index_files == 1
    fresh = Instance(inst.home)
    assert bytes(unseal(sealed, fresh.keyring.master_key())) == b"index payload"


def test_doctor_reports_vault_state(sqlite_instance):
    from medsearch.doctor import Check

    inst = sqlite_instance
    _fill(inst, 2)
    assert vault.doctor_check(inst, Check).status == "ok"
    rotate_mod.rotate(inst, limit=1, progress=False)
    check = vault.doctor_check(Instance(inst.home), Check)
    assert check.status == "fail" and "rotation is in progress: 5 of 6" in check.detail
    assert "keys rotate" in check.fix
    rotate_mod.rotate(Instance(inst.home), progress=False)
    wrong = base64.b64encode(secrets.token_bytes(32)).decode()
    check = vault.doctor_check(Instance(inst.home, env={"MEDSEARCH_MASTER_KEY": wrong}), Check)
    assert check.status == "fail" and "6 vault record(s)" in check.detail and "Restore the master key" in check.fix

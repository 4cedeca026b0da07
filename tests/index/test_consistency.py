"""The index stays consistent with the database across crashes; doctor sees it; rebuild repairs it."""

import base64
import json
import os

import numpy as np
import pytest
from click.testing import CliRunner
from sqlalchemy import delete, select

from medsearch.cli import cli
from medsearch.errors import IntegrityError, KeyringError
from medsearch.index import forget_index, get_index, index_path, sync
from medsearch.index.dbsync import db_vector_ids
from medsearch.store.models import Patient, Volume


def doctor_index(home):
    result = CliRunner().invoke(cli, ["--home", str(home), "doctor", "--json"])
    report = json.loads(result.stdout)
    return next(c for c in report["checks"] if c["name"] == "index")


def rebuild_cli(home):
    result = CliRunner().invoke(cli, ["--home", str(home), "index", "rebuild"])
    assert result.exit_code == 0, result.output
    return result.output


def test_open_reconciles_and_doctor_agrees(instance, populate_instance):
    pats = populate_instance(instance, n_patients=3)
    index = get_index(instance)
    assert np.array_equal(index.ids(), db_vector_ids(instance))
    assert index_path(instance).exists()
    check = doctor_index(instance.home)
    assert check["status"] == "ok" and "6 vectors" in check["detail"]
    assert get_index(instance) is index  # cached per instance
    some = pats[next(iter(pats))]["vector_ids"][0]
    assert index.search(index.vectors([some]), 1)[1][0, 0] == some


def test_crash_after_db_commit_before_index_save(instance, populate_instance):
    populate_instance(instance, n_patients=2, seed=0)
    sync(instance)
    # the "crash": new volumes are committed, the process dies before the index is saved
    populate_instance(instance, n_patients=2, seed=1)
    check = doctor_index(instance.home)
    assert check["status"] == "fail"
    assert "4 vectors recorded in the database are missing from the index" in check["detail"]
    assert "medsearch index rebuild" in check["fix"]
    out = rebuild_cli(instance.home)
    assert "8 vectors" in out
    assert doctor_index(instance.home)["status"] == "ok"


def test_crash_after_db_delete_before_index_remove(instance, populate_instance):
    pats = populate_instance(instance, n_patients=2)
    sync(instance)
    gone = next(iter(pats))
    with instance.sessions() as s, s.begin():
        s.delete(s.scalar(select(Patient).where(Patient.pseudonym == gone)))
    check = doctor_index(instance.home)
    assert check["status"] == "fail" and "2 indexed vectors are not in the database" in check["detail"]
    forget_index(instance)  # a new process opening the index reconciles it
    index = get_index(instance)
    assert not set(pats[gone]["vector_ids"]) & set(index.ids().tolist())
    assert doctor_index(instance.home)["status"] == "ok"


def test_another_process_save_is_picked_up(instance, populate_instance):
    populate_instance(instance, n_patients=1, seed=0)
    first = get_index(instance)
    populate_instance(instance, n_patients=1, seed=1)
    rebuild_cli(instance.home)  # another process rewrites the file
    assert len(get_index(instance).ids()) == 4
    assert get_index(instance) is first


def test_tampered_index_fails_closed_and_rebuild_repairs(instance, populate_instance):
    populate_instance(instance, n_patients=2)
    sync(instance)
    path = index_path(instance)
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF
    path.write_bytes(bytes(data))
    check = doctor_index(instance.home)
    assert check["status"] == "fail" and "integrity" in check["detail"]
    assert "medsearch index rebuild" in check["fix"]
    forget_index(instance)
    with pytest.raises(IntegrityError):
        get_index(instance)
    rebuild_cli(instance.home)
    assert doctor_index(instance.home)["status"] == "ok"
    assert len(get_index(instance)) == 4


def test_wrong_master_key(instance, populate_instance, monkeypatch):
    populate_instance(instance, n_patients=1)
    sync(instance)
    forget_index(instance)
    monkeypatch.setenv("MEDSEARCH_MASTER_KEY", base64.b64encode(os.urandom(32)).decode())
    from medsearch.instance import open_instance

    other = open_instance(instance.home)
    with pytest.raises(KeyringError) as err:
        get_index(other)
    assert "master key" in err.value.problem and "MEDSEARCH_MASTER_KEY" in err.value.fix
    check = doctor_index(instance.home)
    assert check["status"] == "fail" and "master key id" in check["detail"]
    other.close()


def test_volume_without_embedding_is_reported(instance, populate_instance):
    populate_instance(instance, n_patients=1)
    sync(instance)
    with instance.sessions() as s, s.begin():
        v = s.scalars(select(Volume)).first()
        v.embedding = None
    forget_index(instance)
    check = doctor_index(instance.home)
    assert check["status"] == "ok"  # the index still holds it: nothing lost yet
    with instance.sessions() as s, s.begin():
        s.execute(delete(Volume).where(Volume.embedding.is_not(None)))
    assert np.array_equal(db_vector_ids(instance, with_embedding=False), db_vector_ids(instance))
    rebuild_cli(instance.home)
    check = doctor_index(instance.home)
    assert check["status"] == "fail" and "no stored embedding" in check["detail"]
    assert "re-encoded" in check["fix"]

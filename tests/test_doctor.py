import json

from click.testing import CliRunner
from sqlalchemy import text

from medsearch.cli import cli
from medsearch.store.db import downgrade


def doctor(home):
    result = CliRunner().invoke(cli, ["--home", str(home), "doctor", "--json"])
    return result.exit_code, json.loads(result.stdout) if result.stdout.startswith("{") else result.output


def check(report, name):
    return next(c for c in report["checks"] if c["name"] == name)


def test_missing_key_fails_with_fix(instance):
    (instance.keys_dir / "audit.key").unlink()
    code, report = doctor(instance.home)
    assert code == 1 and report["ok"] is False
    c = check(report, "keys")
    assert c["status"] == "fail" and "medsearch init" in c["fix"]


def test_unmigrated_database_fails_with_fix(instance):
    downgrade(instance.engine, "base")
    code, report = doctor(instance.home)
    assert code == 1
    c = check(report, "database")
    assert c["status"] == "fail" and "expected" in c["detail"] and "medsearch init" in c["fix"]


def test_unreachable_database_fails_with_fix(sqlite_instance):
    cfg = sqlite_instance.config_file
    cfg.write_text('[medsearch]\ndatabase_url = "postgresql://nobody@127.0.0.1:1/none"\n')
    code, report = doctor(sqlite_instance.home)
    assert code == 1
    c = check(report, "database")
    assert c["status"] == "fail" and "not reachable" in c["detail"] and "database_url" in c["fix"]


def test_encoded_vectors_without_index_fail(instance):
    with instance.engine.begin() as conn:
        conn.execute(text("INSERT INTO patients (id, pseudonym, created_at) VALUES (1, 'P', CURRENT_TIMESTAMP)"))
        conn.execute(text("INSERT INTO studies (id, pseudonym, patient_id, uid, created_at) "
                          "VALUES (1, 'S', 1, '2.25.1', CURRENT_TIMESTAMP)"))
        conn.execute(text("INSERT INTO series (id, pseudonym, study_id, uid, n_instances, created_at) "
                          "VALUES (1, 'R', 1, '2.25.2', 1, CURRENT_TIMESTAMP)"))
        conn.execute(text("INSERT INTO volumes (id, series_id, path, shape, spacing, sha256, status, vector_id, "
                          "created_at) VALUES (1, 1, 'v', '[1,1,1]', '[1,1,1]', 'x', 'encoded', 7, CURRENT_TIMESTAMP)"))
    code, report = doctor(instance.home)
    assert report["vectors"] == 1
    c = check(report, "index")
    assert code == 1 and c["status"] == "fail" and c["fix"]

"""Right to erasure: a patient's vectors, files, vault records and rows all go; others stay."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from medsearch.audit.log import verify_chain
from medsearch.cli import cli
from medsearch.errors import InputError, NotFoundError
from medsearch.index import forget_index, get_index, index_path, sync
from medsearch.index.erase import erase_patient
from medsearch.index.faiss_backend import FaissIndex
from medsearch.store.models import AuditEvent, Finding, Patient, Series, Study, VaultRecord, Volume


def count(inst, model, *where):
    with inst.sessions() as s:
        return s.scalar(select(func.count()).select_from(model).where(*where))


def test_erase_removes_everything_of_one_patient(instance, populate_instance):
    pats = populate_instance(instance, n_patients=3, series_per_study=2)
    sync(instance)
    victim, keep = list(pats)[0], list(pats)[1:]
    v = pats[victim]
    with instance.sessions() as s, s.begin():  # a predicted finding on one of the victim's volumes
        vol = s.scalar(select(Volume).where(Volume.vector_id == v["vector_ids"][0]))
        s.add(Finding(volume_id=vol.id, finding_type="nodule", probability=0.9))
    extra = instance.data_dir / "slices" / v["series"][0]  # a rendered-slices folder named after the series
    extra.mkdir(parents=True)
    (extra / "12.png").write_bytes(b"png")
    old_file = index_path(instance).read_bytes()

    report = erase_patient(instance, victim, actor="dpo", reason="erasure request 42")

    assert (report.studies, report.series, report.vectors, report.vault_records) == (1, 2, 2, 4)
    assert report.files == 5  # 2 volumes, 2 thumbnails, 1 folder
    # database rows
    assert count(instance, Patient, Patient.pseudonym == victim) == 0
    assert count(instance, Study, Study.pseudonym.in_(v["studies"])) == 0
    assert count(instance, Series, Series.pseudonym.in_(v["series"])) == 0
    assert count(instance, Volume, Volume.vector_id.in_(v["vector_ids"])) == 0
    assert count(instance, Finding) == 0
    assert count(instance, VaultRecord, VaultRecord.owner_pseudonym.in_([victim, *v["studies"], *v["series"]])) == 0
    assert count(instance, VaultRecord) == 2 * 4  # the other two patients keep theirs
    # files
    for sp in v["series"]:
        assert not (instance.data_dir / "volumes" / f"{sp}.npy").exists()
        assert not (instance.data_dir / "thumbs" / f"{sp}.png").exists()
    assert not extra.exists()
    for other in keep:
        for sp in pats[other]["series"]:
            assert (instance.data_dir / "volumes" / f"{sp}.npy").exists()
    # index: in memory, and in the saved file (re-encrypted without the vectors)
    index = get_index(instance)
    assert not set(v["vector_ids"]) & set(index.ids().tolist())
    assert len(index) == 4
    assert index_path(instance).read_bytes() != old_file
    saved = FaissIndex(path=index_path(instance), master_key=instance.keyring.master_key)
    saved.load()
    assert not set(v["vector_ids"]) & set(saved.ids().tolist())
    # audit
    with instance.sessions() as s:
        row = s.scalars(select(AuditEvent).where(AuditEvent.event_type == "admin")).one()
    payload = json.loads(row.payload)
    assert row.actor == "dpo" and payload["action"] == "erase_patient" and payload["target"] == victim
    assert payload["detail"]["vectors"] == 2 and payload["detail"]["reason"] == "erasure request 42"
    assert verify_chain(instance.sessions, instance.keyring.secret("audit")).ok


def test_erase_survives_crash_before_index_save(instance, populate_instance, monkeypatch):
    pats = populate_instance(instance, n_patients=2)
    sync(instance)
    victim = list(pats)[0]

    def crash(self, ids):
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(FaissIndex, "remove", crash)
    with pytest.raises(KeyboardInterrupt):
        erase_patient(instance, victim, actor="dpo", reason="request")
    monkeypatch.undo()
    assert count(instance, Patient, Patient.pseudonym == victim) == 0  # the DB deletion committed
    forget_index(instance)
    index = get_index(instance)  # the next open drops the vectors the DB no longer lists
    assert not set(pats[victim]["vector_ids"]) & set(index.ids().tolist())
    saved = FaissIndex(path=index_path(instance), master_key=instance.keyring.master_key)
    saved.load()
    assert len(saved) == 2


@pytest.mark.parametrize("patient, reason, error", [
    ("NOPE", "request", NotFoundError),
    ("PAT0x0", "", InputError),
    ("PAT0x0", "   ", InputError),
])
def test_erase_bad_input(instance, populate_instance, patient, reason, error):
    populate_instance(instance, n_patients=1)
    with pytest.raises(error) as err:
        erase_patient(instance, patient, actor="dpo", reason=reason)
    assert err.value.fix
    assert count(instance, Patient) == 1


def test_erase_cli(sqlite_instance, populate_instance):
    pats = populate_instance(sqlite_instance, n_patients=2)
    sync(sqlite_instance)
    victim = list(pats)[0]
    runner = CliRunner()
    home = ["--home", str(sqlite_instance.home)]
    no = runner.invoke(cli, [*home, "erase", victim, "--reason", "request 7"], input="n\n")
    assert no.exit_code != 0 and count(sqlite_instance, Patient) == 2
    ok = runner.invoke(cli, [*home, "erase", victim, "--reason", "request 7", "--yes"])
    assert ok.exit_code == 0, ok.output
    assert "2 vectors" in ok.output and count(sqlite_instance, Patient) == 1
    missing = runner.invoke(cli, [*home, "erase", victim, "--reason", "again", "--yes"])
    assert missing.exit_code == 8 and "pseudonym" in missing.output
    status = runner.invoke(cli, [*home, "index", "status", "--json"])
    assert json.loads(status.stdout)["count"] == 2

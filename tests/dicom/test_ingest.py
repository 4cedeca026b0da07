"""Ingest semantics: stored once, transactional under SIGKILL, quarantined with reasons, encoded later."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pydicom
import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from medsearch.cli import cli
from medsearch.dicom.ingest import encode_pending, ingest_paths
from medsearch.store.models import Patient, Quarantine, Series, Study, VaultRecord, Volume


def _counts(inst) -> dict:
    with inst.sessions() as session:
        return {m.__name__: session.scalar(select(func.count()).select_from(m))
                for m in (Patient, Study, Series, Volume, VaultRecord, Quarantine)}


def assert_consistent(inst) -> None:
    """Every series has its volume, every volume its file (hash verified) and thumbnail; no temp files."""
    with inst.sessions() as session:
        for series in session.scalars(select(Series)).all():
            vol = series.volume
            assert vol is not None, "a series without its volume"
            data = (inst.data_dir / vol.path).read_bytes()
            assert hashlib.sha256(data).hexdigest() == vol.sha256
            assert np.load(inst.data_dir / vol.path).shape == tuple(vol.shape)
            assert (inst.data_dir / "thumbs" / f"{series.pseudonym}.png").exists()
            assert series.study.patient is not None
    assert not list(inst.data_dir.rglob("*.tmp"))


def test_ingest_stores_once_and_is_idempotent(instance, make_series, tmp_path):
    make_series(4, folder=tmp_path / "in" / "a")
    make_series(3, folder=tmp_path / "in" / "b", patient_id="MRN0002")
    (tmp_path / "in" / "notes.txt").write_text("not dicom")
    first = ingest_paths(instance, [tmp_path / "in"], encode=False)
    assert first.counts() == {"files": {"ingested": 7, "not_dicom": 1}, "series": {"stored": 2}}
    counts = _counts(instance)
    assert counts["Series"] == counts["Volume"] == 2 and counts["Patient"] == 2
    second = ingest_paths(instance, [tmp_path / "in"], encode=False)
    assert second.counts()["series"] == {"already_ingested": 2}
    assert _counts(instance) == counts
    assert_consistent(instance)
    with instance.sessions() as session:
        vol = session.scalars(select(Volume)).first()
        assert vol.status == "stored" and vol.embedding is None and len(vol.affine) == 4
        arr = np.load(instance.data_dir / vol.path)
    assert arr.dtype == np.int16 and arr.shape[1:] == (16, 16)
    assert arr[0, 0, 0] == -1024 and arr[1, 0, 0] == -1014  # slice order along the normal, HU


def test_reveal_after_ingest_names_the_patient_in_the_audit(sqlite_instance, make_series, tmp_path):
    from medsearch.dicom.vault import reveal
    from medsearch.store.models import AuditEvent

    make_series(3, folder=tmp_path / "in", accession="ACC-4242", patient_id="MRN-77")
    ingest_paths(sqlite_instance, [tmp_path / "in"], encode=False)
    with sqlite_instance.sessions() as session:
        study = session.scalars(select(Study)).one()
        study_pseudonym, patient_pseudonym = study.pseudonym, study.patient.pseudonym
    got = reveal(sqlite_instance, "study", study_pseudonym, ["AccessionNumber", "StudyDate"], "bob", "tumour board")
    assert got == {"AccessionNumber": "ACC-4242", "StudyDate": "20240102"}
    assert reveal(sqlite_instance, "patient", patient_pseudonym, ["PatientID"], "bob", "x") == {"PatientID": "MRN-77"}
    with sqlite_instance.sessions() as session:
        event = session.scalars(select(AuditEvent).where(AuditEvent.event_type == "reidentify")).first()
    assert patient_pseudonym in event.payload and "ACC-4242" not in event.payload


def test_second_study_of_a_patient_shares_patient_and_date_shift(sqlite_instance, make_series, tmp_path):
    make_series(3, folder=tmp_path / "s1", study_date="20240102")
    make_series(3, folder=tmp_path / "s2", study_date="20240301", patient_id="MRN0001 ")
    ingest_paths(sqlite_instance, [tmp_path], encode=False)
    with sqlite_instance.sessions() as session:
        dates = sorted(session.scalars(select(Study.study_date)).all())
        assert session.scalar(select(func.count()).select_from(Patient)) == 1
    assert (dates[1] - dates[0]).days == 59 and dates[0].year < 2024


@pytest.mark.parametrize("kwargs, zs, outcome, reason", [
    ({"modality": "US"}, None, "rejected", "Modality US is not accepted"),
    ({"modality": "QZX99"}, None, "rejected", "An unlisted modality"),
    ({}, [0.0, 2.5, 7.5, 10.0], "quarantined", "missing 1 slice"),
    ({"sop_class": "1.2.840.10008.5.1.4.1.1.7"}, None, "quarantined", "secondary capture"),
])
def test_unsuitable_input_is_quarantined_with_reason(sqlite_instance, make_series, tmp_path, kwargs, zs,
                                                     outcome, reason):
    paths = make_series(4, folder=tmp_path / "in", zs=zs, **kwargs)
    report = ingest_paths(sqlite_instance, [tmp_path / "in"])
    assert {f.outcome for f in report.files} == {outcome}
    assert all(reason in f.reason for f in report.files)
    with sqlite_instance.sessions() as session:
        rows = session.scalars(select(Quarantine)).all()
    assert {r.file_sha256 for r in rows} == {hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}
    assert all(reason in r.reason for r in rows)
    assert _counts(sqlite_instance)["Series"] == 0
    assert "QZX99" not in report.summary() + repr(report.to_dict())


def test_completed_series_releases_its_quarantine(sqlite_instance, make_series, tmp_path):
    paths = sorted(make_series(4, folder=tmp_path / "in"))
    held = tmp_path / "held.dcm"
    paths[2].rename(held)  # a gap: the series is quarantined
    report = ingest_paths(sqlite_instance, [tmp_path / "in"], encode=False)
    assert report.counts()["series"] == {"quarantined": 1}
    held.rename(paths[2])  # the missing instance arrives
    report = ingest_paths(sqlite_instance, [tmp_path / "in"], encode=False)
    assert report.counts()["series"] == {"stored": 1}
    assert _counts(sqlite_instance)["Quarantine"] == 0


KILLER = textwrap.dedent("""
    import sys, time
    from medsearch.instance import Instance
    import medsearch.dicom.ingest as ingest
    import medsearch.dicom.prepare as prepare
    real = prepare.atomic_write
    calls = []
    def slow_write(path, data):
        real(path, data)
        calls.append(path)
        if len(calls) == 4:  # second series: volume and thumbnail written, database not committed
            print("READY", flush=True)
            time.sleep(60)
    prepare.atomic_write = slow_write
    ingest.ingest_paths(Instance(sys.argv[1]), [sys.argv[2]], encode=False)
""")


def test_sigkill_mid_ingest_then_rerun_is_consistent(instance, make_series, tmp_path):
    for i in range(3):
        make_series(3, folder=tmp_path / "in" / f"s{i}", patient_id=f"MRN{i}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDSEARCH_")}
    with subprocess.Popen([sys.executable, "-c", KILLER, str(instance.home), str(tmp_path / "in")],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True) as proc:
        deadline = time.monotonic() + 90
        line = ""
        while time.monotonic() < deadline and "READY" not in line:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
        if "READY" not in line:
            proc.kill()
            pytest.fail("the ingest subprocess never reached the kill point: " + proc.stderr.read()[-2000:])
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    counts = _counts(instance)
    assert counts["Series"] == counts["Volume"] == 1  # the first series, complete; nothing half-stored
    assert counts["VaultRecord"] > 0
    assert_consistent(instance)
    report = ingest_paths(instance, [tmp_path / "in"], encode=False)
    assert report.counts()["series"] == {"already_ingested": 1, "stored": 2}
    counts = _counts(instance)
    assert counts["Series"] == counts["Volume"] == counts["Study"] == counts["Patient"] == 3
    assert_consistent(instance)
    files = sorted(p.name for p in (instance.data_dir / "volumes").iterdir())
    assert len(files) == 3  # the orphan file of the killed run was completed, not duplicated


def test_encode_pending_without_a_model_says_why(sqlite_instance, make_series, tmp_path):
    make_series(3, folder=tmp_path / "in")
    ingest_paths(sqlite_instance, [tmp_path / "in"], encode=False)
    result = encode_pending(sqlite_instance)
    assert result["pending"] == 1
    if result["not_encoded_because"] is None:  # a model is installed: the volume got encoded
        with sqlite_instance.sessions() as session:
            vol = session.scalars(select(Volume)).one()
        assert vol.status == "encoded" and vol.embedding is not None
    else:
        assert result["encoded"] == 0


def test_cli_deid_and_ingest(sqlite_instance, make_series, tmp_path):
    make_series(3, folder=tmp_path / "in", patient_name="DOE^JOHN")
    (tmp_path / "in" / "readme.txt").write_text("hello")
    home = str(sqlite_instance.home)
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["--home", home, "deid", str(tmp_path / "in"), str(out)])
    assert result.exit_code == 0, result.output
    assert "4 file(s): 3 deidentified, 1 not_dicom" in result.output and "DOE" not in result.output
    written = sorted(out.rglob("*"))
    assert not any(p.name == "readme.txt" for p in written)
    dcm = [p for p in written if p.suffix == ".dcm"]
    assert len(dcm) == 3 and all(pydicom.dcmread(p).PatientIdentityRemoved == "YES" for p in dcm)
    result = CliRunner().invoke(cli, ["--home", home, "ingest", str(tmp_path / "in")])
    assert result.exit_code == 0 and ("1 stored" in result.output or "1 encoded" in result.output), result.output
    result = CliRunner().invoke(cli, ["--home", home, "ingest", "--json", str(tmp_path / "in")])
    assert result.exit_code == 0 and '"already_ingested": 1' in result.output
    result = CliRunner().invoke(cli, ["--home", home, "ingest"])
    assert result.exit_code == 2 and "--encode-pending" in result.output
    result = CliRunner().invoke(cli, ["--home", home, "deid", str(tmp_path / "in"), str(tmp_path / "in" / "x")])
    assert result.exit_code == 7 and "inside the source" in result.output


def test_parallel_ingest_equals_in_process(make_series, tmp_path):
    from medsearch.instance import Instance

    for i in range(2):
        make_series(34, folder=tmp_path / "in" / f"s{i}", patient_id=f"MRN{i}")
    stored = {}
    for workers in (1, 2):
        inst = Instance.create(tmp_path / f"home{workers}")
        if workers == 2:  # both homes share the pseudonym key, so pseudonyms can be compared
            shutil.copy(tmp_path / "home1" / "keys" / "pseudonym.key", inst.keys_dir / "pseudonym.key")
        report = ingest_paths(inst, [tmp_path / "in"], encode=False, workers=workers)
        assert report.counts() == {"files": {"ingested": 68}, "series": {"stored": 2}}
        with inst.sessions() as session:
            stored[workers] = sorted((s.pseudonym, s.volume.sha256) for s in session.scalars(select(Series)))
        inst.close()
    assert stored[1] == stored[2]

"""Fixtures for the web tests: an instance with a tiny stored archive, users of every role, clients."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import numpy as np
import pytest

from medsearch import accounts
from medsearch.store.models import Finding, Patient, Series, Study, Volume

PASSWORD = "correct-horse-battery"
ROLES = ("radiologist", "compliance", "admin", "pacs")
STUDY = "st0123456789abcdef"
SERIES = "se0123456789abcdef"
PATIENT = "pa0123456789abcdef"
RESTRICTED_PATIENT = "pavip000000000000"
RESTRICTED_STUDY = "stvip000000000000"
RESTRICTED_SERIES = "sevip000000000000"
DEPTH, SIZE = 24, 64
WORLD_SEED = 7_301  # its three studies hold nodules in the right and left upper lobes
#: The "original" StudyInstanceUID kept in the vault (what break-glass reveals).
ORIGINAL_UID_PREFIX = "1.2.840.99999.1."


def _volume() -> np.ndarray:
    z, y, x = np.mgrid[:DEPTH, :SIZE, :SIZE]
    vol = np.full((DEPTH, SIZE, SIZE), -800, dtype=np.int16)  # aerated lung
    vol[(z - 12) ** 2 + (y - 30) ** 2 + (x - 20) ** 2 < 36] = 40  # a nodule
    vol[:, :, :4] = 400
    return vol


def add_study(inst, patient: str, study: str, series: str) -> None:
    from medsearch.dicom import vault
    from medsearch.dicom.render import render_thumbnail

    vol = _volume()
    vdir, tdir = inst.data_dir / "volumes", inst.data_dir / "thumbs"
    vdir.mkdir(parents=True, exist_ok=True)
    tdir.mkdir(parents=True, exist_ok=True)
    np.save(vdir / f"{series}.npy", vol)
    (tdir / f"{series}.png").write_bytes(render_thumbnail(vol))
    with inst.sessions() as s, s.begin():
        p = Patient(pseudonym=patient)
        st = Study(pseudonym=study, patient=p, uid=f"2.25.{int(hashlib.sha256(study.encode()).hexdigest()[:16], 16)}",
                   study_date=dt.date(2020, 3, 4), modality="CT", body_part="CHEST")
        se = Series(pseudonym=series, study=st, uid=f"2.25.{int(hashlib.sha256(series.encode()).hexdigest()[:16], 16)}",
                    modality="CT", body_part="CHEST", n_instances=DEPTH)
        v = Volume(series=se, path=f"volumes/{series}.npy", shape=[DEPTH, SIZE, SIZE], spacing=[2.0, 1.0, 1.0],
                   sha256="0" * 64, status="encoded")
        v.findings.append(Finding(finding_type="nodule", site="left lower lobe", density="solid", size_mm=12.0,
                                  probability=0.93, key_slice=12, bbox=[14, 24, 26, 36]))
        s.add_all([p, st, se, v])
        vault.store(s, vault.MasterKeys(inst), "study", study,
                    {"StudyInstanceUID": ORIGINAL_UID_PREFIX + study[-4:], "AccessionNumber": "ACC-" + study[-4:]})


def make_web_instance(home, **settings):
    from medsearch.instance import Instance

    inst = Instance.create(home, settings={"restricted_patients": [RESTRICTED_PATIENT],
                                           "viewer_url_template":
                                               "https://pacs.example/viewer?StudyInstanceUID={study_uid}&acc={accession}",
                                           **settings},
                           env={})
    add_study(inst, PATIENT, STUDY, SERIES)
    add_study(inst, RESTRICTED_PATIENT, RESTRICTED_STUDY, RESTRICTED_SERIES)
    for role in ROLES:
        accounts.add_user(inst, role, PASSWORD, role, actor="test")
    return inst


@pytest.fixture(scope="session")
def web_instance_factory():
    """make_web_instance(home, **settings): an instance with the tiny archive and one user per role."""
    return make_web_instance


@pytest.fixture(scope="module")
def web_inst(tmp_path_factory):
    """Shared by a module's tests (read-mostly: building it costs seconds)."""
    inst = make_web_instance(tmp_path_factory.mktemp("web") / "instance")
    yield inst
    inst.close()


@pytest.fixture
def fresh_inst(home):
    """A private instance for tests that change accounts or settings."""
    inst = make_web_instance(home)
    yield inst
    inst.close()


def _app(inst):
    from medsearch.web import create_app

    return create_app({"MEDSEARCH_INSTANCE": inst, "TESTING": True})


@pytest.fixture(scope="module")
def app(web_inst):
    return _app(web_inst)


@pytest.fixture
def fresh_app(fresh_inst):
    return _app(fresh_inst)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture(scope="module")
def tokens(web_inst):
    return {role: accounts.create_token(web_inst, f"tok-{role}", role, 30, actor="test") for role in ROLES}


def login_as(client, name: str) -> str:
    """Start a session for ``name`` without the password round trip; return its CSRF token."""
    with client.session_transaction() as sess:
        sess.clear()
        now = time.time()
        sess.update(user=name, sid=f"sid-{name}-{now}", csrf=f"csrf-{name}", seen=now, started=now)
        sess.permanent = True
    return f"csrf-{name}"


def csrf_from(html: str) -> str:
    import re

    m = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert m, "no csrf_token field in the form"
    return m.group(1)


@pytest.fixture
def login():
    return login_as


@pytest.fixture
def csrf():
    return csrf_from


@pytest.fixture(scope="session", autouse=True)
def _cheap_password_hashing():
    """argon2id with small parameters: the tests check behaviour, not the cost (production keeps the defaults)."""
    from argon2 import PasswordHasher

    saved = accounts._hasher
    accounts._hasher = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    yield
    accounts._hasher = saved


class _Viewer(BaseHTTPRequestHandler):
    """Stands in for the hospital's PACS web viewer, which 'Open in PACS' redirects to."""

    opened: list[str] = []

    def do_GET(self):  # noqa: N802 - http.server's naming
        _Viewer.opened.append(self.path)
        body = b"<!doctype html><title>PACS viewer</title><h1>PACS viewer</h1>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="session")
def viewer():
    """A stand-in PACS web viewer: .url, and .opened (the paths it was asked for)."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Viewer)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield SimpleNamespace(url=f"http://127.0.0.1:{srv.server_port}", opened=_Viewer.opened)
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="session")
def world(tmp_path_factory, viewer):
    """A real world: a synthetic archive (3 studies) ingested through de-identification, the encoder
    (the real network, seeded and untrained) and the index.  .inst, .labels, .archive."""
    import torch

    from medsearch import accounts
    from medsearch.dicom.ingest import ingest_paths
    from medsearch.instance import Instance
    from medsearch.models.dual import DualEncoder
    from medsearch.models.train import save_model
    from medsearch.synth.archive import generate_archive

    root = tmp_path_factory.mktemp("browser")
    generate_archive(root / "archive", 3, WORLD_SEED, progress=False, workers=1)
    torch.manual_seed(WORLD_SEED)
    save_model(DualEncoder(), root / "model", {"note": "untrained, for the browser flow"})
    inst = Instance.create(root / "home", env={}, settings={
        "model_dir": str(root / "model"), "model_int8": False,
        "viewer_url_template": viewer.url + "/viewer?StudyInstanceUID={study_uid}&acc={accession}"})
    report = ingest_paths(inst, [root / "archive" / "dicom"])
    assert report.encoding is None, report.summary()
    for role in ("radiologist", "compliance"):
        accounts.add_user(inst, role, PASSWORD, role, actor="test")
    labels = [json.loads(line) for line in (root / "archive" / "labels.jsonl").read_text().splitlines()]
    yield SimpleNamespace(inst=inst, labels=labels, archive=root / "archive")
    inst.close()


@pytest.fixture(scope="session")
def study_adder():
    """add_study(inst, patient, study, series): one stored study with a volume, a finding and vault records."""
    return add_study

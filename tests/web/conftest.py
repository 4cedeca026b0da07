"""Fixtures for the web tests: an instance with a tiny stored archive, users of every role, clients."""

from __future__ import annotations

import datetime as dt
import hashlib
import time

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

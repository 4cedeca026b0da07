"""Shared fixtures.

``db_url`` runs a test on SQLite *and* on the PostgreSQL server of this machine.
Each test session creates its own PostgreSQL database and drops it at the end,
so concurrent runs never interfere.  When PostgreSQL is unreachable the
PostgreSQL-parametrized tests **fail** with a message saying so: they never
pass silently.  (Set MEDSEARCH_TEST_POSTGRES_URL to point elsewhere.)
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

PG_ADMIN_URL = os.environ.get("MEDSEARCH_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    """Tests must not pick up the developer's instance or settings."""
    for key in list(os.environ):
        if key.startswith("MEDSEARCH_") and key != "MEDSEARCH_TEST_POSTGRES_URL":
            monkeypatch.delenv(key)


@pytest.fixture(scope="session")
def postgres_server_url():
    """URL of a fresh database for this test session, dropped afterwards."""
    import psycopg
    from sqlalchemy.engine import make_url

    admin = make_url(PG_ADMIN_URL)
    name = f"medsearch_test_{secrets.token_hex(6)}"
    conninfo = f"host={admin.host} port={admin.port or 5432} user={admin.username} dbname={admin.database}"
    try:
        conn = psycopg.connect(conninfo, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL is NOT reachable at {admin.host}:{admin.port} ({exc.__class__.__name__}). "
            "The PostgreSQL tests cannot run: start it with "
            "'pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start' "
            "or set MEDSEARCH_TEST_POSTGRES_URL.", pytrace=False)
    with conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield admin.set(database=name).render_as_string(hide_password=False).replace(
        "postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_url(postgres_server_url):
    """A clean schema state for one test: drop every table in the session database."""
    from sqlalchemy import text

    from medsearch.store.db import make_engine

    engine = make_engine(postgres_server_url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    return postgres_server_url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'test.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def home(tmp_path) -> Path:
    return tmp_path / "instance"


@pytest.fixture
def instance(home, db_url):
    """A fresh, migrated instance on each database."""
    from medsearch.instance import Instance

    inst = Instance.create(home, settings={"database_url": db_url})
    yield inst
    inst.close()


@pytest.fixture
def sqlite_instance(home):
    from medsearch.instance import Instance

    inst = Instance.create(home)
    yield inst
    inst.close()


@pytest.fixture
def tls_files(tmp_path):
    """A self-signed certificate (CN and SAN 'localhost', usable as its own CA) and its key, as PEM files."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    folder = tmp_path / "tls"
    folder.mkdir()
    cert_file, key_file = folder / "tls.crt", folder / "tls.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file

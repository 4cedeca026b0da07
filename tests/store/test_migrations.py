from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from medsearch.store.db import current_revision, downgrade, head_revision, make_engine, normalise_url, upgrade
from medsearch.store.models import Base

TABLES = {"patients", "studies", "series", "volumes", "findings", "vault_records", "users", "api_tokens",
          "audit_events", "ingest_jobs", "quarantine"}


def test_upgrade_downgrade_upgrade(db_url):
    engine = make_engine(db_url)
    upgrade(engine)
    assert current_revision(engine) == head_revision()
    assert TABLES <= set(inspect(engine).get_table_names())
    downgrade(engine, "base")
    assert current_revision(engine) is None
    assert not (TABLES & set(inspect(engine).get_table_names()))
    upgrade(engine)
    assert current_revision(engine) == head_revision()
    engine.dispose()


def test_migrations_match_models(db_url):
    """A model change without a migration (or the reverse) fails here."""
    engine = make_engine(db_url)
    upgrade(engine)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []


def test_postgresql_url_form_maps_to_psycopg3():
    assert normalise_url("postgresql://user@host:5432/db") == "postgresql+psycopg://user@host:5432/db"
    assert normalise_url("sqlite:///x.db") == "sqlite:///x.db"

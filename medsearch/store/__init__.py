"""Relational storage: SQLAlchemy models, engine set-up and Alembic migrations."""

"""SQLAlchemy 2 models.

Nothing here holds PHI in plaintext: patients, studies and series are known
by keyed pseudonyms, dates are shifted, and the original identifiers live only
as ciphertext in :class:`VaultRecord`.  Any change here needs a matching Alembic
migration; ``tests/store/test_migrations.py`` fails when they drift apart.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    JSON, Boolean, Date, DateTime, Float, ForeignKey, Index, Integer, LargeBinary, String, Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class Patient(Base):
    __tablename__ = "patients"
    id: Mapped[int] = mapped_column(primary_key=True)
    pseudonym: Mapped[str] = mapped_column(String(64), unique=True)
    sex: Mapped[str | None] = mapped_column(String(1))
    age_years: Mapped[str | None] = mapped_column(String(4))  # "090+" style cap, Retain Patient Characteristics
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    studies: Mapped[list[Study]] = relationship(back_populates="patient", cascade="all, delete-orphan")


class Study(Base):
    __tablename__ = "studies"
    id: Mapped[int] = mapped_column(primary_key=True)
    pseudonym: Mapped[str] = mapped_column(String(64), unique=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id", ondelete="CASCADE"), index=True)
    uid: Mapped[str] = mapped_column(String(64), unique=True)  # the de-identified StudyInstanceUID
    study_date: Mapped[dt.date | None] = mapped_column(Date)  # shifted
    modality: Mapped[str | None] = mapped_column(String(16))
    body_part: Mapped[str | None] = mapped_column(String(32))
    description: Mapped[str | None] = mapped_column(String(128))  # cleaned
    #: hospital site (not anatomy) the study came from; a user with allowed_sites sees only those sites
    site: Mapped[str | None] = mapped_column(String(64), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    patient: Mapped[Patient] = relationship(back_populates="studies")
    series: Mapped[list[Series]] = relationship(back_populates="study", cascade="all, delete-orphan")


class Series(Base):
    __tablename__ = "series"
    id: Mapped[int] = mapped_column(primary_key=True)
    pseudonym: Mapped[str] = mapped_column(String(64), unique=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    uid: Mapped[str] = mapped_column(String(64), unique=True)  # the de-identified SeriesInstanceUID
    modality: Mapped[str | None] = mapped_column(String(16))
    body_part: Mapped[str | None] = mapped_column(String(32))
    description: Mapped[str | None] = mapped_column(String(128))
    n_instances: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    study: Mapped[Study] = relationship(back_populates="series")
    volume: Mapped[Volume | None] = relationship(back_populates="series", cascade="all, delete-orphan",
                                                 uselist=False)


class Volume(Base):
    """An assembled HU volume of one series, and its link to the index vector."""

    __tablename__ = "volumes"
    id: Mapped[int] = mapped_column(primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"), unique=True)
    path: Mapped[str] = mapped_column(String(512))  # relative to the instance data_dir
    shape: Mapped[list] = mapped_column(JSON)  # [z, y, x]
    spacing: Mapped[list] = mapped_column(JSON)  # [z, y, x] in mm
    affine: Mapped[list | None] = mapped_column(JSON)  # 4x4 voxel (x, y, z) -> patient LPS mm
    sha256: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="stored")  # stored | encoded | failed
    vector_id: Mapped[int | None] = mapped_column(Integer, unique=True)
    model_version: Mapped[str | None] = mapped_column(String(64))
    embedding: Mapped[bytes | None] = mapped_column(LargeBinary)  # float32, kept to rebuild the index
    encoded_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    series: Mapped[Series] = relationship(back_populates="volume")
    findings: Mapped[list[Finding]] = relationship(back_populates="volume", cascade="all, delete-orphan")


class Finding(Base):
    """A finding predicted by the model's attribute heads."""

    __tablename__ = "findings"
    id: Mapped[int] = mapped_column(primary_key=True)
    volume_id: Mapped[int] = mapped_column(ForeignKey("volumes.id", ondelete="CASCADE"), index=True)
    finding_type: Mapped[str] = mapped_column(String(32))
    site: Mapped[str | None] = mapped_column(String(32))
    laterality: Mapped[str | None] = mapped_column(String(16))
    density: Mapped[str | None] = mapped_column(String(16))
    size_mm: Mapped[float | None] = mapped_column(Float)
    probability: Mapped[float] = mapped_column(Float)
    key_slice: Mapped[int | None] = mapped_column(Integer)
    bbox: Mapped[list | None] = mapped_column(JSON)  # [x0, y0, x1, y1] on the key slice
    volume: Mapped[Volume] = relationship(back_populates="findings")


class VaultRecord(Base):
    """An original identifier, AES-256-GCM encrypted under a wrapped data key.

    ``aad`` binding: the ciphertext is bound to (owner_kind, owner_pseudonym,
    field), so a ciphertext copied to another row fails to decrypt.
    """

    __tablename__ = "vault_records"
    __table_args__ = (UniqueConstraint("owner_kind", "owner_pseudonym", "field"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    owner_kind: Mapped[str] = mapped_column(String(16))  # patient | study | series
    owner_pseudonym: Mapped[str] = mapped_column(String(64), index=True)
    field: Mapped[str] = mapped_column(String(32))
    key_id: Mapped[str] = mapped_column(String(32))  # id of the master key that wrapped the data key
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary)
    nonce: Mapped[bytes] = mapped_column(LargeBinary)
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(256))
    role: Mapped[str] = mapped_column(String(16))  # radiologist | compliance | admin | pacs
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    allowed_sites: Mapped[list | None] = mapped_column(JSON)
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)


class ApiToken(Base):
    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    token_hash: Mapped[str] = mapped_column(String(128), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)


class AuditEvent(Base):
    """Append-only; each row chains to the previous one (see medsearch.audit)."""

    __tablename__ = "audit_events"
    id: Mapped[int] = mapped_column(primary_key=True)
    ts: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    event_type: Mapped[str] = mapped_column(String(32), index=True)
    actor: Mapped[str] = mapped_column(String(64), index=True)
    outcome: Mapped[str] = mapped_column(String(16))
    payload: Mapped[str] = mapped_column(Text)  # canonical JSON
    prev_hash: Mapped[str] = mapped_column(String(64), unique=True)
    hash: Mapped[str] = mapped_column(String(64))
    mac: Mapped[str] = mapped_column(String(64))


class IngestJob(Base):
    __tablename__ = "ingest_jobs"
    __table_args__ = (Index("ix_ingest_jobs_status_next", "status", "next_attempt_at"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    source: Mapped[str] = mapped_column(String(16))  # cli | scp | stow | pull
    spool_path: Mapped[str] = mapped_column(String(512), unique=True)
    status: Mapped[str] = mapped_column(String(16), default="queued")  # queued | running | done | dead
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)  # an error message, never PHI
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))  # queued: not before; running: lease end
    claimed_by: Mapped[str | None] = mapped_column(String(64))  # claim token of the worker holding the lease
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    updated_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class Quarantine(Base):
    """Input that was not ingested, with the reason (no identifiers)."""

    __tablename__ = "quarantine"
    id: Mapped[int] = mapped_column(primary_key=True)
    file_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)

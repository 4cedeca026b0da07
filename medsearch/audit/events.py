"""Typed audit events.

Each event is a frozen dataclass; its fields become the JSON payload.  Payloads
hold pseudonyms, never original identifiers: the only place an original
identifier appears is the vault, and a re-identification event records *that*
it happened (who, why, which study pseudonym), not the value revealed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import ClassVar


@dataclass(frozen=True)
class AuditEvent:
    actor: str
    outcome: str = "success"  # success | failure
    event_type: ClassVar[str] = "event"

    def payload(self) -> dict:
        data = asdict(self)
        data.pop("actor")
        data.pop("outcome")
        return data


@dataclass(frozen=True)
class LoginEvent(AuditEvent):
    method: str = "password"  # password | token
    remote_addr: str = ""
    event_type: ClassVar[str] = "login"


@dataclass(frozen=True)
class SearchEvent(AuditEvent):
    query: str = ""
    filters: dict = field(default_factory=dict)
    result_count: int = 0
    results: list = field(default_factory=list)  # study pseudonyms
    event_type: ClassVar[str] = "search"


@dataclass(frozen=True)
class StudyViewEvent(AuditEvent):
    study: str = ""  # study pseudonym
    patient: str = ""
    event_type: ClassVar[str] = "study_view"


@dataclass(frozen=True)
class ReidentifyEvent(AuditEvent):
    """A decryption from the vault: who, why, which record."""

    reason: str = ""
    owner_kind: str = ""
    owner: str = ""  # pseudonym of the patient/study/series
    fields: list = field(default_factory=list)
    patient: str = ""
    event_type: ClassVar[str] = "reidentify"


@dataclass(frozen=True)
class ExportEvent(AuditEvent):
    what: str = ""
    format: str = ""
    count: int = 0
    event_type: ClassVar[str] = "export"


@dataclass(frozen=True)
class AdminEvent(AuditEvent):
    action: str = ""
    target: str = ""
    detail: dict = field(default_factory=dict)
    event_type: ClassVar[str] = "admin"


@dataclass(frozen=True)
class IngestEvent(AuditEvent):
    source: str = ""
    counts: dict = field(default_factory=dict)
    event_type: ClassVar[str] = "ingest"


EVENT_TYPES = {cls.event_type: cls for cls in
               (LoginEvent, SearchEvent, StudyViewEvent, ReidentifyEvent, ExportEvent, AdminEvent, IngestEvent)}

"""The audit log: typed events, one ``track_event()``, a verifiable hash chain."""

from medsearch.audit.events import AuditEvent  # noqa: F401
from medsearch.audit.log import track_event, verify_chain  # noqa: F401

"""Audit export: CSV, JSON and DICOM ATNA (PS3.15 A.5) audit messages.

The ATNA form writes one ``<AuditMessage>`` per line, each a complete XML
document following the DICOM audit message schema (PS3.15 A.5.1), the framing
a syslog collector also receives (see :mod:`medsearch.audit.syslog`).  Event
mapping (PS3.15 A.5.3 / CID 400-403):

========== ============================ =========================================
event      EventID                      EventTypeCode
========== ============================ =========================================
login      110114 User Authentication   110122 Login / 110123 Logout
search     110112 Query
study_view 110110 Patient Record
reidentify 110110 Patient Record         110127 Emergency Override Started
export     110106 Export
admin      110113 Security Alert         110137 User Security Attributes Changed /
                                        110136 Security Roles Changed /
                                        110131 Software Configuration (config.change)
app.*      110100 Application Activity   110120 Application Start / 110121 Stop
ingest     110107 Import
========== ============================ =========================================

Participant objects carry pseudonyms (patient, study, series), never
original identifiers: the audit trail itself must not be a PHI store.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import socket
import xml.etree.ElementTree as ET
from typing import IO

from medsearch.audit.events import ExportEvent
from medsearch.audit.review import EventFilter, iter_events
from medsearch.errors import InputError

FORMATS = ("csv", "json", "atna")
CSV_COLUMNS = ("id", "ts", "event_type", "actor", "outcome", "payload", "prev_hash", "hash", "mac")

# (csd-code, codeSystemName, originalText)
Code = tuple[str, str, str]
EVENT_IDS: dict[str, Code] = {
    "login": ("110114", "DCM", "User Authentication"),
    "search": ("110112", "DCM", "Query"),
    "study_view": ("110110", "DCM", "Patient Record"),
    "reidentify": ("110110", "DCM", "Patient Record"),
    "export": ("110106", "DCM", "Export"),
    "admin": ("110113", "DCM", "Security Alert"),
    "app": ("110100", "DCM", "Application Activity"),
    "ingest": ("110107", "DCM", "Import"),
}
ACTION = {"login": "E", "search": "E", "study_view": "R", "reidentify": "R", "export": "R", "admin": "U",
          "app": "E", "ingest": "C"}
LOGIN: Code = ("110122", "DCM", "Login")
LOGOUT: Code = ("110123", "DCM", "Logout")
EMERGENCY_OVERRIDE: Code = ("110127", "DCM", "Emergency Override Started")
USER_ATTRS_CHANGED: Code = ("110137", "DCM", "User Security Attributes Changed")
ROLES_CHANGED: Code = ("110136", "DCM", "Security Roles Changed")
SOFTWARE_CONFIG: Code = ("110131", "DCM", "Software Configuration")
APP_START: Code = ("110120", "DCM", "Application Start")
APP_STOP: Code = ("110121", "DCM", "Application Stop")
SOURCE_ROLE: Code = ("110153", "DCM", "Source Role ID")
DEST_ROLE: Code = ("110152", "DCM", "Destination Role ID")
APPLICATION: Code = ("110150", "DCM", "Application")
PATIENT_ID_TYPE: Code = ("2", "RFC-3881", "Patient Number")
STUDY_ID_TYPE: Code = ("study-pseudonym", "medsearch", "Study pseudonym")
SERIES_ID_TYPE: Code = ("series-pseudonym", "medsearch", "Series pseudonym")
QUERY_ID_TYPE: Code = ("text-query", "medsearch", "Text query")
USER_ID_TYPE: Code = ("11", "RFC-3881", "User Identifier")
OUTCOME = {"success": "0", "failure": "4"}


def _code(parent: ET.Element, tag: str, code: Code) -> ET.Element:
    return ET.SubElement(parent, tag, {"csd-code": code[0], "codeSystemName": code[1], "originalText": code[2]})


def _kind(ev: dict) -> str:
    if ev["event_type"] == "admin" and str(ev["payload"].get("action", "")).startswith("app."):
        return "app"
    return ev["event_type"]


def _object(msg: ET.Element, obj_id: str, type_code: str, role: str, id_type: Code,
            details: dict[str, str] | None = None, query: str | None = None) -> None:
    po = ET.SubElement(msg, "ParticipantObjectIdentification", {
        "ParticipantObjectID": obj_id, "ParticipantObjectTypeCode": type_code,
        "ParticipantObjectTypeCodeRole": role})
    _code(po, "ParticipantObjectIDTypeCode", id_type)
    if query is not None:
        ET.SubElement(po, "ParticipantObjectQuery").text = base64.b64encode(query.encode("utf-8")).decode("ascii")
    for key, value in (details or {}).items():
        ET.SubElement(po, "ParticipantObjectDetail", {
            "type": key, "value": base64.b64encode(str(value).encode("utf-8")).decode("ascii")})


def atna_message(ev: dict, source_id: str | None = None) -> bytes:
    """One DICOM audit message (PS3.15 A.5.1) for one stored event dict."""
    kind = _kind(ev)
    p = ev["payload"]
    msg = ET.Element("AuditMessage")
    ident = ET.SubElement(msg, "EventIdentification", {
        "EventActionCode": ACTION.get(kind, "E"), "EventDateTime": ev["ts"],
        "EventOutcomeIndicator": OUTCOME.get(ev["outcome"], "8")})
    _code(ident, "EventID", EVENT_IDS.get(kind, ("110100", "DCM", "Application Activity")))
    if kind == "login":
        _code(ident, "EventTypeCode", LOGOUT if p.get("method") == "logout" else LOGIN)
    elif kind == "reidentify":
        _code(ident, "EventTypeCode", EMERGENCY_OVERRIDE)
    elif kind == "admin":
        action = str(p.get("action"))
        _code(ident, "EventTypeCode", SOFTWARE_CONFIG if action.startswith("config.")
              else ROLES_CHANGED if "role" in action else USER_ATTRS_CHANGED)
    elif kind == "app":
        _code(ident, "EventTypeCode", APP_STOP if p.get("action") == "app.stop" else APP_START)
    remote = p.get("remote_addr") or ""
    user = ET.SubElement(msg, "ActiveParticipant", {"UserID": ev["actor"] or "-", "UserIsRequestor": "true",
                                                   **({"NetworkAccessPointID": remote,
                                                       "NetworkAccessPointTypeCode": "2"} if remote else {})})
    _code(user, "RoleIDCode", SOURCE_ROLE)
    app = ET.SubElement(msg, "ActiveParticipant", {"UserID": "medsearch", "UserIsRequestor": "false"})
    _code(app, "RoleIDCode", APPLICATION if kind == "app" else DEST_ROLE)
    src = ET.SubElement(msg, "AuditSourceIdentification",
                        {"AuditSourceID": source_id or f"medsearch@{socket.gethostname()}"})
    _code(src, "AuditSourceTypeCode", ("4", "DCM", "Application Server Process"))

    if kind == "search":
        _object(msg, "query", "2", "24", QUERY_ID_TYPE, {"filters": json.dumps(p.get("filters") or {}),
                                                          "result_count": p.get("result_count", 0)},
                query=p.get("query", ""))
        for study in p.get("results") or []:
            _object(msg, str(study), "2", "3", STUDY_ID_TYPE)
    elif kind in ("study_view", "reidentify"):
        if p.get("patient"):
            _object(msg, p["patient"], "1", "1", PATIENT_ID_TYPE)
        owner = p.get("study") or p.get("owner")
        if owner:
            id_type = SERIES_ID_TYPE if p.get("owner_kind") == "series" else STUDY_ID_TYPE
            details = {"reason": p.get("reason", ""), "fields": ",".join(p.get("fields") or [])} \
                if kind == "reidentify" else None
            _object(msg, owner, "2", "3", id_type, details)
    elif kind == "export":
        _object(msg, p.get("what") or "export", "2", "3", ("export", "medsearch", "Exported data set"),
                {"format": p.get("format", ""), "count": p.get("count", 0)})
    elif kind in ("admin", "app"):
        if p.get("target"):
            _object(msg, p["target"], "2", "11", USER_ID_TYPE, {"action": p.get("action", "")})
    elif kind == "ingest":
        _object(msg, p.get("source") or "ingest", "2", "20", ("ingest", "medsearch", "Ingest batch"),
                {"counts": json.dumps(p.get("counts") or {})})
    return ET.tostring(msg, encoding="utf-8", xml_declaration=False)


def write_export(events, fmt: str, out: IO[str]) -> int:
    """Write event dicts in ``fmt`` to a text stream; return the count."""
    if fmt not in FORMATS:
        raise InputError(f"Unknown export format '{fmt}'.", f"Use one of: {', '.join(FORMATS)}.")
    n = 0
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for ev in events:
            row = dict(ev, payload=json.dumps(ev["payload"], ensure_ascii=False, sort_keys=True))
            writer.writerow([row[c] for c in CSV_COLUMNS])
            n += 1
    elif fmt == "json":
        out.write("[")
        for ev in events:
            out.write(("," if n else "") + "\n" + json.dumps(ev, ensure_ascii=False, sort_keys=True))
            n += 1
        out.write("\n]\n")
    else:
        for ev in events:
            out.write(atna_message(ev).decode("utf-8") + "\n")
            n += 1
    return n


def export_events(inst, fmt: str, out: IO[str], flt: EventFilter | None = None, actor: str = "cli") -> int:
    """Export matching events and record the export itself as an audit event."""
    if fmt not in FORMATS:
        raise InputError(f"Unknown export format '{fmt}'.", f"Use one of: {', '.join(FORMATS)}.")
    n = write_export(iter_events(inst, flt), fmt, out)
    inst.track(ExportEvent(actor=actor, what="audit", format=fmt, count=n))
    return n


def export_to_string(inst, fmt: str, flt: EventFilter | None = None, actor: str = "cli") -> str:
    buf = io.StringIO()
    export_events(inst, fmt, buf, flt, actor)
    return buf.getvalue()

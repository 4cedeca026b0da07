"""Audit export: CSV, JSON (re-verifiable) and DICOM ATNA (PS3.15 A.5) messages with the right EventIDs."""

import base64
import csv
import hashlib
import io
import json
import xml.etree.ElementTree as ET

import pytest

from medsearch.audit.events import (AdminEvent, ExportEvent, IngestEvent, LoginEvent, ReidentifyEvent, SearchEvent,
                                    StudyViewEvent)
from medsearch.audit.export import export_to_string, write_export
from medsearch.audit.log import GENESIS, canonical
from medsearch.audit.review import EventFilter, access_report, query_events
from medsearch.errors import InputError

EVENTS = [
    LoginEvent(actor="alice", method="password", remote_addr="10.0.0.7"),
    LoginEvent(actor="mallory", outcome="failure", method="password:bad_credentials", remote_addr="10.6.6.6"),
    SearchEvent(actor="alice", query="左肺下叶磨玻璃结节", filters={"modality": "CT"}, result_count=2,
                results=["stAAA", "stBBB"]),
    StudyViewEvent(actor="alice", study="stAAA", patient="paAAA"),
    ReidentifyEvent(actor="alice", reason="tumour board", owner_kind="study", owner="stAAA",
                    fields=["StudyInstanceUID", "AccessionNumber"]),
    ExportEvent(actor="carol", what="audit", format="csv", count=3),
    AdminEvent(actor="cli:root", action="user.add", target="alice", detail={"role": "radiologist"}),
    AdminEvent(actor="system", action="app.start", target="web"),
    IngestEvent(actor="stow", source="stow", counts={"files": {"ingested": 3}}),
    LoginEvent(actor="alice", method="logout"),
    AdminEvent(actor="system", action="config.change", target="settings", detail={"changed": ["web_port"]}),
]
# (EventID, EventTypeCode or None, EventActionCode, outcome indicator)
EXPECTED = [
    ("110114", "110122", "E", "0"), ("110114", "110122", "E", "4"), ("110112", None, "E", "0"),
    ("110110", None, "R", "0"), ("110110", "110127", "R", "0"), ("110106", None, "R", "0"),
    ("110113", "110137", "U", "0"), ("110100", "110120", "E", "0"), ("110107", None, "C", "0"),
    ("110114", "110123", "E", "0"), ("110113", "110131", "U", "0"),
]
ORDER = ["EventIdentification", "ActiveParticipant", "AuditSourceIdentification", "ParticipantObjectIdentification"]


@pytest.fixture
def filled(instance):
    for ev in EVENTS:
        instance.track(ev)
    return instance


def test_atna_messages_follow_the_dicom_schema_and_codes(filled):
    lines = export_to_string(filled, "atna").splitlines()
    assert len(lines) == len(EVENTS)
    for line, (event_id, type_code, action, outcome) in zip(lines, EXPECTED):
        msg = ET.fromstring(line)
        assert msg.tag == "AuditMessage"
        tags = [child.tag for child in msg]
        assert tags == sorted(tags, key=ORDER.index), "elements out of schema order"
        assert tags.count("EventIdentification") == 1 and tags.count("AuditSourceIdentification") == 1
        ident = msg.find("EventIdentification")
        assert (ident.get("EventActionCode"), ident.get("EventOutcomeIndicator")) == (action, outcome)
        assert ident.get("EventDateTime").endswith("Z")
        eid = ident.find("EventID")
        assert (eid.get("csd-code"), eid.get("codeSystemName")) == (event_id, "DCM")
        etc = ident.find("EventTypeCode")
        assert (etc.get("csd-code") if etc is not None else None) == type_code
        for ap in msg.findall("ActiveParticipant"):
            assert ap.get("UserID") and ap.get("UserIsRequestor") in ("true", "false")
            assert ap.find("RoleIDCode").get("csd-code")
        for po in msg.findall("ParticipantObjectIdentification"):
            assert po.get("ParticipantObjectID") and po.find("ParticipantObjectIDTypeCode") is not None


def _objects(line):
    return ET.fromstring(line).findall("ParticipantObjectIdentification")


def test_atna_participant_objects_carry_pseudonyms_query_and_reason(filled):
    lines = export_to_string(filled, "atna").splitlines()
    query = _objects(lines[2])
    assert base64.b64decode(query[0].find("ParticipantObjectQuery").text).decode() == "左肺下叶磨玻璃结节"
    assert [o.get("ParticipantObjectID") for o in query[1:]] == ["stAAA", "stBBB"]
    patient, study = _objects(lines[3])
    assert (patient.get("ParticipantObjectID"), patient.get("ParticipantObjectTypeCode"),
            patient.get("ParticipantObjectTypeCodeRole")) == ("paAAA", "1", "1")
    details = {d.get("type"): base64.b64decode(d.get("value")).decode()
               for d in _objects(lines[4])[0].findall("ParticipantObjectDetail")}
    assert details == {"reason": "tumour board", "fields": "StudyInstanceUID,AccessionNumber"}
    user = ET.fromstring(lines[1]).find("ActiveParticipant")
    assert (user.get("UserID"), user.get("NetworkAccessPointID")) == ("mallory", "10.6.6.6")


def test_csv_export(filled):
    rows = list(csv.DictReader(io.StringIO(export_to_string(filled, "csv"))))
    assert [r["event_type"] for r in rows] == [e.event_type for e in EVENTS]
    assert json.loads(rows[2]["payload"])["query"] == "左肺下叶磨玻璃结节"


def test_json_export_can_be_verified_offline(filled):
    events = json.loads(export_to_string(filled, "json"))
    prev = GENESIS
    for ev in events:
        body = canonical(ev["ts"], ev["event_type"], ev["actor"], ev["outcome"],
                         json.dumps(ev["payload"], ensure_ascii=False, sort_keys=True, separators=(",", ":")))
        assert ev["prev_hash"] == prev and hashlib.sha256(prev.encode() + body).hexdigest() == ev["hash"]
        prev = ev["hash"]


def test_export_is_audited_and_filterable(filled):
    out = export_to_string(filled, "json", EventFilter(event_type="login"), actor="carol")
    assert [e["actor"] for e in json.loads(out)] == ["alice", "mallory", "alice"]
    last = query_events(filled, limit=1)[0][0]
    assert (last["event_type"], last["actor"], last["payload"]["count"]) == ("export", "carol", 3)


def test_unknown_format_and_filters_are_refused(filled):
    with pytest.raises(InputError, match="format"):
        write_export([], "xml", io.StringIO())
    with pytest.raises(InputError, match="event type"):
        EventFilter(event_type="coffee")
    with pytest.raises(InputError, match="pseudonym"):
        EventFilter(patient="x' OR 1=1 --")


def test_patient_filter_and_access_report(filled):
    found, total = query_events(filled, EventFilter(patient="stAAA"))
    assert total == 3 and {e["event_type"] for e in found} == {"search", "study_view", "reidentify"}
    underscore, _ = query_events(filled, EventFilter(patient="st_AA"))
    assert underscore == []  # LIKE wildcards are escaped
    report = access_report(filled, "alice")
    assert report["counts"] == {"login": 2, "search": 1, "study_view": 1, "reidentify": 1}
    assert report["studies_viewed"] == [{"study": "stAAA", "views": 1}]
    assert report["reidentifications"][0]["reason"] == "tumour board"


def test_until_a_date_includes_that_day(filled):
    import datetime as dt

    from medsearch.audit.review import parse_time

    today = dt.datetime.now(dt.timezone.utc).date().isoformat()
    _, total = query_events(filled, EventFilter(since=parse_time(today, "since"),
                                                until=parse_time(today, "until", end=True)))
    assert total == len(EVENTS)
    with pytest.raises(InputError, match="not a date"):
        parse_time("26/11/2026", "until")

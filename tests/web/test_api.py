"""The REST API: tokens, JSON errors, images, re-identification, pagination, OpenAPI, metrics."""

from __future__ import annotations

import datetime as dt
import io
import json

import pytest
from PIL import Image
from sqlalchemy import select, update

from medsearch.store.models import ApiToken, AuditEvent

STUDY, SERIES = "st0123456789abcdef", "se0123456789abcdef"
VIP_STUDY, VIP_SERIES = "stvip000000000000", "sevip000000000000"


def _bearer(token):
    return {"Authorization": f"Bearer {token}"}


def _events(inst, event_type):
    with inst.sessions() as s:
        return [(r.actor, r.outcome, json.loads(r.payload)) for r in s.execute(
            select(AuditEvent).where(AuditEvent.event_type == event_type).order_by(AuditEvent.id)).scalars()]


def test_expired_token_is_401(client, tokens, web_inst):
    from medsearch import accounts

    token = accounts.create_token(web_inst, "short-lived", "pacs", 1)
    assert client.get("/api/v1/me", headers=_bearer(token)).status_code == 200
    with web_inst.sessions() as s, s.begin():
        s.execute(update(ApiToken).where(ApiToken.name == "short-lived")
                  .values(expires_at=dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)))
    resp = client.get("/api/v1/me", headers=_bearer(token))
    assert resp.status_code == 401 and "expired" in resp.get_json()["problem"]


def test_revoked_token_is_401(client, web_inst):
    from medsearch import accounts

    token = accounts.create_token(web_inst, "to-revoke", "pacs", 1)
    accounts.revoke_token(web_inst, "to-revoke")
    assert client.get("/api/v1/me", headers=_bearer(token)).status_code == 401


@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer ", "Token abc", "mst_abc"])
def test_malformed_authorization_is_401_json(client, header):
    resp = client.get("/api/v1/me", headers={"Authorization": header})
    assert resp.status_code == 401
    assert set(resp.get_json()) == {"error", "problem", "fix"}


def test_me(client, tokens):
    assert client.get("/api/v1/me", headers=_bearer(tokens["pacs"])).get_json() == {
        "name": "tok-pacs", "role": "pacs", "kind": "token", "allowed_sites": None}


def test_study_detail_is_audited_and_pseudonymous(client, tokens, web_inst):
    resp = client.get(f"/api/v1/studies/{STUDY}", headers=_bearer(tokens["radiologist"]))
    body = resp.get_json()
    assert resp.status_code == 200 and body["study"] == STUDY
    assert body["series"][0]["findings"][0]["finding"] == "nodule"
    assert body["series"][0]["key_slice"] == 12 and body["series"][0]["region"] == [14, 24, 26, 36]
    assert "1.2.840.99999" not in resp.get_data(as_text=True)  # the original UID stays in the vault
    assert _events(web_inst, "study_view")[-1] == ("tok-radiologist", "success",
                                                   {"study": STUDY, "patient": "pa0123456789abcdef"})


def test_restricted_patient_is_hidden_except_from_admin(client, tokens):
    for role in ("radiologist", "pacs"):
        for path in (f"/api/v1/studies/{VIP_STUDY}", f"/api/v1/series/{VIP_SERIES}",
                     f"/api/v1/series/{VIP_SERIES}/slices/3.png"):
            assert client.get(path, headers=_bearer(tokens[role])).status_code == 404, (role, path)
    assert client.get(f"/api/v1/studies/{VIP_STUDY}", headers=_bearer(tokens["admin"])).status_code == 200


def test_slices_and_thumbnails_are_png_in_two_windows(client, tokens):
    h = _bearer(tokens["radiologist"])
    thumb = client.get(f"/api/v1/series/{SERIES}/thumbnail.png", headers=h)
    assert thumb.mimetype == "image/png" and Image.open(io.BytesIO(thumb.data)).format == "PNG"
    lung = client.get(f"/api/v1/series/{SERIES}/slices/12.png?window=lung", headers=h)
    medi = client.get(f"/api/v1/series/{SERIES}/slices/12.png?window=mediastinum", headers=h)
    a, b = (Image.open(io.BytesIO(r.data)) for r in (lung, medi))
    assert a.size == (64, 64) and a.tobytes() != b.tobytes()
    small = client.get(f"/api/v1/series/{SERIES}/slices/12.png?size=32", headers=h)
    assert Image.open(io.BytesIO(small.data)).size == (32, 32)


@pytest.mark.parametrize("path, status", [
    (f"/api/v1/series/{SERIES}/slices/999.png", 400),
    (f"/api/v1/series/{SERIES}/slices/1.png?window=bone-marrow", 400),
    ("/api/v1/series/no-such-series/slices/1.png", 404),
    ("/api/v1/series/..%2F..%2Fetc%2Fpasswd/thumbnail.png", 404),
    ("/api/v1/studies/%3Cscript%3E", 404),
    ("/api/v1/nothing-here", 404),
])
def test_bad_requests_are_json_errors(client, tokens, path, status):
    resp = client.get(path, headers=_bearer(tokens["radiologist"]))
    assert resp.status_code == status and resp.is_json
    assert resp.get_json()["problem"]


def test_reidentify_reveals_audits_and_needs_a_reason(client, tokens, web_inst):
    h = _bearer(tokens["pacs"])
    bad = client.post(f"/api/v1/studies/{STUDY}/reidentify", json={"reason": ""}, headers=h)
    assert bad.status_code == 400 and "reason" in bad.get_json()["problem"]
    resp = client.post(f"/api/v1/studies/{STUDY}/reidentify", json={"reason": "prior comparison in PACS"},
                       headers=h)
    assert resp.status_code == 200
    assert resp.get_json() == {"study": STUDY, "study_uid": "1.2.840.99999.1.cdef", "accession": "ACC-cdef"}
    actor, outcome, payload = _events(web_inst, "reidentify")[-1]
    assert (actor, outcome, payload["owner"], payload["reason"]) == ("tok-pacs", "success", STUDY,
                                                                     "prior comparison in PACS")
    assert "1.2.840.99999" not in json.dumps(payload)  # the event says that, not what


def test_unexpected_errors_leak_nothing(client, tokens, monkeypatch):
    from medsearch.web import catalog

    def boom(*a, **k):
        raise ValueError("DOE^JOHN MRN0001 born 19500101")

    monkeypatch.setattr(catalog, "study_detail", boom)
    resp = client.get(f"/api/v1/studies/{STUDY}", headers=_bearer(tokens["radiologist"]))
    text = resp.get_data(as_text=True)
    assert resp.status_code == 500 and "incident" in resp.get_json()["problem"]
    assert "DOE" not in text and "MRN" not in text and "Traceback" not in text and "ValueError" not in text
    page = client.get(f"/studies/{STUDY}", headers=_bearer(tokens["radiologist"]))
    assert page.status_code == 500 and "DOE" not in page.get_data(as_text=True)


def test_audit_events_are_paginated(client, tokens, web_inst):
    h = _bearer(tokens["compliance"])
    first = client.get("/api/v1/audit/events?limit=2", headers=h).get_json()
    assert len(first["items"]) == 2 and first["total"] > 2 and first["offset"] == 0
    second = client.get(first["next"], headers=h).get_json()
    assert second["offset"] == 2 and second["items"][0]["id"] < first["items"][-1]["id"]
    only = client.get("/api/v1/audit/events?type=admin&user=test", headers=h).get_json()
    assert only["total"] >= 4 and {e["event_type"] for e in only["items"]} == {"admin"}
    assert client.get("/api/v1/audit/events?type=bogus", headers=h).status_code == 400
    assert client.get("/api/v1/audit/events?limit=0", headers=h).status_code == 400
    assert client.get("/api/v1/audit/verify", headers=h).get_json()["ok"] is True


def test_ingest_status(client, tokens):
    body = client.get("/api/v1/ingest/status", headers=_bearer(tokens["pacs"])).get_json()
    assert body["studies"] >= 2 and body["volumes"]["encoded"] >= 2 and set(body["jobs"]) >= {"queued", "dead"}


def test_openapi_spec_describes_every_api_route(client, app):
    spec = client.get("/api/v1/openapi.json").get_json()
    assert spec["openapi"].startswith("3.") and spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    documented = {(p, m.upper()) for p, ops in spec["paths"].items() for m in ops}
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith(("/api/", "/dicomweb/")) and rule.rule != "/api/v1/openapi.json":
            path = rule.rule.replace("<int:index>", "{index}").replace("<", "{").replace(">", "}")
            for m in rule.methods - {"HEAD", "OPTIONS"}:
                assert (path, m) in documented, (path, m)


def test_metrics_prometheus_format(client, tokens):
    client.get("/healthz")
    resp = client.get("/metrics", headers=_bearer(tokens["admin"]))
    text = resp.get_data(as_text=True)
    assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert 'medsearch_http_requests_total{method="GET",route="/healthz",status="200"}' in text
    assert 'medsearch_http_request_duration_seconds_bucket{method="GET",route="/healthz",le="+Inf"}' in text
    assert "medsearch_studies " in text and 'medsearch_ingest_jobs{status="queued"}' in text
    assert STUDY not in text  # routes are labelled by rule, never by pseudonym


def test_more_like_a_hidden_series_is_404(client, tokens):
    resp = client.get(f"/api/v1/series/{VIP_SERIES}/similar", headers=_bearer(tokens["radiologist"]))
    assert resp.status_code == 404


def test_access_report_api(client, tokens, web_inst):
    h = _bearer(tokens["compliance"])
    client.get(f"/api/v1/studies/{STUDY}", headers=_bearer(tokens["radiologist"]))
    body = client.get("/api/v1/audit/report?user=tok-radiologist", headers=h).get_json()
    assert body["actor"] == "tok-radiologist" and body["counts"]["study_view"] >= 1
    assert {"study": STUDY, "views": body["studies_viewed"][0]["views"]} in body["studies_viewed"]
    assert client.get("/api/v1/audit/report", headers=h).status_code == 400

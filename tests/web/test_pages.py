"""The radiologists' page, the study view with break-glass, and the compliance page."""

from __future__ import annotations

import json
import re

import pytest
from sqlalchemy import select, update

from medsearch.store.models import AuditEvent

STUDY, SERIES, PATIENT = "st0123456789abcdef", "se0123456789abcdef", "pa0123456789abcdef"

#: A response in the search pipeline's documented schema (docs/index-and-search.md), used to test the page's
#: rendering on its own; the browser test runs the real pipeline end to end.
CANNED = {
    "query": {"findings": [{"concept": {"id": "C1", "term": "nodule"}, "site": {"id": "S1", "term": "left lower lobe"},
                            "laterality": "left", "size_mm": {"min": 10, "max": 20}, "density": "solid",
                            "negated": False},
                           {"concept": {"id": "C2", "term": "pleural effusion"}, "site": None, "laterality": None,
                            "size_mm": None, "density": None, "negated": True}],
              "canonical": "solid nodule in the left lower lobe, no pleural effusion", "unmatched": []},
    "results": [{"study": STUDY, "series": SERIES, "score": 0.8123,
                 "components": {"global": 0.61, "region": 0.7, "attributes": 1.0},
                 "matched": ["finding", "site", "size"], "unmatched": ["density"], "key_slice": 12,
                 "region": [14, 24, 26, 36], "study_date": "2020-03-04", "modality": "CT", "body_part": "CHEST"}],
    "total": 1, "took_ms": 12.5,
}


@pytest.fixture
def canned(monkeypatch):
    from medsearch.web import catalog

    calls = []

    def fake(inst, text, k, filters, principal):
        calls.append({"text": text, "k": k, "filters": filters, "user": principal.name})
        return json.loads(json.dumps(CANNED))

    monkeypatch.setattr(catalog, "run_search", fake)
    return calls


def _events(inst, event_type):
    with inst.sessions() as s:
        return [(r.actor, r.outcome, json.loads(r.payload)) for r in s.execute(
            select(AuditEvent).where(AuditEvent.event_type == event_type).order_by(AuditEvent.id)).scalars()]


def test_search_page_renders_results_chips_and_explanations(client, login, canned):
    login(client, "radiologist")
    resp = client.get("/?q=LLL+solid+nodule+1-2cm,+no+effusion&modality=CT&date_from=2019-01-01")
    html = resp.get_data(as_text=True)
    assert resp.status_code == 200
    assert canned == [{"text": "LLL solid nodule 1-2cm, no effusion", "k": 20,
                       "filters": {"modality": "CT", "date_from": "2019-01-01"}, "user": "radiologist"}]
    # thumbnails load with the page, key slices are deferred until they have arrived
    assert f'class="thumb" src="/api/v1/series/{SERIES}/thumbnail.png"' in html
    assert f'data-src="/api/v1/series/{SERIES}/slices/12.png?window=lung"' in html
    assert '<rect x="14" y="24" width="12" height="12">' in html and 'viewBox="0 0 64 64"' in html
    assert "0.812" in html and "attributes" in html and 'class="tag no">density' in html
    assert f"/studies/{STUDY}?series={SERIES}&amp;slice=12&amp;region=14,24,26,36" in html
    assert f"/?similar={SERIES}" in html
    # the parse as editable chips over the closed vocabulary
    assert '<option value="left lower lobe" selected>' in html
    assert 'name="c0_size_min" value="10"' in html and 'name="c1_negated" value="1" checked' in html


def test_chips_rewrite_the_query(client, login, canned):
    login(client, "radiologist")
    client.get("/?c0_finding=nodule&c0_site=right+upper+lobe&c0_size_min=20&c0_size_max=20&c0_density=ground-glass"
               "&c1_finding=pleural+effusion&c1_negated=1")
    assert canned[-1]["text"] == "20 mm ground-glass nodule in the right upper lobe, no pleural effusion"


@pytest.mark.parametrize("query, problem", [
    ("?c0_finding=unicorn", "not in the vocabulary"),
    ("?q=nodule&date_from=yesterday", "not a date"),
    ("?q=nodule&modality=XR", "Unknown modality"),
    ("?q=" + "x" * 501, "longer than"),
])
def test_bad_search_input_is_shown_on_the_page(client, login, canned, query, problem):
    login(client, "radiologist")
    resp = client.get("/" + query)
    assert resp.status_code == 400 and problem in resp.get_data(as_text=True) and not canned


def test_search_page_names_a_missing_capability(client, login, monkeypatch):
    from medsearch.errors import NotBuiltError
    from medsearch.web import catalog

    def missing(*a, **k):
        raise NotBuiltError("search pipeline (issue 7)")

    monkeypatch.setattr(catalog, "run_search", missing)
    login(client, "radiologist")
    resp = client.get("/?q=nodule")
    assert resp.status_code == 503 and "search pipeline (issue 7)" in resp.get_data(as_text=True)


def test_study_view_opens_at_the_key_slice_with_the_region(client, login, web_inst):
    login(client, "radiologist")
    html = client.get(f"/studies/{STUDY}").get_data(as_text=True)
    assert f'src="/api/v1/series/{SERIES}/slices/12.png?window=lung"' in html
    assert 'id="scroller" min="0" max="23" value="12"' in html
    assert '<rect x="14" y="24"' in html
    assert 'value="mediastinum"' in html and 'id="breakglass"' in html and "/?similar=" in html
    assert _events(web_inst, "study_view")[-1] == ("radiologist", "success", {"study": STUDY, "patient": PATIENT})
    html = client.get(f"/studies/{STUDY}?series={SERIES}&slice=5&window=mediastinum").get_data(as_text=True)
    assert "slices/5.png?window=mediastinum" in html


def test_restricted_study_page_is_404(client, login):
    login(client, "radiologist")
    assert client.get("/studies/stvip000000000000").status_code == 404


def test_break_glass_requires_a_reason_then_redirects_and_audits(client, login, web_inst):
    token = login(client, "radiologist")
    resp = client.post(f"/studies/{STUDY}/open-in-pacs", data={"csrf_token": token, "reason": " "})
    assert resp.status_code == 400 and "reason" in resp.get_data(as_text=True)
    resp = client.post(f"/studies/{STUDY}/open-in-pacs", data={"csrf_token": token, "reason": "compare with prior"})
    assert resp.status_code == 303
    assert resp.headers["Location"] == "https://pacs.example/viewer?StudyInstanceUID=1.2.840.99999.1.cdef&acc=ACC-cdef"
    actor, outcome, payload = _events(web_inst, "reidentify")[-1]
    assert (actor, payload["owner"], payload["reason"]) == ("radiologist", STUDY, "compare with prior")


def test_audit_page_filters_verifies_and_reports(client, login, web_inst):
    login(client, "radiologist")
    client.get(f"/studies/{STUDY}")
    login(client, "compliance")
    html = client.get("/audit?type=study_view&user=radiologist").get_data(as_text=True)
    assert "study_view" in html and STUDY in html
    rows = re.findall(r"<tr class=\"(?:success|failure)\">", html)
    assert rows and "user.add" not in html
    html = client.get(f"/audit?patient={PATIENT}").get_data(as_text=True)
    assert PATIENT in html
    assert "Chain intact" in client.get("/audit?verify=1").get_data(as_text=True)
    report = client.get("/audit?user=radiologist&report=1").get_data(as_text=True)
    assert 'id="report"' in report and STUDY[:16] in report
    assert client.get("/audit?type=nonsense").status_code == 400


def test_audit_export_download_is_itself_audited(client, login, web_inst):
    token = login(client, "compliance")
    html = client.get("/audit?type=login").get_data(as_text=True)
    assert 'name="type" value="login"' in html  # the export form carries the page's filters
    resp = client.post("/audit/export", data={"csrf_token": token, "format": "csv", "type": "login"})
    assert resp.status_code == 200 and resp.mimetype == "text/csv"
    assert resp.headers["Content-Disposition"].startswith("attachment")
    rows = resp.get_data(as_text=True).splitlines()
    assert rows[0].startswith("id,ts,event_type") and all(",login," in r for r in rows[1:])
    assert _events(web_inst, "export")[-1][:2] == ("compliance", "success")
    assert client.post("/audit/export", data={"csrf_token": token, "format": "pdf"}).status_code == 400
    assert client.post("/audit/export", data={"format": "csv"}).status_code == 400  # no CSRF token
    assert client.get("/audit/export?format=csv").status_code == 405


def test_audit_page_shows_a_broken_chain(fresh_app, fresh_inst, login):
    client = fresh_app.test_client()
    login(client, "admin")
    with fresh_inst.sessions() as s, s.begin():
        s.execute(update(AuditEvent).where(AuditEvent.id == 2).values(actor="mallory"))
    html = client.get("/audit?verify=1").get_data(as_text=True)
    assert "Chain BROKEN" in html and "#2" in html


def test_pages_in_chinese(client, login):
    login(client, "radiologist")
    html = client.get("/", headers={"Accept-Language": "zh-CN"}).get_data(as_text=True)
    assert "检索" in html and "左肺下叶" in html and 'lang="zh-CN"' in html


def test_hostile_input_is_escaped_everywhere(client, login, canned, web_inst):
    from medsearch.audit.events import LoginEvent

    login(client, "radiologist")
    html = client.get("/?q=<script>alert(1)</script>").get_data(as_text=True)
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    web_inst.track(LoginEvent(actor='<img src=x onerror="alert(1)">', outcome="failure",
                              remote_addr="</td><script>alert(2)</script>"))
    login(client, "compliance")
    html = client.get("/audit").get_data(as_text=True)
    assert "<img src=x" not in html and "<script>alert(2)" not in html

"""The authorization matrix, as data: every route × every role and anonymous; every denial asserted."""

from __future__ import annotations

import pytest

ALL = ("radiologist", "compliance", "admin", "pacs")
CLINICAL = ("radiologist", "admin")
REVIEW = ("compliance", "admin")
READ = ("radiologist", "admin", "pacs")
PUBLIC = "public"
STUDY, SERIES = "st0123456789abcdef", "se0123456789abcdef"
STOW_CT = 'multipart/related; type="application/dicom"; boundary=XyZ'
STOW_BODY = b"--XyZ\r\nContent-Type: application/dicom\r\n\r\nnot dicom\r\n--XyZ--\r\n"

# (rule, method, concrete path, kind, allowed roles, request kwargs)
MATRIX = [
    ("/", "GET", "/", "page", CLINICAL, {}),
    ("/", "GET", "/?q=nodule", "page", CLINICAL, {}),
    ("/studies/<study>", "GET", f"/studies/{STUDY}", "page", CLINICAL, {}),
    ("/studies/<study>/open-in-pacs", "POST", f"/studies/{STUDY}/open-in-pacs", "page", CLINICAL,
     {"data": {"reason": "tumour board comparison"}}),
    ("/audit", "GET", "/audit", "page", REVIEW, {}),
    ("/audit", "GET", "/audit?verify=1", "page", REVIEW, {}),
    ("/audit/export", "POST", "/audit/export", "page", REVIEW, {"data": {"format": "csv"}}),
    ("/logout", "POST", "/logout", "page", ALL, {}),
    ("/login", "GET", "/login", "page", PUBLIC, {}),
    ("/lang/<code>", "GET", "/lang/zh", "page", PUBLIC, {}),
    ("/static/<path:filename>", "GET", "/static/app.css", "page", PUBLIC, {}),
    ("/healthz", "GET", "/healthz", "api", PUBLIC, {}),
    ("/metrics", "GET", "/metrics", "api", ("admin",), {}),
    ("/api/v1/openapi.json", "GET", "/api/v1/openapi.json", "api", PUBLIC, {}),
    ("/api/v1/me", "GET", "/api/v1/me", "api", ALL, {}),
    ("/api/v1/search", "GET", "/api/v1/search?q=nodule", "api", READ, {}),
    ("/api/v1/search", "POST", "/api/v1/search", "api", READ, {"json": {"q": "nodule", "k": 5}}),
    ("/api/v1/studies/<study>", "GET", f"/api/v1/studies/{STUDY}", "api", READ, {}),
    ("/api/v1/series/<series>", "GET", f"/api/v1/series/{SERIES}", "api", READ, {}),
    ("/api/v1/series/<series>/thumbnail.png", "GET", f"/api/v1/series/{SERIES}/thumbnail.png", "api", READ, {}),
    ("/api/v1/series/<series>/slices/<int:index>.png", "GET", f"/api/v1/series/{SERIES}/slices/12.png", "api", READ,
     {}),
    ("/api/v1/series/<series>/similar", "GET", f"/api/v1/series/{SERIES}/similar", "api", READ, {}),
    ("/similar", "POST", "/similar", "page", CLINICAL, {"data": {}}),
    ("/api/v1/similar", "POST", "/api/v1/similar", "api", READ,
     {"data": STOW_BODY, "headers": {"Content-Type": STOW_CT}}),
    ("/api/v1/studies/<study>/reidentify", "POST", f"/api/v1/studies/{STUDY}/reidentify", "api", ("pacs", "admin"),
     {"json": {"reason": "PACS retrieval for tumour board"}}),
    ("/api/v1/ingest/status", "GET", "/api/v1/ingest/status", "api", ("admin", "pacs"), {}),
    ("/api/v1/audit/events", "GET", "/api/v1/audit/events", "api", REVIEW, {}),
    ("/api/v1/audit/report", "GET", "/api/v1/audit/report?user=radiologist", "api", REVIEW, {}),
    ("/api/v1/audit/verify", "GET", "/api/v1/audit/verify", "api", REVIEW, {}),
    ("/dicomweb/studies", "POST", "/dicomweb/studies", "api", ("pacs", "admin"),
     {"data": STOW_BODY, "headers": {"Content-Type": STOW_CT}}),
]
# POST /login is the credential check itself (tests/web/test_auth.py), not a protected route.
NOT_IN_MATRIX = {("/login", "POST")}


def test_matrix_covers_every_route(app):
    declared = {(rule, method) for rule, method, *_ in MATRIX} | NOT_IN_MATRIX
    routes = {(r.rule, m) for r in app.url_map.iter_rules() for m in r.methods - {"HEAD", "OPTIONS"}}
    assert routes - declared == set(), "routes missing from the authorization matrix"
    assert declared - routes == set(), "matrix rows for routes that do not exist"


def _call(client, method, path, kwargs, headers=None, csrf=None):
    kw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in kwargs.items()}
    hdrs = {**kw.pop("headers", {}), **(headers or {})}
    if csrf and method == "POST":
        hdrs["X-CSRF-Token"] = csrf
    return client.open(path, method=method, headers=hdrs, **kw)


def _assert_denied(resp, kind, anonymous):
    if anonymous and kind == "page":
        assert resp.status_code == 302 and resp.headers["Location"].startswith("/login?next="), resp.status_code
    elif anonymous:
        assert resp.status_code == 401, resp.status_code
        assert resp.get_json()["error"] == "unauthorized"
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    else:
        assert resp.status_code == 403, resp.status_code
        if kind == "api":
            assert resp.get_json()["error"] == "forbidden"
        else:
            assert "403" in resp.get_data(as_text=True)


def _assert_allowed(resp):
    assert resp.status_code not in (401, 403), resp.status_code
    assert not (resp.status_code == 302 and resp.headers["Location"].startswith("/login?next="))
    # Allowed but without data or capability (404/503) is fine; a crash is not.
    assert resp.status_code < 500 or resp.status_code == 503, resp.get_data(as_text=True)[:300]


@pytest.mark.parametrize("who", ("anonymous",) + ALL)
@pytest.mark.parametrize("row", MATRIX, ids=[f"{m} {p}" for _, m, p, *_ in MATRIX])
def test_session_matrix(client, login, row, who):
    """Every route with a browser session of each role (and none)."""
    rule, method, path, kind, allowed, kwargs = row
    csrf = login(client, who) if who != "anonymous" else None
    resp = _call(client, method, path, kwargs, csrf=csrf)
    try:
        if allowed == PUBLIC or (who != "anonymous" and who in allowed):
            _assert_allowed(resp)
        else:
            _assert_denied(resp, kind, who == "anonymous")
    finally:
        resp.close()


API_ROWS = [r for r in MATRIX if r[3] == "api"]


@pytest.mark.parametrize("who", ("anonymous", "wrong-token") + ALL)
@pytest.mark.parametrize("row", API_ROWS, ids=[f"{m} {p}" for _, m, p, *_ in API_ROWS])
def test_bearer_matrix(client, tokens, row, who):
    """Every API route with a bearer token of each role, a wrong token, and none."""
    rule, method, path, kind, allowed, kwargs = row
    headers = {}
    if who == "wrong-token":
        headers["Authorization"] = "Bearer mst_" + "A" * 43
    elif who != "anonymous":
        headers["Authorization"] = f"Bearer {tokens[who]}"
    with _call(client, method, path, kwargs, headers=headers) as resp:
        _check_bearer(resp, who, allowed)


def _check_bearer(resp, who, allowed):
    if who == "wrong-token":  # a bad credential is refused even where none is needed
        assert resp.status_code == 401 and resp.get_json()["error"] == "unauthorized"
    elif allowed == PUBLIC or (who != "anonymous" and who in allowed):
        _assert_allowed(resp)
    else:
        _assert_denied(resp, "api", who == "anonymous")

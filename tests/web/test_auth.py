"""Login, CSRF, lockout, rate limit, session timeout and logout, through the real app."""

import time

import pytest
from sqlalchemy import select

from medsearch import accounts
from medsearch.store.models import AuditEvent

PASSWORD = "correct-horse-battery"


def _form_login(client, csrf, user, password=PASSWORD, nxt="/"):
    page = client.get("/login")
    token = csrf(page.get_data(as_text=True))
    return client.post("/login", data={"username": user, "password": password, "csrf_token": token,
                                       "next": nxt})


def _logins(inst):
    with inst.sessions() as s:
        return [(r.actor, r.outcome) for r in s.execute(select(AuditEvent).where(
            AuditEvent.event_type == "login").order_by(AuditEvent.id)).scalars()]


def test_login_sets_a_hardened_session_cookie_and_audits(fresh_app, fresh_inst, csrf):
    client = fresh_app.test_client()
    resp = _form_login(client, csrf, "radiologist")
    assert resp.status_code == 302 and resp.headers["Location"] == "/"
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    assert client.get("/").status_code == 200
    assert ("radiologist", "success") in _logins(fresh_inst)


def test_compliance_lands_on_the_audit_page(client, csrf):
    assert _form_login(client, csrf, "compliance").headers["Location"] == "/audit"


def test_secure_cookie_behind_tls(fresh_inst, csrf):
    from medsearch.instance import Instance
    from medsearch.web import create_app

    inst = Instance(fresh_inst.home, overrides={"web_behind_tls_proxy": True}, env={})
    client = create_app({"MEDSEARCH_INSTANCE": inst, "TESTING": True}).test_client()
    resp = _form_login(client, csrf, "radiologist")
    assert "Secure" in resp.headers["Set-Cookie"]
    assert resp.headers["Strict-Transport-Security"].startswith("max-age=")


@pytest.mark.parametrize("token", [None, "", "forged-token"])
def test_post_without_a_valid_csrf_token_is_400(client, token):
    client.get("/login")
    data = {"username": "radiologist", "password": PASSWORD}
    if token is not None:
        data["csrf_token"] = token
    resp = client.post("/login", data=data)
    assert resp.status_code == 400 and "security token" in resp.get_data(as_text=True)


def test_csrf_is_checked_on_logged_in_forms(client, login):
    login(client, "radiologist")
    resp = client.post("/studies/st0123456789abcdef/open-in-pacs", data={"reason": "tumour board review"})
    assert resp.status_code == 400
    resp = client.post("/logout", data={"csrf_token": "csrf-someone-else"})
    assert resp.status_code == 400


def test_every_form_carries_the_csrf_field(client, login):
    login(client, "admin")
    for path in ("/", "/studies/st0123456789abcdef", "/audit"):
        html = client.get(path).get_data(as_text=True)
        assert html.count("<form") >= 1
        for form in html.split("<form")[1:]:
            form = form.split("</form>")[0]
            if 'method="post"' in form:
                assert 'name="csrf_token"' in form, path


def test_session_is_renewed_at_login(client, csrf):
    before = csrf(client.get("/login").get_data(as_text=True))
    _form_login(client, csrf, "radiologist")
    with client.session_transaction() as sess:
        assert sess["csrf"] != before and sess["sid"]


def test_wrong_password_shows_one_message_and_locks_after_max_failures(fresh_app, fresh_inst, csrf):
    client = fresh_app.test_client()
    for _ in range(fresh_inst.settings.login_max_failures):
        resp = _form_login(client, csrf, "radiologist", "wrong-password")
        assert resp.status_code == 401 and 'id="login-error"' in resp.get_data(as_text=True)
    resp = _form_login(client, csrf, "radiologist")  # right password, locked account
    assert resp.status_code == 401
    assert accounts.list_users(fresh_inst)[3]["locked"] is True  # sorted by name: ..., radiologist
    assert _logins(fresh_inst)[-1] == ("radiologist", "failure")


def test_login_is_rate_limited_per_address(fresh_app, fresh_inst, csrf):
    client = fresh_app.test_client()
    limit = fresh_inst.settings.login_rate_per_minute
    for i in range(limit):
        assert _form_login(client, csrf, f"nobody{i}", "whatever-pass").status_code == 401
    resp = _form_login(client, csrf, "radiologist")
    assert resp.status_code == 429 and int(resp.headers["Retry-After"]) > 0


def test_idle_session_times_out(client, login, web_inst):
    login(client, "radiologist")
    with client.session_transaction() as sess:
        sess["seen"] = time.time() - web_inst.settings.session_idle_minutes * 60 - 1
    resp = client.get("/studies/st0123456789abcdef")
    assert resp.status_code == 302 and "expired=1" in resp.headers["Location"]
    assert client.get("/api/v1/me").status_code == 401  # the session is gone for the API too


def test_logout_ends_the_session_even_for_a_replayed_cookie(client, login):
    token = login(client, "radiologist")
    with client.session_transaction() as sess:
        saved = dict(sess)
    assert client.post("/logout", data={"csrf_token": token}).status_code == 302
    with client.session_transaction() as sess:  # an attacker replays the old cookie
        sess.update(saved)
    resp = client.get("/")
    assert resp.status_code == 302 and resp.headers["Location"].startswith("/login")


def test_disabling_a_user_ends_their_session(fresh_app, fresh_inst, login):
    client = fresh_app.test_client()
    login(client, "radiologist")
    assert client.get("/").status_code == 200
    accounts.disable_user(fresh_inst, "radiologist", actor="admin")
    assert client.get("/").status_code == 302


@pytest.mark.parametrize("nxt", ["//evil.example/x", "https://evil.example/", "\\\\evil", "javascript:alert(1)"])
def test_no_open_redirect_after_login(client, csrf, nxt):
    assert _form_login(client, csrf, "radiologist", nxt=nxt).headers["Location"] == "/"


def test_language_switch_and_accept_language(client):
    html = client.get("/login", headers={"Accept-Language": "zh-CN,zh;q=0.9"}).get_data(as_text=True)
    assert "登录" in html and 'lang="zh-CN"' in html
    assert "Log in" in client.get("/login", headers={"Accept-Language": "en-US"}).get_data(as_text=True)
    resp = client.get("/lang/zh?next=/login")
    assert resp.headers["Location"] == "/login" and "medsearch_lang=zh" in resp.headers["Set-Cookie"]
    assert "登录" in client.get("/login", headers={"Accept-Language": "en"}).get_data(as_text=True)
    assert client.get("/lang/en?next=//evil.example").headers["Location"] == "/"


def test_security_headers(client):
    resp = client.get("/login")
    csp = resp.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert resp.headers["X-Frame-Options"] == "DENY" and resp.headers["Cache-Control"] == "no-store"
    assert "http://" not in resp.get_data(as_text=True).split("<body>")[0]  # no external assets


def test_sessions_end_after_twelve_hours_whatever_the_activity(client, login):
    login(client, "radiologist")
    with client.session_transaction() as sess:
        sess["started"] = time.time() - 12 * 3600 - 1
    resp = client.get("/")
    assert resp.status_code == 302 and "expired=1" in resp.headers["Location"]

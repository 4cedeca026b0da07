"""Who is asking, and may they: sessions, bearer tokens, CSRF, idle timeout, headers.

Every view declares its policy with :func:`roles` (or :func:`public`); a view
without one is refused, so a new route cannot be left open by accident.
Denials: no credentials → 401 (API) or a redirect to /login (pages); wrong
role → 403.  Bearer-token requests ignore the session cookie and need no CSRF
token (a browser never sends that header on its own); every other unsafe
request needs the session's CSRF token, in the form field ``csrf_token`` or
the ``X-CSRF-Token`` header.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from functools import wraps

from flask import Flask, current_app, g, request, session

from medsearch.accounts import Principal, current_principal, require_role, verify_token
from medsearch.errors import AuthError, MedsearchError
from medsearch.web.instance import get_instance

UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}
POLICY_ATTR = "_medsearch_roles"
PUBLIC = "public"
ALL_ROLES = ("radiologist", "compliance", "admin", "pacs")
#: Absolute session lifetime, whatever the activity.
MAX_SESSION_SECONDS = 12 * 3600


class CsrfError(MedsearchError):
    http_status = 400
    code = "csrf"

    def __init__(self):
        super().__init__("The form's security token is missing or does not match this session.",
                         "Reload the page and submit the form again.")


class _RevokedSessions:
    """Session ids ended by logout, kept until they would have expired anyway."""

    def __init__(self):
        self._ids: dict[str, float] = {}
        self._lock = threading.Lock()

    def add(self, sid: str, until: float) -> None:
        with self._lock:
            now = time.time()
            self._ids = {k: v for k, v in self._ids.items() if v > now}
            self._ids[sid] = until

    def __contains__(self, sid: str) -> bool:
        with self._lock:
            return sid in self._ids


revoked_sessions = _RevokedSessions()


def roles(*allowed: str):
    """Declare (and enforce) the roles that may call a view."""
    for r in allowed:
        if r not in ALL_ROLES:
            raise ValueError(f"unknown role {r}")

    def deco(view):
        @wraps(view)
        def wrapper(*args, **kwargs):
            require_role(g.principal, frozenset(allowed))
            return view(*args, **kwargs)

        setattr(wrapper, POLICY_ATTR, frozenset(allowed))
        return wrapper

    return deco


def public(view):
    setattr(view, POLICY_ATTR, PUBLIC)
    return view


def csrf_token() -> str:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]


def start_session(principal: Principal) -> None:
    """A fresh session for a login (new id and CSRF token: no fixation)."""
    session.clear()
    session.permanent = True
    now = time.time()
    session.update(user=principal.name, sid=secrets.token_urlsafe(16), csrf=secrets.token_urlsafe(32),
                   seen=now, started=now)


def end_session() -> None:
    sid = session.get("sid")
    if sid:
        revoked_sessions.add(sid, session.get("started", time.time()) + MAX_SESSION_SECONDS)
    session.clear()


def _session_principal() -> Principal | None:
    name = session.get("user")
    if not name:
        return None
    now = time.time()
    idle = get_instance().settings.session_idle_minutes * 60
    if (session.get("sid") in revoked_sessions or now - session.get("seen", 0) > idle
            or now - session.get("started", 0) > MAX_SESSION_SECONDS):
        session.clear()
        g.session_expired = True
        return None
    principal = current_principal(get_instance(), name)
    if principal is None:  # disabled or deleted since login
        session.clear()
        return None
    session["seen"] = now
    return principal


def _load_principal() -> None:
    g.principal = None
    g.bearer = False
    g.session_expired = False
    header = request.headers.get("Authorization")
    if header is not None:
        g.bearer = True
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError("The Authorization header is not a bearer token.",
                            "Send 'Authorization: Bearer <token>'.")
        g.principal = verify_token(get_instance(), token.strip())
        return
    g.principal = _session_principal()


def _check_csrf() -> None:
    if request.method not in UNSAFE or g.bearer:
        return
    sent = request.headers.get("X-CSRF-Token") or request.form.get("csrf_token") or ""
    expected = session.get("csrf") or ""
    if not sent or not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
        raise CsrfError()


def _check_policy() -> None:
    view = current_app.view_functions.get(request.endpoint) if request.endpoint else None
    if view is None:
        return  # 404/405 are answered by the router
    policy = getattr(view, POLICY_ATTR, None)
    if policy is None:
        raise RuntimeError(f"view {request.endpoint} declares no access policy")
    if policy != PUBLIC:  # before CSRF: an unauthenticated POST is a 401/login redirect, not a 400
        require_role(g.principal, policy)


def _before() -> None:
    _load_principal()
    _check_policy()
    _check_csrf()


def viewer_origin(template: str) -> str | None:
    """The origin of the PACS viewer ('Open in PACS' redirects there after a form POST)."""
    from urllib.parse import urlsplit

    parts = urlsplit(template)
    if parts.scheme not in ("http", "https") or not parts.netloc or "{" in parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc}"


def _csp() -> str:
    # CSP form-action also governs where a form's redirect may go: allow the viewer, nothing else.
    origin = viewer_origin(get_instance().settings.viewer_url_template)
    form_action = "'self'" + (f" {origin}" if origin else "")
    return ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
            f"object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action {form_action}")


def _headers(resp):
    resp.headers.setdefault("Content-Security-Policy", _csp())
    resp.headers.setdefault("X-Content-Type-Options", "nosniff")
    resp.headers.setdefault("X-Frame-Options", "DENY")
    resp.headers.setdefault("Referrer-Policy", "no-referrer")
    resp.headers.setdefault("Cross-Origin-Resource-Policy", "same-origin")
    # Responses may show pseudonymised clinical images: never cache them in shared caches.
    resp.headers.setdefault("Cache-Control", "no-store")
    if current_app.config.get("SESSION_COOKIE_SECURE"):
        resp.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
    return resp


def init_app(app: Flask) -> None:
    app.before_request(_before)
    app.after_request(_headers)
    app.jinja_env.globals["csrf_token"] = csrf_token

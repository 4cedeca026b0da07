"""Login, logout and the language switch.

Local accounts check passwords through :mod:`medsearch.accounts`; an LDAP or
OIDC integration plugs in at :func:`_authenticate` (see docs/web.md, "SSO
seam").  The login form is rate-limited per client address and accounts lock
after repeated failures.
"""

from __future__ import annotations

from flask import Blueprint, make_response, redirect, render_template, request, url_for

from medsearch.accounts import authenticate
from medsearch.audit.events import LoginEvent
from medsearch.errors import AuthError
from medsearch.web.i18n import COOKIE, LANGS
from medsearch.web.instance import get_instance
from medsearch.web.ratelimit import get_limiter
from medsearch.web.security import ALL_ROLES, end_session, public, roles, start_session

bp = Blueprint("auth", __name__)


def safe_next(target: str | None, default: str = "/") -> str:
    """Only same-site paths: no open redirect to another host."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return default
    return target


def _authenticate(username: str, password: str, remote_addr: str):
    # The SSO seam: replace or chain this with an LDAP/OIDC Authenticator.
    return authenticate(get_instance(), username, password, remote_addr)


@bp.route("/login", methods=["GET", "POST"])
@public
def login():
    from flask import g

    if request.method == "GET":
        if g.principal is not None:
            return redirect(safe_next(request.args.get("next")))
        return render_template("login.html", next=safe_next(request.args.get("next")),
                               expired=bool(request.args.get("expired")), error=None)
    remote = request.remote_addr or ""
    get_limiter().hit(remote)
    username = (request.form.get("username") or "").strip()
    password = request.form.get("password") or ""
    nxt = safe_next(request.form.get("next"))
    try:
        principal = _authenticate(username, password, remote)
    except AuthError as exc:
        return render_template("login.html", next=nxt, expired=False, error=exc.problem), 401
    start_session(principal)
    if principal.role == "compliance" and nxt == "/":
        nxt = url_for("pages.audit")
    return redirect(nxt)


@bp.route("/logout", methods=["POST"])
@roles(*ALL_ROLES)
def logout():
    from flask import g

    get_instance().track(LoginEvent(actor=g.principal.name, method="logout", remote_addr=request.remote_addr or ""))
    end_session()
    return redirect(url_for("auth.login"))


@bp.route("/lang/<code>")
@public
def set_language(code: str):
    resp = make_response(redirect(safe_next(request.args.get("next"))))
    if code in LANGS:
        resp.set_cookie(COOKIE, code, max_age=365 * 24 * 3600, httponly=True, samesite="Lax")
    return resp

"""The one error handler: JSON for /api and /dicomweb, an HTML page otherwise.

Whatever goes wrong, the answer carries the error's ``problem`` and ``fix``
(constant text, no patient data) or, for an unexpected exception, a generic
message and an incident number that matches the server log line, which names
only the exception type: never a stack trace or a value in the response.
"""

from __future__ import annotations

import logging
import secrets

from flask import Flask, g, jsonify, make_response, redirect, render_template, request, url_for
from werkzeug.exceptions import HTTPException

from medsearch.errors import AuthError, MedsearchError

log = logging.getLogger("medsearch.web")


def wants_json() -> bool:
    path = request.path
    return path.startswith("/api/") or path.startswith("/dicomweb/") or path in ("/metrics", "/healthz")


def _respond(status: int, code: str, problem: str, fix: str | None, headers: dict | None = None):
    if wants_json():
        resp = jsonify({"error": code, "problem": problem, "fix": fix})
    else:
        resp = make_response(render_template("error.html", status=status, code=code, problem=problem, fix=fix))
    resp.status_code = status
    for k, v in (headers or {}).items():
        resp.headers[k] = v
    return resp


def handle(exc: Exception):
    if isinstance(exc, AuthError) and not wants_json() and not getattr(g, "bearer", False):
        # A page asked without a session: send the browser to the login form.
        return redirect(url_for("auth.login", next=request.full_path.rstrip("?"),
                                expired=1 if getattr(g, "session_expired", False) else None))
    if isinstance(exc, MedsearchError):
        headers = {}
        if exc.http_status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="medsearch"'
        if getattr(exc, "retry_after", None):
            headers["Retry-After"] = str(exc.retry_after)
        return _respond(exc.http_status, exc.code, exc.problem, exc.fix, headers)
    if isinstance(exc, HTTPException):
        headers = {}
        if exc.code == 405 and exc.valid_methods:
            headers["Allow"] = ", ".join(exc.valid_methods)
        fixes = {404: "Check the address.", 405: "Use one of the allowed methods.",
                 413: "Send a smaller request.", 400: "Correct the request."}
        return _respond(exc.code or 500, (exc.name or "error").lower().replace(" ", "_"),
                        exc.description or exc.name, fixes.get(exc.code), headers)
    incident = secrets.token_hex(6)
    # The type only: an exception's message or traceback locals could carry data.
    log.error("unexpected %s while serving %s %s (incident %s)", type(exc).__name__, request.method,
              request.url_rule.rule if request.url_rule else "-", incident)
    return _respond(500, "internal", f"An unexpected error occurred (incident {incident}).",
                    "Try again; if it persists, give the incident number to the administrator.")


def init_app(app: Flask) -> None:
    app.register_error_handler(Exception, handle)

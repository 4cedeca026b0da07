"""The web application: radiologists' page, compliance page, REST API, DICOMweb STOW-RS.

A flaskr-style application factory.  Each resource (the instance, the login
rate limiter, the metrics registry) has ``init_app(app)`` and a lazily created
``get_x()``; each concern is one blueprint.  This package is the only place
that imports Flask.
"""

from __future__ import annotations

import datetime as dt
import io
from pathlib import Path
from typing import Any

from flask import Flask


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the app.

    Args:
        test_config: Flask config overrides.  ``MEDSEARCH_HOME`` (a path) or
            ``MEDSEARCH_INSTANCE`` (an open :class:`medsearch.instance.Instance`)
            selects the instance; without either, ``$MEDSEARCH_HOME`` is used.
    """
    from medsearch.web import auth, dicomweb, errors, health, i18n, instance, metrics, pages, security
    from medsearch.web import api, ratelimit

    app = Flask(__name__, instance_relative_config=False)
    app.request_class = _InMemoryUploads
    app.config.from_mapping(MEDSEARCH_HOME=None, MEDSEARCH_INSTANCE=None, MAX_CONTENT_LENGTH=2 * 1024**3,
                            JSON_SORT_KEYS=False)
    if test_config:
        app.config.from_mapping(test_config)
    instance.init_app(app)
    inst = instance.instance_for(app)
    s = inst.settings
    app.config.update(
        SECRET_KEY=inst.keyring.secret("session"),
        SESSION_COOKIE_NAME="medsearch_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=bool(s.tls_cert) or bool(s.web_behind_tls_proxy),
        PERMANENT_SESSION_LIFETIME=dt.timedelta(minutes=s.session_idle_minutes),
    )
    if test_config:  # explicit test overrides win over instance-derived values
        app.config.from_mapping({k: v for k, v in test_config.items() if k.startswith("SESSION_")})
    if s.web_behind_tls_proxy:
        from werkzeug.middleware.proxy_fix import ProxyFix

        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1, x_host=1)

    ratelimit.init_app(app)
    metrics.init_app(app)
    i18n.init_app(app)
    security.init_app(app)
    errors.init_app(app)
    for bp in (auth.bp, pages.bp, api.bp, dicomweb.bp, health.bp):
        app.register_blueprint(bp)
    _static = app.view_functions["static"]

    @security.public
    def static(filename):  # the CSS, JS and icon: no data, needed before login
        return _static(filename=filename)

    app.view_functions["static"] = static
    from medsearch.audit.syslog import install_forwarder

    install_forwarder(s)
    return app


STATIC_DIR = Path(__file__).parent / "static"


def _request_class():
    from flask import Request

    class InMemoryUploads(Request):
        """Uploaded files stay in memory: werkzeug would spool large ones to a temporary file, and an
        uploaded series holds identifiable data that must never touch the disk."""

        def _get_file_stream(self, total_content_length, content_type, filename=None, content_length=None):
            return io.BytesIO()

    return InMemoryUploads


_InMemoryUploads = _request_class()

"""``medsearch serve``: a production WSGI server with threads.

* Plain HTTP: waitress (threads = setting ``web_threads``).  Put the nginx in
  ``deploy/`` in front for TLS and set ``web_behind_tls_proxy``.
* HTTPS: waitress has no TLS, so when ``tls_cert`` and ``tls_key`` are set the
  app is served by cheroot (a threaded, TLS-capable WSGI server) with the
  Python ``ssl`` builtin adapter, TLS 1.2 minimum.
"""

from __future__ import annotations

import hashlib
import json
import logging
import ssl
from pathlib import Path

from medsearch.audit.events import AdminEvent
from medsearch.errors import ConfigError

log = logging.getLogger(__name__)


def _tls_files(inst) -> tuple[Path, Path] | None:
    s = inst.settings
    if not s.tls_cert and not s.tls_key:
        return None
    if not (s.tls_cert and s.tls_key):
        raise ConfigError("Only one of tls_cert and tls_key is set.", "Set both (PEM files), or neither.")
    cert, key = inst.path(s.tls_cert), inst.path(s.tls_key)
    for p, name in ((cert, "tls_cert"), (key, "tls_key")):
        if not p.is_file():
            raise ConfigError(f"The {name} file {p} does not exist.", f"Point {name} at a PEM file.")
    try:  # fail at start-up, not at the first connection
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"The TLS certificate and key cannot be loaded ({exc.__class__.__name__}).",
                          "Check that tls_cert and tls_key are a matching PEM certificate and key.") from None
    return cert, key


def doctor_check(inst, Check):
    """``medsearch doctor``: the web server's TLS settings load (or the proxy setting is explicit)."""
    try:
        tls = _tls_files(inst)
    except ConfigError as exc:
        return Check("web", "fail", exc.problem, exc.fix or "")
    if tls:
        return Check("web", "ok", "HTTPS with tls_cert and tls_key (cheroot)")
    if inst.settings.web_behind_tls_proxy:
        return Check("web", "ok", "plain HTTP behind a TLS proxy (web_behind_tls_proxy)")
    return Check("web", "ok", "plain HTTP: put nginx with TLS in front (deploy/nginx) and set web_behind_tls_proxy")


def make_server(inst, host: str, port: int):
    """Return (server, scheme); ``server.run()`` blocks, ``server.close()`` stops it."""
    from medsearch.web import create_app

    app = create_app({"MEDSEARCH_INSTANCE": inst})
    tls = _tls_files(inst)
    threads = inst.settings.web_threads
    if tls:
        from cheroot import wsgi
        from cheroot.ssl.builtin import BuiltinSSLAdapter

        server = wsgi.Server((host, port), app, numthreads=threads, server_name="medsearch")
        adapter = BuiltinSSLAdapter(str(tls[0]), str(tls[1]))
        adapter.context.minimum_version = ssl.TLSVersion.TLSv1_2
        server.ssl_adapter = adapter
        return _Cheroot(server), "https"
    from waitress.server import create_server

    return _Waitress(create_server(app, host=host, port=port, threads=threads, ident="medsearch")), "http"


class _Waitress:
    def __init__(self, server):
        self.server = server
        self._closing = False

    @property
    def port(self) -> int:
        return self.server.effective_port

    def run(self):
        try:
            self.server.run()
        except (OSError, ValueError):
            # close() from another thread can pull a socket out from under the poll loop
            if not self._closing:
                raise

    def close(self):
        self._closing = True
        self.server.close()
        # Kept-alive client connections would hold the poll loop until they time out.
        for channel in list(getattr(self.server, "_map", {}).values()):
            try:
                channel.close()
            except OSError:
                pass
        self.server.task_dispatcher.shutdown(timeout=5)


class _Cheroot:
    def __init__(self, server):
        self.server = server
        self.server.prepare()

    @property
    def port(self) -> int:
        return self.server.bind_addr[1]

    def run(self):
        self.server.serve()

    def close(self):
        self.server.stop()


def settings_fingerprint(settings) -> dict[str, str]:
    """A short hash per setting: enough to tell *which* settings changed, never their values
    (database_url may hold a password)."""
    return {name: hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:12]
            for name, value in sorted(settings.as_dict().items())}


def track_config_change(inst) -> list[str]:
    """Compare the settings with those of the last start; record a config.change event naming what changed.

    Settings live in config.toml and the environment, edited outside medsearch; this is where a
    change becomes visible in the audit trail.
    """
    from sqlalchemy import select

    from medsearch.store.models import AuditEvent as Row

    current = settings_fingerprint(inst.settings)
    with inst.sessions() as s:
        rows = s.execute(select(Row.payload).where(Row.event_type == "admin", Row.actor == "system")
                         .order_by(Row.id.desc()).limit(50)).scalars().all()
    previous = None
    for payload in rows:
        data = json.loads(payload)
        if data.get("action") in ("app.start", "config.change") and "settings" in data.get("detail", {}):
            previous = data["detail"]["settings"]
            break
    changed = sorted(k for k in set(current) | set(previous or {}) if (previous or {}).get(k) != current.get(k))
    if previous is not None and changed:
        inst.track(AdminEvent(actor="system", action="config.change", target="settings",
                              detail={"changed": changed, "settings": current}))
    return changed if previous is not None else []


def _interrupt(_signum, _frame):
    raise KeyboardInterrupt


def _stop_on_sigterm() -> None:
    """systemd and docker stop with SIGTERM: stop as on Ctrl-C, so the stop is recorded."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)


def serve(inst, host: str | None = None, port: int | None = None, echo=print) -> None:
    host = host or inst.settings.web_host
    port = inst.settings.web_port if port is None else port
    server, scheme = make_server(inst, host, port)
    from medsearch.web.dicomweb import clear_stale_spool

    clear_stale_spool(inst)
    changed = track_config_change(inst)
    if changed:
        echo(f"settings changed since the last start: {', '.join(changed)} (recorded in the audit log)")
    inst.track(AdminEvent(actor="system", action="app.start", target="web",
                          detail={"scheme": scheme, "port": server.port,
                                  "settings": settings_fingerprint(inst.settings)}))
    echo(f"medsearch serving on {scheme}://{host}:{server.port} (Ctrl-C to stop)")
    _stop_on_sigterm()
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
        inst.track(AdminEvent(actor="system", action="app.stop", target="web"))

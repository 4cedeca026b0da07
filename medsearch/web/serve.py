"""``medsearch serve``: a production WSGI server with threads.

* Plain HTTP: waitress (threads = setting ``web_threads``).  Put the nginx in
  ``deploy/`` in front for TLS and set ``web_behind_tls_proxy``.
* HTTPS: waitress has no TLS, so when ``tls_cert`` and ``tls_key`` are set the
  app is served by cheroot (a threaded, TLS-capable WSGI server) with the
  Python ``ssl`` builtin adapter, TLS 1.2 minimum.
"""

from __future__ import annotations

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


def serve(inst, host: str | None = None, port: int | None = None, echo=print) -> None:
    host = host or inst.settings.web_host
    port = inst.settings.web_port if port is None else port
    server, scheme = make_server(inst, host, port)
    inst.track(AdminEvent(actor="system", action="app.start", target="web",
                          detail={"scheme": scheme, "port": server.port}))
    echo(f"medsearch serving on {scheme}://{host}:{server.port} (Ctrl-C to stop)")
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
        inst.track(AdminEvent(actor="system", action="app.stop", target="web"))

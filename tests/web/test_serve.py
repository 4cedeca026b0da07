"""`medsearch serve`'s servers, for real: waitress over HTTP, cheroot over TLS."""

import shutil
import threading

import pytest
import requests

from medsearch.errors import ConfigError
from medsearch.instance import Instance
from medsearch.web.serve import make_server

CLOSE = {"Connection": "close"}  # no kept-alive connection holds the server's loop open at shutdown


def _running(inst):
    server, scheme = make_server(inst, "127.0.0.1", 0)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    return server, scheme, thread


def test_waitress_serves_http(sqlite_instance):
    server, scheme, thread = _running(sqlite_instance)
    try:
        resp = requests.get(f"http://127.0.0.1:{server.port}/healthz", timeout=10, headers=CLOSE)
        assert scheme == "http" and resp.json() == {"status": "ok"}
        login = requests.get(f"http://127.0.0.1:{server.port}/login", timeout=10, headers=CLOSE)
        assert "Secure" not in login.headers["Set-Cookie"] and "HttpOnly" in login.headers["Set-Cookie"]
    finally:
        server.close()
        thread.join(10)


def _place(home, tls_files):
    home.mkdir(parents=True)
    for f in tls_files:
        shutil.copy(f, home / f.name)
    return home / "tls.crt"


def test_tls_settings_serve_https_with_secure_cookies(home, tls_files):
    ca = _place(home, tls_files)
    inst = Instance.create(home, settings={"tls_cert": "tls.crt", "tls_key": "tls.key"}, env={})
    server, scheme, thread = _running(inst)
    try:
        resp = requests.get(f"https://localhost:{server.port}/login", timeout=10, verify=str(ca), headers=CLOSE)
        assert scheme == "https" and resp.status_code == 200
        assert "Secure" in resp.headers["Set-Cookie"] and "Strict-Transport-Security" in resp.headers
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(f"http://localhost:{server.port}/healthz", timeout=5)
    finally:
        server.close()
        thread.join(10)
        inst.close()


@pytest.mark.parametrize("settings, problem", [
    ({"tls_cert": "tls.crt"}, "Only one of"),
    ({"tls_cert": "missing.crt", "tls_key": "tls.key"}, "does not exist"),
    ({"tls_cert": "tls.key", "tls_key": "tls.key"}, "cannot be loaded"),
])
def test_bad_tls_settings_stop_start_up(home, tls_files, settings, problem):
    _place(home, tls_files)
    inst = Instance.create(home, settings=settings, env={})
    with pytest.raises(ConfigError, match=problem):
        make_server(inst, "127.0.0.1", 0)
    inst.close()


def test_config_changes_between_starts_are_audited(home):
    import json as _json

    from medsearch.web.serve import settings_fingerprint, track_config_change
    from medsearch.audit.events import AdminEvent

    inst = Instance.create(home, env={})
    assert track_config_change(inst) == []  # first start: nothing to compare with
    inst.track(AdminEvent(actor="system", action="app.start", target="web",
                          detail={"settings": settings_fingerprint(inst.settings)}))
    (home / "config.toml").write_text('[medsearch]\nsession_idle_minutes = 5\n'
                                      'viewer_url_template = "https://secret-pacs.example/{study_uid}"\n')
    changed = Instance(home, env={})
    assert track_config_change(changed) == ["session_idle_minutes", "viewer_url_template"]
    from medsearch.audit.review import query_events

    last = query_events(inst, limit=1)[0][0]
    assert last["payload"]["action"] == "config.change" and "secret-pacs" not in _json.dumps(last)
    inst.close()
    changed.close()


def test_cli_serve_runs_and_stops_cleanly_on_sigterm(home):
    """`medsearch serve` as systemd runs it: answers, then SIGTERM stops it with app.stop audited."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time

    from medsearch.audit.review import query_events

    inst = Instance.create(home, env={})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDSEARCH_")}
    proc = subprocess.Popen([sys.executable, "-m", "medsearch.cli", "--home", str(home), "serve", "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2, headers=CLOSE).ok
                break
            except requests.exceptions.ConnectionError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
                time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        output = proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    assert f"serving on http://127.0.0.1:{port}" in output
    actions = [e["payload"]["action"] for e in query_events(inst, limit=10)[0] if e["event_type"] == "admin"]
    assert actions[:2] == ["app.stop", "app.start"]
    inst.close()


def test_doctor_checks_the_tls_settings(home, tls_files):
    from medsearch.doctor import Check
    from medsearch.web.serve import doctor_check

    _place(home, tls_files)
    good = Instance.create(home, settings={"tls_cert": "tls.crt", "tls_key": "tls.key"}, env={})
    assert doctor_check(good, Check).status == "ok"
    bad = Instance(home, overrides={"tls_key": "missing.key"}, env={})
    check = doctor_check(bad, Check)
    assert check.status == "fail" and "tls_key" in check.detail
    good.close()
    bad.close()

"""Audit forwarding: RFC 5424 messages, RFC 5425 framing, over a real TLS connection."""

import datetime as dt
import socket
import ssl
import threading
import xml.etree.ElementTree as ET

import pytest

from medsearch.audit import log as audit_log
from medsearch.audit.events import LoginEvent, SearchEvent
from medsearch.audit.syslog import SyslogForwarder, format_message, frame, parse_address
from medsearch.errors import ConfigError


def _read_frames(conn, n):
    buf, out = b"", []
    while len(out) < n:
        chunk = conn.recv(65536)
        if not chunk:
            break
        buf += chunk
        while b" " in buf:
            length, _, rest = buf.partition(b" ")
            if len(rest) < int(length):
                break
            out.append(rest[:int(length)])
            buf = rest[int(length):]
    return out


@pytest.fixture
def collector(tls_files):
    cert, key = tls_files
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    srv = socket.create_server(("127.0.0.1", 0))
    received = []

    def serve():
        conn, _ = srv.accept()
        with ctx.wrap_socket(conn, server_side=True) as tls:
            received.extend(_read_frames(tls, 2))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"localhost:{srv.getsockname()[1]}", str(cert), received, thread
    srv.close()


def test_events_reach_the_collector_over_tls(sqlite_instance, collector):
    address, ca, received, thread = collector
    fwd = SyslogForwarder(address, ca)
    audit_log.listeners.append(fwd)
    try:
        sqlite_instance.track(LoginEvent(actor="alice", remote_addr="10.0.0.1"))
        sqlite_instance.track(LoginEvent(actor="mallory", outcome="failure"))
        assert fwd.flush(10)
        thread.join(10)
    finally:
        fwd.close()
    assert fwd.sent == 2 and fwd.dropped == 0 and fwd not in audit_log.listeners
    first, second = received
    assert first.startswith(b"<85>1 ") and second.startswith(b"<84>1 ")  # authpriv.notice / warning
    header, _, msg = first.partition(b"\xef\xbb\xbf")
    assert b" medsearch - IHE+RFC-3881 [meta@32473 eventId=\"1\"] " in header
    xml = ET.fromstring(msg)
    assert xml.find("EventIdentification/EventID").get("csd-code") == "110114"


def test_unreachable_collector_never_blocks_and_counts_drops(sqlite_instance):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here
    fwd = SyslogForwarder(f"127.0.0.1:{port}", timeout=0.5)
    audit_log.listeners.append(fwd)
    try:
        sqlite_instance.track(SearchEvent(actor="alice", query="nodule"))
        assert fwd.flush(15)
    finally:
        fwd.close()
    assert fwd.dropped == 1 and fwd.sent == 0


def test_format_and_frame():
    msg = format_message(SearchEvent(actor="a", query="q"), 7, hostname="h",
                         now=dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc))
    assert msg.startswith(b"<85>1 2026-01-02T03:04:05.000000Z h medsearch - IHE+RFC-3881 ")
    assert frame(b"abc") == b"3 abc"


@pytest.mark.parametrize("address", ["collector", "collector:", ":514", "host:99999", "host:port"])
def test_bad_address_is_a_config_error(address):
    with pytest.raises(ConfigError, match="host:port"):
        parse_address(address)

"""Optional forwarding of audit events to a syslog collector: RFC 5424 over TLS (RFC 5425).

Each stored event becomes one RFC 5424 message whose MSG is its DICOM ATNA
audit message (the IHE ATNA convention), framed by octet counting as RFC 5425
requires.  Sending happens on a background thread from a bounded queue, so a
slow or absent collector never delays a request; the database chain remains
the record of truth, and ``medsearch audit export`` can resend anything lost.
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import socket
import ssl
import threading

from medsearch.audit import log as audit_log
from medsearch.audit.export import atna_message
from medsearch.errors import ConfigError

log = logging.getLogger(__name__)
FACILITY_AUTHPRIV = 10
SEVERITY = {"success": 5, "failure": 4}  # notice, warning
APP_NAME = "medsearch"
MSGID = "IHE+RFC-3881"


def parse_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError("syslog_address must be host:port.", "Set it like 'collector.hospital.local:6514'.")
    return host.strip("[]"), int(port)


def format_message(event, row_id: int, hostname: str | None = None, now: dt.datetime | None = None) -> bytes:
    """One RFC 5424 message (without transport framing) for an event object."""
    now = now or dt.datetime.now(dt.timezone.utc)
    ts = now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    pri = FACILITY_AUTHPRIV * 8 + SEVERITY.get(event.outcome, 3)
    host = (hostname or socket.gethostname() or "-")[:255]
    ev = {"id": row_id, "ts": ts, "event_type": event.event_type, "actor": event.actor,
          "outcome": event.outcome, "payload": event.payload()}
    header = f"<{pri}>1 {ts} {host} {APP_NAME} - {MSGID} [meta@32473 eventId=\"{row_id}\"] "
    # BOM: RFC 5424 6.4 marks a UTF-8 MSG.
    return header.encode("ascii", "replace") + b"\xef\xbb\xbf" + atna_message(ev)


def frame(message: bytes) -> bytes:
    """RFC 5425 octet-counting framing."""
    return str(len(message)).encode("ascii") + b" " + message


class SyslogForwarder:
    """A listener for :data:`medsearch.audit.log.listeners` that sends over TLS."""

    def __init__(self, address: str, ca_file: str = "", queue_size: int = 10000, timeout: float = 5.0):
        self.host, self.port = parse_address(address)
        self.context = ssl.create_default_context(cafile=ca_file or None)
        self.timeout = timeout
        self.queue: queue.Queue[bytes | None] = queue.Queue(maxsize=queue_size)
        self.dropped = 0
        self.sent = 0
        self._sock: ssl.SSLSocket | None = None
        self._thread = threading.Thread(target=self._run, name="audit-syslog", daemon=True)
        self._thread.start()

    def __call__(self, row_id: int, event) -> None:
        try:
            self.queue.put_nowait(frame(format_message(event, row_id)))
        except queue.Full:
            self.dropped += 1  # the chain in the database still has it

    def _connect(self) -> ssl.SSLSocket:
        raw = socket.create_connection((self.host, self.port), timeout=self.timeout)
        return self.context.wrap_socket(raw, server_hostname=self.host)

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                break
            for attempt in range(3):
                try:
                    if self._sock is None:
                        self._sock = self._connect()
                    self._sock.sendall(item)
                    self.sent += 1
                    break
                except OSError as exc:
                    self._close_socket()
                    if attempt == 2:
                        self.dropped += 1
                        log.warning("syslog forwarding failed (%s); the event stays in the database chain",
                                    exc.__class__.__name__)
            self.queue.task_done()

    def _close_socket(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until the queue is drained (tests, shutdown)."""
        done = threading.Event()
        threading.Thread(target=lambda: (self.queue.join(), done.set()), daemon=True).start()
        return done.wait(timeout)

    def close(self) -> None:
        self.queue.put(None)
        self._thread.join(timeout=5)
        self._close_socket()
        if self in audit_log.listeners:
            audit_log.listeners.remove(self)


_installed: dict[str, SyslogForwarder] = {}


def install_forwarder(settings) -> SyslogForwarder | None:
    """Register a forwarder when ``syslog_address`` is set (once per address)."""
    address = settings.syslog_address
    if not address:
        return None
    if address not in _installed:
        fwd = SyslogForwarder(address, getattr(settings, "syslog_ca_file", ""))
        audit_log.listeners.append(fwd)
        _installed[address] = fwd
    return _installed[address]

"""``medsearch scp``: a pynetdicom Storage SCP (C-ECHO, C-STORE) that feeds ingest.

- Accepts CT and MR storage SOP classes (enhanced and legacy-converted ones
  included) in the uncompressed, deflated and common lossless/lossy compressed
  transfer syntaxes; instances are spooled as received, never transcoded.
- Callers are checked against ``scp_allowed_callers`` (``AE`` or ``AE@host``)
  before any presentation context is negotiated: an unknown caller gets an
  A-ASSOCIATE-RJ (rejected-permanent, "calling AE title not recognized").
- Each instance is durable in the spool before its C-STORE response leaves
  (:meth:`medsearch.pacs.spool.Spool.put`).
- A series with no new instance for ``scp_quiet_seconds`` is sealed and queued
  as an ``IngestJob`` for ``medsearch worker``.
- Rejections are logged with the caller's AE title, address, the SOP class
  *name* and the status, never with a dataset value or a source UID.
"""

from __future__ import annotations

import io
import ipaddress
import logging
import socket
import ssl
import threading
import time
from dataclasses import dataclass

from pydicom import dcmread
from pydicom.uid import (
    UID, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian,
    JPEG2000, JPEG2000Lossless, JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLosslessSV1, JPEGLossless, JPEGLSLossless,
    JPEGLSNearLossless, RLELossless,
)
from pynetdicom import AE, evt
from pynetdicom.acse import ACSE
from pynetdicom.sop_class import (
    CTImageStorage, EnhancedCTImageStorage, EnhancedMRColorImageStorage, EnhancedMRImageStorage,
    LegacyConvertedEnhancedCTImageStorage, LegacyConvertedEnhancedMRImageStorage, MRImageStorage, Verification,
)
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from medsearch.errors import ConfigError, StorageError
from medsearch.pacs import queue
from medsearch.pacs.spool import Spool

log = logging.getLogger(__name__)

STORAGE_SOP_CLASSES: tuple[UID, ...] = (
    CTImageStorage, EnhancedCTImageStorage, LegacyConvertedEnhancedCTImageStorage,
    MRImageStorage, EnhancedMRImageStorage, EnhancedMRColorImageStorage, LegacyConvertedEnhancedMRImageStorage,
)
TRANSFER_SYNTAXES: tuple[UID, ...] = (
    ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian,
    JPEGLosslessSV1, JPEGLossless, JPEGLSLossless, JPEGLSNearLossless, JPEG2000Lossless, JPEG2000,
    RLELossless, JPEGBaseline8Bit, JPEGExtended12Bit,
)

# C-STORE statuses (PS3.4 Table B.2-1 and PS3.7 C.4.2.1.4)
SUCCESS = 0x0000
SOP_CLASS_NOT_SUPPORTED = 0x0122
OUT_OF_RESOURCES = 0xA700
DATASET_DOES_NOT_MATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
# A-ASSOCIATE-RJ: rejected-permanent, service-user, calling AE title not recognized
REJECT_UNKNOWN_CALLER = (0x01, 0x01, 0x03)

REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")


# --------------------------------------------------------------------------- callers
@dataclass(frozen=True)
class CallerPolicy:
    """Who may associate: ``{AE title: allowed addresses or None for any}``; empty means anyone."""

    rules: dict[str, frozenset[str] | None]

    @classmethod
    def parse(cls, entries: list[str], resolve=socket.getaddrinfo) -> "CallerPolicy":
        rules: dict[str, set[str] | None] = {}
        for entry in entries:
            ae, _, host = entry.strip().partition("@")
            if not ae or len(ae) > 16 or "\\" in ae or not ae.isprintable():
                raise ConfigError(f"scp_allowed_callers entry '{entry}' is not an AE title (1-16 characters).",
                                  "Write each entry as AE or AE@host, e.g. 'PACS1' or 'ORTHANC@10.0.0.5'.")
            if not host:
                rules[ae] = None
                continue
            try:
                addresses = {str(ipaddress.ip_address(host))}
            except ValueError:
                try:
                    addresses = {info[4][0] for info in resolve(host, None)}
                except OSError:
                    raise ConfigError(f"scp_allowed_callers entry '{entry}': host '{host}' does not resolve.",
                                      "Use an IP address, or a host name this machine can resolve.") from None
            if rules.get(ae, set()) is not None:
                rules[ae] = set(rules.get(ae) or ()) | addresses
        return cls({ae: (frozenset(v) if v is not None else None) for ae, v in rules.items()})

    def allows(self, ae_title: str, address: str) -> bool:
        if not self.rules:
            return True
        ae_title = ae_title.strip()
        if ae_title not in self.rules:
            return False
        hosts = self.rules[ae_title]
        if hosts is None:
            return True
        try:
            ip = ipaddress.ip_address(address)
            if ip.version == 6 and ip.ipv4_mapped:
                address = str(ip.ipv4_mapped)
        except ValueError:
            pass
        return address in hosts


class _CheckingACSE(ACSE):
    """ACSE that rejects callers outside the policy before any context is negotiated."""

    policy: CallerPolicy

    def _negotiate_as_acceptor(self) -> None:
        rq = self.requestor.primitive
        caller = (rq.calling_ae_title or "").strip()
        address = self.assoc.requestor.address
        if not self.policy.allows(caller, address):
            log.warning("association from %s@%s rejected: calling AE title not in scp_allowed_callers",
                        caller, address)
            self.requestor.ae_title = rq.calling_ae_title
            self.send_reject(*REJECT_UNKNOWN_CALLER)
            evt.trigger(self.assoc, evt.EVT_REJECTED, {})
            self.assoc.kill()
            return
        super()._negotiate_as_acceptor()


def _request_handler(policy: CallerPolicy):
    class CheckingRequestHandler(RequestHandler):
        def _create_association(self):
            assoc = super()._create_association()
            acse = _CheckingACSE(assoc)
            acse.policy = policy
            assoc.acse = acse
            return assoc

    return CheckingRequestHandler


# --------------------------------------------------------------------------- series completion
class Sealer(threading.Thread):
    """Seals each series after ``quiet`` seconds without a new instance, then queues it."""

    RECONCILE_EVERY = 10.0

    def __init__(self, inst, spool: Spool, quiet: float):
        super().__init__(daemon=True, name="medsearch-sealer")
        self.inst, self.spool, self.quiet = inst, spool, quiet
        self.stop = threading.Event()
        self._lock = threading.Lock()
        # After a restart, series still in incoming/ get a full quiet period from now: a sender that
        # lost its association in the crash can resend into the same folder before it is sealed.
        self._last: dict[str, float] = {key: time.time() for key in spool.incoming()}

    def touch(self, series_key: str) -> None:
        with self._lock:
            self._last[series_key] = time.time()

    def pending(self) -> int:
        with self._lock:
            return len(self._last)

    def seal_quiet(self, now: float | None = None) -> list[str]:
        now = time.time() if now is None else now
        with self._lock:
            due = [k for k, t in self._last.items() if now - t >= self.quiet]
            for k in due:
                del self._last[k]
        sealed = []
        for key in due:
            path = self.spool.seal(key)
            if path is None:
                continue
            sealed.append(path)
            try:
                queue.enqueue(self.inst, path, "scp")
                log.info("series %s complete; queued for ingest", key[:12])
            except Exception as exc:  # the database is down: reconcile() queues it later
                log.error("series %s sealed but not queued (%s); will retry", key[:12], type(exc).__name__)
        return sealed

    def run(self) -> None:
        last_reconcile = 0.0
        while not self.stop.wait(min(1.0, max(self.quiet / 4, 0.1))):
            try:
                self.seal_quiet()
                if time.monotonic() - last_reconcile > self.RECONCILE_EVERY:
                    queue.reconcile(self.inst, self.spool)
                    last_reconcile = time.monotonic()
            except Exception as exc:
                log.error("sealer pass failed (%s); retrying", type(exc).__name__)


# --------------------------------------------------------------------------- C-STORE
class StoreHandler:
    """The EVT_C_STORE handler: validate just enough, spool durably, then acknowledge."""

    def __init__(self, spool: Spool, sealer: Sealer):
        self.spool, self.sealer = spool, sealer
        self.stored = 0
        self.failed = 0

    def _fail(self, event, status: int, why: str) -> int:
        self.failed += 1
        cls = UID(event.request.AffectedSOPClassUID or "")
        log.warning("C-STORE from %s@%s failed with status 0x%04X (%s; SOP class %s)",
                    event.assoc.requestor.ae_title.strip(), event.assoc.requestor.address, status, why,
                    cls.name if cls.is_valid else "invalid")
        return status

    def __call__(self, event) -> int:
        rq = event.request
        if rq.AffectedSOPClassUID not in STORAGE_SOP_CLASSES:
            return self._fail(event, SOP_CLASS_NOT_SUPPORTED, "SOP class not supported")
        try:
            data = event.encoded_dataset()
            ds = dcmread(io.BytesIO(data), stop_before_pixels=False)
            uids = {k: str(ds.get(k, "") or "") for k in REQUIRED_UIDS}
            has_pixels = any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))
        except Exception as exc:  # any parse failure: the bytes are not a readable dataset
            return self._fail(event, CANNOT_UNDERSTAND, f"unreadable dataset ({type(exc).__name__})")
        missing = [k for k, v in uids.items() if not v or not UID(v).is_valid]
        if missing:
            return self._fail(event, DATASET_DOES_NOT_MATCH, f"missing or invalid {', '.join(missing)}")
        if uids["SOPClassUID"] != rq.AffectedSOPClassUID or uids["SOPInstanceUID"] != rq.AffectedSOPInstanceUID:
            return self._fail(event, DATASET_DOES_NOT_MATCH, "dataset UIDs differ from the C-STORE request")
        if not has_pixels:
            return self._fail(event, DATASET_DOES_NOT_MATCH, "image without pixel data")
        try:
            placed = self.spool.put(uids["SeriesInstanceUID"], uids["SOPInstanceUID"], data)
        except OSError as exc:  # disk full, permissions: the sender should retry later
            return self._fail(event, OUT_OF_RESOURCES, f"spool write failed ({exc.strerror or type(exc).__name__})")
        self.sealer.touch(placed.series_key)
        self.stored += 1
        return SUCCESS


def _log_association(event) -> None:
    rq = event.assoc.requestor
    rejected = sorted({UID(cx.abstract_syntax).name for cx in event.assoc.rejected_contexts})
    if rejected:
        # INFO, not WARNING: senders such as storescu propose every storage class they know.
        log.info("association from %s@%s: %d presentation contexts rejected (SOP class not supported): %s%s",
                 rq.ae_title.strip(), rq.address, len(rejected), ", ".join(rejected[:8]),
                 ", ..." if len(rejected) > 8 else "")
    log.info("association from %s@%s accepted", rq.ae_title.strip(), rq.address)


def _log_echo(event) -> int:
    log.info("C-ECHO from %s@%s", event.assoc.requestor.ae_title.strip(), event.assoc.requestor.address)
    return SUCCESS


def tls_context(settings) -> ssl.SSLContext | None:
    """The SCP's TLS context from scp_tls_cert/scp_tls_key (and scp_tls_ca for client certificates)."""
    if not settings.scp_tls_cert and not settings.scp_tls_key:
        return None
    if not (settings.scp_tls_cert and settings.scp_tls_key):
        raise ConfigError("Only one of scp_tls_cert and scp_tls_key is set.",
                          "Set both (PEM certificate and its private key), or neither for plain DICOM.")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(settings.scp_tls_cert, settings.scp_tls_key)
        if settings.scp_tls_ca:
            ctx.load_verify_locations(settings.scp_tls_ca)
            ctx.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"The SCP's TLS files cannot be loaded ({type(exc).__name__}).",
                          "Check scp_tls_cert, scp_tls_key and scp_tls_ca point to readable PEM files.") from None
    return ctx


# --------------------------------------------------------------------------- the receiver
class Receiver:
    """The running Storage SCP: the association server plus the sealer thread."""

    def __init__(self, inst, port: int | None = None, ae_title: str | None = None, host: str = "0.0.0.0",
                 quiet_seconds: float | None = None):
        s = inst.settings
        self.inst = inst
        self.ae_title = (ae_title or s.scp_ae_title).strip()
        if not self.ae_title or len(self.ae_title) > 16:
            raise ConfigError(f"The AE title '{self.ae_title}' is not 1-16 characters.",
                              "Set scp_ae_title (or --ae-title) to a short name such as MEDSEARCH.")
        self.address = (host, s.scp_port if port is None else port)
        self.policy = CallerPolicy.parse(s.scp_allowed_callers)
        self.ssl_context = tls_context(s)
        self.spool = Spool.for_instance(inst)
        self.quiet = float(s.scp_quiet_seconds if quiet_seconds is None else quiet_seconds)
        self._lock_file = None
        self.server = None
        self.sealer: Sealer | None = None
        self.handler: StoreHandler | None = None

    def _make_ae(self) -> AE:
        ae = AE(ae_title=self.ae_title)
        ae.maximum_pdu_size = self.inst.settings.scp_max_pdu
        ae.add_supported_context(Verification)
        for sop_class in STORAGE_SOP_CLASSES:
            ae.add_supported_context(sop_class, list(TRANSFER_SYNTAXES))
        return ae

    def start(self) -> "Receiver":
        self._lock_file = self.spool.lock_receiver()
        dropped = self.spool.clear_tmp()
        if dropped:
            log.info("dropped %d partial writes from an earlier crash (never acknowledged)", dropped)
        queue.reconcile(self.inst, self.spool)
        self.sealer = Sealer(self.inst, self.spool, self.quiet)
        self.handler = StoreHandler(self.spool, self.sealer)
        ae = self._make_ae()
        # pynetdicom's own DEBUG logging prints whole datasets: never let it reach our handlers.
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
        try:
            self.server = ae.make_server(
                self.address, ssl_context=self.ssl_context, server_class=ThreadedAssociationServer,
                evt_handlers=[(evt.EVT_C_STORE, self.handler), (evt.EVT_C_ECHO, _log_echo),
                              (evt.EVT_ACCEPTED, _log_association)],
                request_handler=_request_handler(self.policy))
            ae._servers.append(self.server)  # as start_server() does; shutdown() removes it
        except OSError as exc:
            self._lock_file.close()
            raise StorageError(f"The Storage SCP cannot listen on port {self.address[1]} ({exc.strerror}).",
                               "Pick a free port with --port or scp_port (below 1024 needs privileges).") from None
        self.sealer.start()
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True, name="medsearch-scp")
        self._thread.start()
        tls = "TLS" if self.ssl_context else "no TLS"
        log.info("Storage SCP %s listening on %s:%d (%s, quiet period %.0f s)", self.ae_title, self.address[0],
                 self.port, tls, self.quiet)
        return self

    @property
    def port(self) -> int:
        return self.server.server_address[1] if self.server else self.address[1]

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()  # also closes the socket
            self.server = None
        if self.sealer is not None:
            self.sealer.stop.set()
            self.sealer.join(timeout=5)
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def __enter__(self) -> "Receiver":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def run_scp(inst, port: int | None = None, ae_title: str | None = None) -> None:
    """Run the SCP in the foreground until SIGTERM or SIGINT."""
    import signal
    import warnings

    # pydicom's warnings about odd element values quote the values; the process-wide filter (safe
    # across association threads, unlike catch_warnings) keeps them out of the service's stderr.
    warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    receiver = Receiver(inst, port=port, ae_title=ae_title).start()
    try:
        while not stop.wait(1.0):
            pass
    finally:
        receiver.stop()
        log.info("Storage SCP stopped: %d instances stored, %d refused", receiver.handler.stored,
                 receiver.handler.failed)

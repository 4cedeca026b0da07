"""DICOMweb STOW-RS (PS3.18 10.5): ``POST /dicomweb/studies``.

The body (``multipart/related; type="application/dicom"``) is streamed to a
private spool folder, split into parts, and each part that parses as DICOM is
handed to :func:`medsearch.dicom.ingest.ingest_paths` (which de-identifies it).
The spool, which holds identifiable data, is removed whatever happens.

Answers: 200 all stored; 202 some failed (FailedSOPSequence lists them);
409 none stored; 400 malformed request; 415 wrong media type.  The response
body is ``application/dicom+json``; it echoes only the SOP Class/Instance UIDs
that the sender itself sent.
"""

from __future__ import annotations

import mmap
import secrets
import shutil
from pathlib import Path

from flask import Blueprint, Response, g, json, request

from medsearch.errors import InputError, MedsearchError
from medsearch.web.catalog import capability
from medsearch.web.instance import get_instance
from medsearch.web.security import roles

bp = Blueprint("dicomweb", __name__, url_prefix="/dicomweb")
# PS3.18 / PS3.4 failure reasons (0008,1197)
PROCESSING_FAILURE = 0x0110
CANNOT_UNDERSTAND = 0xC000
REFUSED = 0xA700  # out of resources / refused by policy
CHUNK = 1 << 20


STALE_SPOOL_SECONDS = 3600


def clear_stale_spool(inst) -> int:
    """Remove STOW spool folders a crashed request left behind (they hold identifiable data)."""
    import time

    root = inst.spool_dir / "stow"
    removed = 0
    if root.is_dir():
        for folder in root.iterdir():
            if time.time() - folder.stat().st_mtime > STALE_SPOOL_SECONDS:
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
    return removed


class UnsupportedMediaType(MedsearchError):
    http_status = 415
    code = "unsupported_media_type"


def boundary() -> bytes:
    mime = request.mimetype
    params = request.mimetype_params
    if mime != "multipart/related":
        raise UnsupportedMediaType(f"STOW-RS takes multipart/related, not '{mime[:40]}'.",
                                   'Send Content-Type: multipart/related; type="application/dicom"; boundary=...')
    part_type = (params.get("type") or "").lower()
    if part_type != "application/dicom":
        raise UnsupportedMediaType("Only the part type application/dicom is supported.",
                                   'Send Content-Type: multipart/related; type="application/dicom"; boundary=...')
    value = params.get("boundary")
    if not value or len(value) > 200:
        raise InputError("The multipart boundary is missing.", "Add boundary=... to the Content-Type header.")
    return value.encode("latin-1")


def _spool_body(dest: Path) -> Path:
    body = dest / "body"
    with body.open("wb") as fh:
        while True:
            chunk = request.stream.read(CHUNK)
            if not chunk:
                break
            fh.write(chunk)
    return body


def part_spans(buf, boundary: bytes) -> list[tuple[int, int, str]]:
    """(start, end, content type) of each part's payload in ``buf`` (bytes or an mmap)."""
    delim = b"--" + boundary
    spans: list[tuple[int, int, str]] = []
    if len(buf) == 0:
        raise InputError("The request body is empty.", "Send at least one DICOM part.")
    pos = buf.find(delim)
    if pos < 0:
        raise InputError("The body has no part with the declared boundary.", "Check the multipart encoding.")
    while True:
        pos += len(delim)
        if buf[pos:pos + 2] == b"--":
            break  # closing delimiter
        head_end = buf.find(b"\r\n\r\n", pos)
        nxt = buf.find(b"\r\n" + delim, pos)
        if head_end < 0 or nxt < 0 or head_end > nxt:
            raise InputError("A multipart part is malformed.", "Check the multipart encoding (CRLF line ends).")
        ctype = ""
        for line in bytes(buf[pos:head_end]).decode("latin-1").strip().split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-type":
                ctype = value.split(";")[0].strip().lower()
        spans.append((head_end + 4, nxt, ctype))
        pos = nxt + 2
    if not spans:
        raise InputError("The body has no parts.", "Send at least one DICOM part.")
    return spans


def split_parts(body: Path, boundary: bytes, out_dir: Path) -> list[tuple[Path, str]]:
    """Write each part's payload to ``out_dir``; return (path, content type) per part."""
    if body.stat().st_size == 0:
        raise InputError("The request body is empty.", "Send at least one DICOM part.")
    parts: list[tuple[Path, str]] = []
    with body.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        for start, end, ctype in part_spans(mm, boundary):
            path = out_dir / f"part{len(parts):05d}.dcm"
            path.write_bytes(mm[start:end])
            parts.append((path, ctype))
    return parts


def parts_in_memory(boundary: bytes, max_bytes: int) -> list[bytes]:
    """The DICOM parts of this request, read into memory only (for uploads that must never be stored)."""
    length = request.content_length
    if length is not None and length > max_bytes:
        raise InputError(f"The upload is larger than {max_bytes // 2**20} MiB.", "Send one series at a time.")
    data = request.stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise InputError(f"The upload is larger than {max_bytes // 2**20} MiB.", "Send one series at a time.")
    out = []
    for start, end, ctype in part_spans(data, boundary):
        if ctype not in ("application/dicom", ""):
            raise UnsupportedMediaType(f"A part has the type '{ctype[:40]}'.", "Send only application/dicom parts.")
        out.append(data[start:end])
    return out


def _uids(path: Path) -> tuple[str, str] | None:
    """(SOPClassUID, SOPInstanceUID) or None when the part is not DICOM."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID", "SOPInstanceUID"])
    except (InvalidDicomError, OSError, ValueError, EOFError, AttributeError, TypeError, KeyError):
        return None
    cls, inst = ds.get("SOPClassUID"), ds.get("SOPInstanceUID")
    return (str(cls), str(inst)) if cls and inst else None


def _item(uids: tuple[str, str], reason: int | None = None) -> dict:
    item = {"00081150": {"vr": "UI", "Value": [uids[0]]}, "00081155": {"vr": "UI", "Value": [uids[1]]}}
    if reason is not None:
        item["00081197"] = {"vr": "US", "Value": [reason]}
    return item


STORED_OUTCOMES = ("ingested", "already_ingested")


def file_outcomes(report, paths: list[Path]) -> dict[Path, bool]:
    """Which spooled files the ingest report counts as stored.

    The report names files by the SHA-256 of their bytes (it never keeps
    paths).  Outcomes without a hash (a series that was already stored, an
    unreadable file) are matched to the files that no hashed outcome names.
    """
    import hashlib

    by_sha = {f.sha256: f.outcome for f in report.files if f.sha256}
    unhashed = sorted((f.outcome for f in report.files if not f.sha256),
                      key=lambda o: o not in STORED_OUTCOMES)  # successes first: a duplicate is stored
    outcomes = {}
    for p in paths:
        sha = hashlib.sha256(p.read_bytes()).hexdigest()
        outcome = by_sha.get(sha)
        if outcome is None and unhashed:
            outcome = unhashed.pop(0)
        outcomes[p] = outcome in STORED_OUTCOMES
    return outcomes


@bp.route("/studies", methods=["POST"])
@roles("pacs", "admin")
def stow():
    bnd = boundary()
    ingest_paths = capability("medsearch.dicom.ingest", "ingest_paths", "ingest (issue 4)")
    inst = get_instance()
    spool = inst.spool_dir / "stow" / secrets.token_hex(8)
    spool.mkdir(parents=True, mode=0o700)
    try:
        parts = split_parts(_spool_body(spool), bnd, spool)
        (spool / "body").unlink()
        referenced, failed, to_ingest = [], [], []
        for path, ctype in parts:
            uids = _uids(path)
            if ctype not in ("application/dicom", "") or uids is None:
                failed.append(_item(uids or ("", ""), CANNOT_UNDERSTAND))
                path.unlink()
            else:
                to_ingest.append((path, uids))
        if to_ingest:
            report = ingest_paths(inst, [p for p, _ in to_ingest], source="stow", progress=False)
            stored = file_outcomes(report, [p for p, _ in to_ingest])
            for path, uids in to_ingest:
                (referenced if stored[path] else failed).append(
                    _item(uids) if stored[path] else _item(uids, PROCESSING_FAILURE))
    finally:
        shutil.rmtree(spool, ignore_errors=True)
    body = {}
    if referenced:
        body["00081199"] = {"vr": "SQ", "Value": referenced}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    status = 200 if not failed else (202 if referenced else 409)
    g.stow_counts = {"stored": len(referenced), "failed": len(failed)}
    return Response(json.dumps(body), status=status, mimetype="application/dicom+json")

"""Encryption at rest for the serialised index: chunked AES-256-GCM.

File layout::

    MAGIC (8 bytes) | header length (4, big endian) | header (JSON) | chunk 0 | chunk 1 | ...

The header is plaintext but authenticated (it is part of every chunk's AAD).
It holds only non-identifying values: the format version, the id of the
master key, the HKDF salt, the nonce prefix and the chunk size.  Each chunk is
``AESGCM(key).encrypt(nonce_prefix || chunk_index, plaintext, aad)`` where the
AAD binds the header, the chunk index and a "last chunk" flag, so that chunks
cannot be reordered, dropped, duplicated or truncated without detection.

Why chunks: AES-GCM in ``cryptography`` takes at most 2**31 bytes per call and
a 1M-vector index is ~1 GiB; chunking also bounds peak memory to one copy.

Why a derived key: the master key also wraps the vault's data keys; HKDF with
a per-file salt and a purpose label keeps the two uses independent.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from medsearch.errors import IntegrityError, KeyringError
from medsearch.keyring import key_id

MAGIC = b"MSIDXv1\n"
FORMAT = 1
CHUNK_BYTES = 64 * 1024 * 1024
_INFO = b"medsearch index at rest v1"
TAG_BYTES = 16

REBUILD_FIX = ("Run 'medsearch doctor' to see what is wrong, then 'medsearch index rebuild' to rebuild the index "
               "from the embeddings stored in the database.")


def _derive(master_key: bytes, salt: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=_INFO).derive(master_key)


def _aad(header: bytes, index: int, last: bool) -> bytes:
    return header + struct.pack(">QB", index, 1 if last else 0)


def _nonce(prefix: bytes, index: int) -> bytes:
    return prefix + struct.pack(">Q", index)


def seal(path: Path, master_key: bytes, payload: bytes | memoryview, chunk_bytes: int = CHUNK_BYTES) -> None:
    """Encrypt ``payload`` to ``path`` atomically (temp file, fsync, rename).

    Args:
        path: destination file; its folder must exist.
        master_key: the instance master key (32 bytes).
        payload: the plaintext (a serialised index).
        chunk_bytes: plaintext bytes per AES-GCM chunk.
    """
    salt = os.urandom(16)
    prefix = os.urandom(4)
    header = json.dumps({"format": FORMAT, "key_id": key_id(master_key), "salt": salt.hex(),
                         "nonce_prefix": prefix.hex(), "chunk_bytes": chunk_bytes},
                        sort_keys=True, separators=(",", ":")).encode("ascii")
    aead = AESGCM(_derive(master_key, salt))
    view = memoryview(payload)
    n_chunks = max(1, -(-len(view) // chunk_bytes))
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(MAGIC + struct.pack(">I", len(header)) + header)
            for i in range(n_chunks):
                chunk = bytes(view[i * chunk_bytes:(i + 1) * chunk_bytes])
                out.write(aead.encrypt(_nonce(prefix, i), chunk, _aad(header, i, i == n_chunks - 1)))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:  # make the rename itself durable
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _tampered(path: Path, what: str) -> IntegrityError:
    return IntegrityError(f"The encrypted index {path} failed its integrity check ({what}); it was modified, "
                          "truncated or corrupted, and it is not used.", REBUILD_FIX)


def read_header(path: Path) -> dict:
    """The authenticated-but-plaintext header of a sealed file (no key needed)."""
    with open(path, "rb") as f:
        head = f.read(len(MAGIC) + 4)
        if len(head) < len(MAGIC) + 4 or head[:len(MAGIC)] != MAGIC:
            raise _tampered(path, "not a medsearch index file")
        (length,) = struct.unpack(">I", head[len(MAGIC):])
        if length > 4096:
            raise _tampered(path, "header too long")
        raw = f.read(length)
    try:
        header = json.loads(raw.decode("ascii"))
        header["_raw"] = raw
        header["_offset"] = len(MAGIC) + 4 + length
        bytes.fromhex(header["salt"]), bytes.fromhex(header["nonce_prefix"]), int(header["chunk_bytes"])
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise _tampered(path, "unreadable header") from None
    if header.get("format") != FORMAT:
        raise _tampered(path, f"unknown format {header.get('format')!r}")
    return header


def unseal(path: Path, master_key: bytes) -> bytearray:
    """Decrypt and verify a file written by :func:`seal`; fail closed on any change.

    Raises:
        KeyringError: the file was encrypted under another master key.
        IntegrityError: the file was modified, truncated or corrupted.
    """
    header = read_header(path)
    if header["key_id"] != key_id(master_key):
        raise KeyringError(
            f"The index {path} was encrypted with master key id {header['key_id']}, but the current master key "
            f"has id {key_id(master_key)}.",
            "Restore the master key this instance was created with (keys/master.key or MEDSEARCH_MASTER_KEY); "
            "or, if that key is lost, run 'medsearch index rebuild' to re-encrypt the index under the current key.")
    raw = header["_raw"]
    aead = AESGCM(_derive(master_key, bytes.fromhex(header["salt"])))
    prefix = bytes.fromhex(header["nonce_prefix"])
    step = int(header["chunk_bytes"]) + TAG_BYTES
    out = bytearray()
    with open(path, "rb") as f:
        f.seek(header["_offset"])
        chunk = f.read(step)
        i = 0
        while True:
            nxt = f.read(step)
            last = not nxt
            try:
                out += aead.decrypt(_nonce(prefix, i), chunk, _aad(raw, i, last))
            except InvalidTag:
                raise _tampered(path, f"chunk {i} does not authenticate") from None
            if last:
                return out
            chunk, i = nxt, i + 1

"""The instance keyring: the master key and named secrets, as files of mode 0600.

* ``master.key`` wraps the vault's data keys and encrypts the index at rest.
  ``MEDSEARCH_MASTER_KEY`` (base64) overrides the file, so that the key can
  live in a secrets manager instead of on the same disk as the data.
* Named secrets (``pseudonym``, ``audit``, ``session``) key the pseudonym
  HMAC, the audit chain HMAC and the web session signer.  They are separate
  from the master key so that rotating the master key never changes a
  pseudonym or breaks the audit chain.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
import stat
from pathlib import Path

from medsearch.errors import KeyringError

KEY_BYTES = 32
SECRET_NAMES = ("pseudonym", "audit", "session")


def key_id(key: bytes) -> str:
    """A short, non-secret identifier of a key, stored beside what it encrypts."""
    return hashlib.sha256(b"medsearch-key-id" + key).hexdigest()[:16]


def _decode(text: str, where: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise KeyringError(f"The key in {where} is not valid base64.",
                           "Restore the key from your backup, or run 'medsearch init' on a new instance.") from None
    if len(key) != KEY_BYTES:
        raise KeyringError(f"The key in {where} has {len(key)} bytes; {KEY_BYTES} are required.",
                           "Restore the key from your backup.")
    return key


def write_key_file(path: Path, key: bytes) -> None:
    """Write a key atomically with mode 0600 (never briefly world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, base64.b64encode(key) + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def read_key_file(path: Path) -> bytes:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise KeyringError(f"Key file {path} is missing.",
                           "Run 'medsearch init' to create keys, or restore them from your backup.") from None
    except (PermissionError, UnicodeDecodeError):
        raise KeyringError(f"Key file {path} cannot be read.",
                           "Run medsearch as the user that owns the instance.") from None
    if mode & 0o077:
        raise KeyringError(f"Key file {path} is readable by other users (mode {mode:o}).",
                           f"Run 'chmod 600 {path}'.")
    return _decode(text, str(path))


class Keyring:
    def __init__(self, keys_dir: Path, master_key_file: Path, env: dict[str, str] | None = None):
        self.keys_dir = keys_dir
        self.master_key_file = master_key_file
        self._env = os.environ if env is None else env
        self._cache: dict[str, bytes] = {}

    @staticmethod
    def create(keys_dir: Path, master_key_file: Path) -> None:
        """Create any missing key file; existing keys are never overwritten."""
        keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(keys_dir, 0o700)
        if not master_key_file.exists():
            write_key_file(master_key_file, secrets.token_bytes(KEY_BYTES))
        for name in SECRET_NAMES:
            path = keys_dir / f"{name}.key"
            if not path.exists():
                write_key_file(path, secrets.token_bytes(KEY_BYTES))

    def master_key(self) -> bytes:
        if "master" not in self._cache:
            env_key = self._env.get("MEDSEARCH_MASTER_KEY")
            if env_key:
                self._cache["master"] = _decode(env_key, "MEDSEARCH_MASTER_KEY")
            else:
                self._cache["master"] = read_key_file(self.master_key_file)
        return self._cache["master"]

    def master_key_id(self) -> str:
        return key_id(self.master_key())

    def secret(self, name: str) -> bytes:
        if name not in SECRET_NAMES:
            raise KeyringError(f"Unknown secret '{name}'.", f"Use one of {', '.join(SECRET_NAMES)}.")
        if name not in self._cache:
            self._cache[name] = read_key_file(self.keys_dir / f"{name}.key")
        return self._cache[name]

    def forget(self) -> None:
        """Drop cached keys (after a rotation)."""
        self._cache.clear()

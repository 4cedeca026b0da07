"""The spool: received instances on disk, durable before they are acknowledged.

Layout under the instance's ``spool_dir`` (mode 0700; files 0600)::

    tmp/                              partial writes; emptied on start
    incoming/<series>/<instance>.dcm  instances of series still receiving
    sealed/<series>.<stamp>/          quiet series, each one ingest job
    pull/<source>.json                DICOMweb pull checkpoints

Folder and file names are keyed hashes (HMAC with the instance's pseudonym
secret) of the source UIDs: the spool's names, the job table and the logs
never carry a source UID.  The *contents* are the instances as received (they
hold PHI until ingest de-identifies them); a sealed folder is deleted once its
job is done.

Durability: an instance is written to ``tmp/``, fsynced, renamed into its
series folder, and the folder is fsynced; only then does :meth:`Spool.put`
return, so an acknowledged instance survives a crash or power loss.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import os
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from medsearch.errors import StorageError

TMP, INCOMING, SEALED, PULL = "tmp", "incoming", "sealed", "pull"
SUFFIX = ".dcm"


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (creations, renames, deletions) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_synced(tmp_dir: Path, data: bytes) -> Path:
    tmp = tmp_dir / f"{uuid.uuid4().hex}.part"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    return tmp


def write_durable(path: Path, data: bytes, tmp_dir: Path) -> None:
    """Write ``data`` to ``path`` atomically and durably (temp file, fsync, rename, fsync dir)."""
    tmp = _write_synced(tmp_dir, data)
    os.replace(tmp, path)
    fsync_dir(path.parent)


@dataclass(frozen=True)
class Placed:
    series_key: str
    path: Path


class Spool:
    """One instance's spool folder.  Thread-safe within a process."""

    def __init__(self, root: Path, secret: bytes):
        self.root = Path(root)
        self._secret = secret
        self._lock = threading.Lock()
        for sub in (TMP, INCOMING, SEALED, PULL):
            (self.root / sub).mkdir(parents=True, exist_ok=True, mode=0o700)

    @classmethod
    def for_instance(cls, inst) -> "Spool":
        return cls(inst.spool_dir, inst.keyring.secret("pseudonym"))

    # -- names
    def key(self, kind: str, uid: str) -> str:
        """A keyed hash of a source UID: stable, not reversible without the instance's secret."""
        msg = f"medsearch-spool\x00{kind}\x00{uid}".encode()
        return hmac.new(self._secret, msg, hashlib.sha256).hexdigest()[:32]

    def relative(self, path: Path) -> str:
        return Path(path).relative_to(self.root).as_posix()

    def resolve(self, relative: str) -> Path:
        path = (self.root / relative).resolve()
        if self.root.resolve() not in path.parents:
            raise StorageError(f"The spool path '{relative}' lies outside the spool.",
                               "Delete that ingest job; it was not written by medsearch.")
        return path

    # -- receiving
    def put(self, series_uid: str, sop_uid: str, data: bytes) -> Placed:
        """Store one encoded instance durably in its series' incoming folder."""
        series_key = self.key("series", series_uid)
        folder = self.root / INCOMING / series_key
        target = folder / (self.key("instance", sop_uid) + SUFFIX)
        tmp = _write_synced(self.root / TMP, data)
        # The lock orders mkdir + rename with seal(), which renames the whole folder; the
        # slow fsyncs stay outside it so that concurrent associations overlap them.
        with self._lock:
            if not folder.is_dir():
                folder.mkdir(mode=0o700)
                fsync_dir(folder.parent)
            os.replace(tmp, target)
            dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)  # still the same directory inode if seal() renamed it meanwhile
        finally:
            os.close(dir_fd)
        return Placed(series_key, target)

    def incoming(self) -> dict[str, float]:
        """Series still receiving, with the wall-clock time of their newest instance."""
        out = {}
        for folder in (self.root / INCOMING).iterdir():
            if folder.is_dir():
                mtimes = [f.stat().st_mtime for f in folder.iterdir()]
                out[folder.name] = max(mtimes, default=folder.stat().st_mtime)
        return out

    def seal(self, series_key: str) -> str | None:
        """Move a quiet series to ``sealed/``; returns its spool path (relative), or None if empty."""
        src = self.root / INCOMING / series_key
        with self._lock:
            if not src.is_dir():
                return None
            if not any(src.iterdir()):
                src.rmdir()
                return None
            dst = self.root / SEALED / f"{series_key}.{time.time_ns()}"
            os.rename(src, dst)
            fsync_dir(dst.parent)
            fsync_dir(src.parent)
        return self.relative(dst)

    def add_sealed(self, name: str, files: dict[str, bytes]) -> str:
        """Write a complete folder under ``sealed/`` durably; returns its spool path."""
        writer = self.sealed_writer(name)
        for fname, data in files.items():
            writer.write(fname, data)
        return writer.commit()

    def sealed_writer(self, name: str) -> "SealedWriter":
        """Stream files into a folder that appears under ``sealed/`` only when committed."""
        return SealedWriter(self, name)

    def sealed(self) -> list[str]:
        return sorted(self.relative(p) for p in (self.root / SEALED).iterdir() if p.is_dir())

    def files(self, relative: str) -> list[Path]:
        folder = self.resolve(relative)
        return sorted(p for p in folder.iterdir() if p.suffix == SUFFIX) if folder.is_dir() else []

    def remove(self, relative: str) -> None:
        folder = self.resolve(relative)
        if folder.exists():
            shutil.rmtree(folder)
            fsync_dir(folder.parent)

    def clear_tmp(self) -> int:
        """Remove partial writes left by a crash (never acknowledged, so safe to drop)."""
        n = 0
        for p in (self.root / TMP).iterdir():
            shutil.rmtree(p) if p.is_dir() else p.unlink()
            n += 1
        return n

    # -- exclusive receivers
    def lock_receiver(self):
        """Hold the spool's receiver lock: only one SCP may write a spool (it owns the quiet timers)."""
        fh = open(self.root / ".scp.lock", "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise StorageError(f"Another Storage SCP already receives into {self.root}.",
                               "Stop the other 'medsearch scp', or give this one its own instance.") from None
        return fh


class SealedWriter:
    """A folder staged in ``tmp/`` (each file fsynced), renamed into ``sealed/`` by :meth:`commit`."""

    def __init__(self, spool: Spool, name: str):
        self.spool, self.name = spool, name
        self.staging = spool.root / TMP / f"{name}.{uuid.uuid4().hex}"
        self.staging.mkdir(mode=0o700)
        self.count = 0

    def write(self, fname: str, data: bytes) -> None:
        os.replace(_write_synced(self.spool.root / TMP, data), self.staging / fname)
        self.count += 1

    def commit(self) -> str:
        fsync_dir(self.staging)
        dst = self.spool.root / SEALED / self.name
        if dst.exists():  # an earlier run sealed it but stopped before queueing: replace it
            shutil.rmtree(dst)
        os.rename(self.staging, dst)
        fsync_dir(dst.parent)
        return self.spool.relative(dst)

    def abort(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)

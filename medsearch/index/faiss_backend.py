"""The FAISS backend: an in-process index, chosen automatically, encrypted at rest.

Flat and HNSW indexes sit in an ``IndexIDMap2`` (vector id -> row, with
reconstruct by id); IVF indexes hold the ids themselves with a hashtable
direct map (see :func:`medsearch.index.choose.build` for why).  The structure
follows the collection's size (:mod:`medsearch.index.choose`): adding vectors
past a threshold retrains and rebuilds it from the vectors the index holds, or
from ``source`` (the embeddings stored in the database) when the index only
keeps lossy PQ codes.

Thread safety: one re-entrant lock per index guards every call; searches take
milliseconds, so serialising them is simpler than a reader-writer lock and
costs little.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import logging
import math
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import faiss
import numpy as np

from medsearch.index import choose
from medsearch.index.base import (
    VectorIndex, as_ids, as_vectors, check_add, check_k, empty_result, exact_topk,
)
from medsearch.index.choose import IndexSpec
from medsearch.index.crypto import REBUILD_FIX, seal, unseal
from medsearch.errors import ConfigError, IntegrityError

log = logging.getLogger(__name__)

#: Below this many allowed ids, a filtered search on an approximate index scores
#: the allowed vectors exactly: a selective filter would otherwise leave the
#: probed IVF lists (or HNSW neighbourhoods) with too few allowed vectors.
SUBSET_EXACT = 16384
_META = b"MSIDXMETA"

#: yields (ids int64 (b,), vectors float32 (b, dim)) batches of every stored vector
Source = Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]


class FaissIndex(VectorIndex):
    """A FAISS index of L2-normalised vectors under inner product.

    Args:
        kind: "auto" or one of flat / ivf / hnsw / ivfpq.
        flat_threshold: below this size "auto" uses an exact flat index.
        memory_budget_mb: "auto" compresses with IVF-PQ when raw vectors exceed it.
        target_recall: recall@10 that nprobe / efSearch are tuned to.
        source: where to read every stored vector when the index must be rebuilt
            from exact vectors (None: reconstruct them from the index itself).
        path: the encrypted file that :meth:`save` writes and :meth:`load` reads.
        master_key: returns the instance master key (called at save/load time).
    """

    def __init__(self, kind: str = "auto", flat_threshold: int = 20000, memory_budget_mb: int = 4096,
                 target_recall: float = 0.97, source: Source | None = None, path: Path | None = None,
                 master_key: Callable[[], bytes] | None = None):
        self.kind = kind
        self.path = path
        self._master_key = master_key
        self.flat_threshold = flat_threshold
        self.memory_budget_mb = memory_budget_mb
        self.target_recall = target_recall
        self.source = source
        self.spec: IndexSpec | None = None
        self.tuned_recall: float | None = None
        self._index: faiss.Index | None = None
        self._ids: np.ndarray | None = None  # sorted cache of held ids
        self._lock = threading.RLock()
        self.generation = 0
        self.saved_generation = 0
        self._save_lock = threading.RLock()
        self._lock_depth = 0
        self.file_signature: tuple | None = None

    # ------------------------------------------------------------------ introspection
    @property
    def dim(self) -> int | None:
        return self.spec.dim if self.spec else None

    def __len__(self) -> int:
        return int(self._index.ntotal) if self._index is not None else 0

    def ids(self) -> np.ndarray:
        with self._lock:
            if self._ids is None:
                self._ids = np.sort(self._collect_ids())
            return self._ids

    def _collect_ids(self) -> np.ndarray:
        if self._index is None:
            return np.zeros(0, dtype=np.int64)
        if isinstance(self._index, faiss.IndexIDMap2):
            return faiss.vector_to_array(self._index.id_map).astype(np.int64)
        invlists = faiss.extract_index_ivf(self._index).invlists
        parts = []
        for lst in range(invlists.nlist):
            size = invlists.list_size(lst)
            if size:
                parts.append(faiss.rev_swig_ptr(invlists.get_ids(lst), size).copy())
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)

    def contains(self, ids) -> np.ndarray:
        """Boolean mask: which of ``ids`` the index holds."""
        ids, held = as_ids(ids), self.ids()
        pos = np.searchsorted(held, ids)
        return (pos < len(held)) & (held[np.minimum(pos, max(len(held) - 1, 0))] == ids) if len(held) else \
            np.zeros(len(ids), dtype=bool)

    def vectors(self, ids) -> np.ndarray:
        """The stored vectors of ``ids`` (all must be held); PQ indexes return decoded approximations."""
        ids = as_ids(ids)
        with self._lock:
            if not len(ids):
                return np.zeros((0, self.dim or 0), dtype=np.float32)
            return self._index.reconstruct_batch(ids)

    def stats(self) -> dict:
        with self._lock:
            spec = self.spec
            n = len(self)
            size = choose.estimate_bytes(spec, n) if spec else 0
            return {"backend": "faiss", "kind": spec.kind if spec else None, "count": n,
                    "dim": self.dim, "bytes": size, "bytes_per_vector": size / n if n else 0.0,
                    "nlist": spec.nlist if spec else 0, "probe": spec.probe if spec else 0,
                    "pq_m": spec.pq_m if spec else 0, "planned_for": spec.planned_for if spec else 0,
                    "tuned_recall": self.tuned_recall, "generation": self.generation}

    # ------------------------------------------------------------------ mutation
    def _changed(self) -> None:
        self._ids = None
        self.generation += 1

    def add(self, ids, vectors) -> None:
        ids, vectors = check_add(ids, vectors, self.dim)
        if not len(ids):
            return
        with self._lock:
            if self._index is not None:
                self.remove(ids[self.contains(ids)])  # add() replaces: a re-encoded volume keeps its id
            n_after = len(self) + len(ids)
            if self._index is None:
                self._rebuild(ids, vectors)
            elif choose.needs_rebuild(self.spec, n_after, self.kind, self.flat_threshold, self.memory_budget_mb):
                old_ids, old_vectors = self._all_vectors()
                self._rebuild(np.concatenate([old_ids, ids]), np.concatenate([old_vectors, vectors]))
            else:
                self._index.add_with_ids(vectors, ids)
            self._changed()

    def remove(self, ids) -> int:
        ids = np.unique(as_ids(ids))
        with self._lock:
            if self._index is None or not len(ids):
                return 0
            ids = ids[self.contains(ids)]
            if not len(ids):
                return 0
            if self.spec.kind == "hnsw":
                # HNSW cannot delete; erasure must remove the vector bytes, so rebuild without them
                keep = self.ids()[~np.isin(self.ids(), ids)]
                self._rebuild(keep, self.vectors(keep), quiet=True)
                removed = len(ids)
            elif self.spec.kind == "flat":
                removed = self._index.remove_ids(faiss.IDSelectorBatch(len(ids), faiss.swig_ptr(ids)))
            else:  # the IVF hashtable direct map only removes through an IDSelectorArray
                removed = self._index.remove_ids(faiss.IDSelectorArray(len(ids), faiss.swig_ptr(ids)))
            self._changed()
            return int(removed)

    def _all_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """Every held vector, exact: from ``source`` if set, else reconstructed from the index."""
        if self._index is None:
            return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32)
        if self.source is not None:
            held = self.ids()
            parts = [(i, v) for i, v in self.source() if len(i)]
            ids = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, dtype=np.int64)
            vecs = np.concatenate([p[1] for p in parts]) if parts else np.zeros((0, self.dim), np.float32)
            mask = np.isin(ids, held)  # the source may already hold rows not yet added here
            if mask.sum() == len(held):
                return ids[mask], vecs[mask]
            log.warning("index source lacks %d held vectors; reconstructing from the index",
                        len(held) - int(mask.sum()))
        held = self.ids()
        return held, self.vectors(held)

    def rebuild(self, ids, vectors) -> None:
        """Replace the whole content by ``vectors`` (chooses, trains and tunes a fresh structure)."""
        ids, vectors = check_add(ids, vectors, None)
        with self._lock:
            self._rebuild(ids, vectors)
            self._changed()

    def _rebuild(self, ids: np.ndarray, vectors: np.ndarray, quiet: bool = False) -> None:
        if not len(ids):
            self._index, self.spec, self.tuned_recall = None, None, None
            return
        dim = vectors.shape[1]
        spec = choose.choose_spec(len(ids), dim, self.kind, self.flat_threshold, self.memory_budget_mb)
        if self.spec is not None and self.spec.kind == spec.kind == "hnsw" and quiet:
            spec = self.spec  # keep the tuned efSearch across deletions
        if not quiet:
            log.info("building a %s index for %d vectors (dim %d)", spec.kind, len(ids), dim)
        index = choose.build(spec)
        choose.train(index, spec, vectors)
        index.add_with_ids(vectors, ids)
        recall = 1.0
        if spec.kind != "flat" and not quiet:
            spec, recall = choose.tune_probe(index, spec, ids, vectors, self.target_recall)
        self._index, self.spec, self.tuned_recall = index, spec, recall

    # ------------------------------------------------------------------ search
    def search(self, queries, k: int, allowed=None) -> tuple[np.ndarray, np.ndarray]:
        k = check_k(k)
        with self._lock:
            queries = as_vectors(queries, self.dim)
            if self._index is None or len(self) == 0:
                return empty_result(len(queries), k)
            if allowed is None:
                if self.spec.kind in choose.IVF_KINDS:
                    params = faiss.SearchParametersIVF(nprobe=self._nprobe(k, len(self)))
                    return _pad(*self._index.search(queries, k, params=params))
                if self.spec.kind == "hnsw":  # the beam must be at least k wide to return k results
                    params = faiss.SearchParametersHNSW(efSearch=max(self.spec.probe, 2 * k))
                    return _pad(*self._index.search(queries, k, params=params))
                return _pad(*self._index.search(queries, k))
            allowed = np.unique(as_ids(allowed))
            allowed = allowed[self.contains(allowed)]
            if not len(allowed):
                return empty_result(len(queries), k)
            if self.spec.kind != "flat" and len(allowed) <= SUBSET_EXACT:
                return exact_topk(queries, allowed, self.vectors(allowed), k)
            return _pad(*self._selected_search(queries, k, allowed))

    def _selected_search(self, queries, k, allowed):
        selector = faiss.IDSelectorBatch(len(allowed), faiss.swig_ptr(allowed))
        spec = self.spec
        if spec.kind == "flat":
            params = faiss.SearchParameters(sel=selector)
        elif spec.kind == "hnsw":
            # a filter keeping a fraction f of the vectors leaves f of each neighbourhood: explore 1/f more
            ef = math.ceil(max(spec.probe, 2 * k) * len(self) / len(allowed))
            params = faiss.SearchParametersHNSW(sel=selector, efSearch=int(min(4096, ef)))
        else:
            params = faiss.SearchParametersIVF(sel=selector, nprobe=self._nprobe(k, len(allowed)))
        return self._index.search(queries, k, params=params)

    def _nprobe(self, k: int, eligible: int) -> int:
        """IVF lists to probe so that the probed lists hold both the tuned share and ~2k eligible vectors.

        The tuned nprobe is for k = 10 over the whole collection.  With ``eligible`` of the ``n`` vectors
        allowed, each list holds on average ``eligible / nlist`` of them: probing ``probe * n / eligible``
        lists keeps the tuned recall, and at least ``2k * nlist / eligible`` lists are needed to have
        k candidates at all (a search for N = 1000 candidates on a 20k collection, for instance).
        """
        spec = self.spec
        widened = spec.probe * len(self) / eligible
        enough = 2 * k * spec.nlist / eligible
        return int(min(spec.nlist, math.ceil(max(widened, enough))))

    # ------------------------------------------------------------------ persistence
    def to_bytes(self) -> bytes:
        with self._lock:
            meta = {"spec": self.spec.to_dict() if self.spec else None, "kind": self.kind,
                    "tuned_recall": self.tuned_recall}
            raw = json.dumps(meta, sort_keys=True).encode("utf-8")
            body = faiss.serialize_index(self._index).tobytes() if self._index is not None else b""
            return _META + struct.pack(">I", len(raw)) + raw + body

    def load_bytes(self, data: bytes | bytearray, origin: str = "index") -> None:
        """Replace the content by a :meth:`to_bytes` payload (already authenticated)."""
        view = memoryview(data)
        try:
            if bytes(view[:len(_META)]) != _META:
                raise ValueError("bad magic")
            (length,) = struct.unpack(">I", view[len(_META):len(_META) + 4])
            start = len(_META) + 4
            meta = json.loads(bytes(view[start:start + length]).decode("utf-8"))
            body = view[start + length:]
            index = faiss.deserialize_index(np.frombuffer(body, dtype=np.uint8)) if len(body) else None
            spec = IndexSpec.from_dict(meta["spec"]) if meta["spec"] else None
        except (ValueError, KeyError, TypeError, RuntimeError, struct.error, json.JSONDecodeError):
            raise IntegrityError(f"The {origin} decrypted but its content is not a medsearch index.",
                                 REBUILD_FIX) from None
        with self._lock:
            self._index, self.spec, self.tuned_recall = index, spec, meta.get("tuned_recall")
            self._changed()

    def _where(self) -> tuple[Path, bytes]:
        if self.path is None or self._master_key is None:
            raise ConfigError("This index has no file or key to persist with.",
                              "Create it with path= and master_key=, or use medsearch.index.get_index(inst).")
        return self.path, self._master_key()

    def save(self) -> None:
        """Encrypt the index to its file (AES-256-GCM, atomic replace)."""
        path, key = self._where()
        with self._lock:
            payload = self.to_bytes()
            generation = self.generation
        with self.locked():
            seal(path, key, payload)
            self.file_signature = _signature(path)
        self.saved_generation = generation

    def load(self) -> None:
        """Read and verify the index file; fails closed (IntegrityError / KeyringError)."""
        path, key = self._where()
        with self.locked():
            signature = _signature(path)
            self.load_bytes(unseal(path, key), origin=f"index {path}")
        self.file_signature = signature
        self.saved_generation = self.generation

    def stale(self) -> bool:
        """Whether another process saved the file since this object last read or wrote it."""
        return self.path is not None and _signature(self.path) != self.file_signature

    @contextlib.contextmanager
    def writing(self):
        """Lock, reload if another process saved since, yield, then save if changed."""
        with self.locked():
            if self.stale() and self.path.exists():
                self.load()
            yield self
            if self.dirty or not self.path.exists():
                self.save()

    @contextlib.contextmanager
    def locked(self):
        """Hold the index's write lock: one writer at a time across threads and processes.

        Re-entrant within this object.  Writers take it around "reload, change, save" so
        that two processes (the worker and the web server) never overwrite each other.
        """
        path, _ = self._where()
        with self._save_lock:
            self._lock_depth += 1
            try:
                if self._lock_depth == 1:
                    with file_lock(path):
                        yield self
                else:
                    yield self
            finally:
                self._lock_depth -= 1

    @property
    def dirty(self) -> bool:
        """Whether there are changes not yet saved."""
        return self.generation != self.saved_generation


@contextlib.contextmanager
def file_lock(path: Path):
    """An exclusive advisory lock beside ``path`` (POSIX flock)."""
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _signature(path: Path) -> tuple | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _pad(scores: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = scores.astype(np.float32, copy=True)
    scores[ids < 0] = -np.inf
    return scores, ids.astype(np.int64, copy=False)

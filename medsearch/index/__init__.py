"""The vector index: one interface (:mod:`medsearch.index.base`), two backends.

* ``get_index(inst)``: the instance's index, opened lazily, cached per
  instance, reloaded when another process saved it, and reconciled with the
  database when first opened (:mod:`medsearch.index.dbsync`).
* ``writing(inst)``: a context manager for writers: it takes the index's lock,
  reloads a file another process changed, and saves on exit.
* ``sync(inst)``: call after committing embeddings (adds what the DB lists).
* ``rebuild(inst)``: rebuild from the embeddings stored in the database.

Nothing is loaded at import time.
"""

from __future__ import annotations

import contextlib
import threading
import weakref

_cache: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_cache_lock = threading.Lock()

INDEX_FILE = "vectors.msidx"
MILVUS_FILE = "milvus.db"
MILVUS_COLLECTION = "medsearch_vectors"


def index_path(inst):
    return inst.index_dir / INDEX_FILE


def new_index(inst, fresh: bool = False):
    """An index object for ``inst`` per its settings, not yet loaded (``fresh``: an empty one)."""
    settings = inst.settings
    if settings.index_backend == "milvus":
        from medsearch.index.milvus_backend import MilvusIndex

        uri = settings.milvus_uri or str(inst.index_dir / MILVUS_FILE)
        return MilvusIndex(uri, MILVUS_COLLECTION, flat_threshold=settings.index_flat_threshold, fresh=fresh)
    from medsearch.index.faiss_backend import FaissIndex
    from medsearch.index.dbsync import stored_vectors

    inst.index_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    # a weak reference: the cache maps instance -> index weakly, so the index must not keep the instance alive
    owner = weakref.ref(inst)
    return FaissIndex(kind=settings.index_kind, flat_threshold=settings.index_flat_threshold,
                      memory_budget_mb=settings.index_memory_budget_mb,
                      target_recall=settings.index_target_recall,
                      source=lambda: stored_vectors(owner()), path=index_path(inst),
                      master_key=inst.keyring.master_key)


def open_index(inst):
    """Open the instance's index: load the file (fails closed), then reconcile with the database."""
    from medsearch.index.dbsync import reconcile

    index = new_index(inst)
    with index.writing() as idx:
        reconcile(inst, idx)
    return index


def get_index(inst):
    """The instance's index, cached per instance; reloaded when another process saved it."""
    with _cache_lock:
        index = _cache.get(inst)
        if index is None:
            index = _cache[inst] = open_index(inst)
        elif index.stale():
            with index.writing():
                pass
        return index


def forget_index(inst) -> None:
    """Drop the cached index of ``inst`` (after a rebuild, or to release memory)."""
    with _cache_lock:
        index = _cache.pop(inst, None)
    if index is not None:
        index.close()


@contextlib.contextmanager
def writing(inst):
    """``with writing(inst) as index: index.add(...)``: locked, fresh, saved on exit."""
    index = get_index(inst)
    with index.writing() as idx:
        yield idx


def sync(inst, progress: bool = False):
    from medsearch.index.dbsync import sync as _sync

    return _sync(inst, progress=progress)


def rebuild(inst, progress: bool = True) -> dict:
    from medsearch.index.dbsync import rebuild as _rebuild

    return _rebuild(inst, progress=progress)

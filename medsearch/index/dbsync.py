"""Keeping the index consistent with the database: reconcile and rebuild.

The database is the source of truth.  ``volumes.vector_id`` lists the vectors
that must be indexed and ``volumes.embedding`` keeps each one (float32 bytes),
so the index is a derived, rebuildable structure.  Writers follow one order:

* adding: commit the Volume row (embedding + vector_id) first, then
  :func:`sync` (or ``index.add`` + ``save``);
* removing (erasure): commit the deletion first, then remove from the index.

A crash between the two steps leaves the index behind the database, never
ahead of it with data the database has dropped: :func:`reconcile` adds the
missing vectors from their stored embeddings and drops the ids the database
no longer lists.  :func:`medsearch.index.get_index` reconciles when it opens
the index, ``medsearch doctor`` reports a disagreement, and
``medsearch index rebuild`` rebuilds from scratch.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from sqlalchemy import select
from tqdm import tqdm

from medsearch.errors import InputError

log = logging.getLogger(__name__)
BATCH = 4096
#: ids per SQL IN (...) clause; keeps statements well under every driver's limit
IN_CHUNK = 900


def db_vector_ids(inst, with_embedding: bool | None = None) -> np.ndarray:
    """Sorted vector ids the database lists (optionally only those with/without a stored embedding)."""
    from medsearch.store.models import Volume

    query = select(Volume.vector_id).where(Volume.vector_id.is_not(None))
    if with_embedding is True:
        query = query.where(Volume.embedding.is_not(None))
    elif with_embedding is False:
        query = query.where(Volume.embedding.is_(None))
    with inst.sessions() as s:
        ids = np.fromiter(s.scalars(query), dtype=np.int64)
    return np.sort(ids)


def decode_embedding(raw: bytes) -> np.ndarray:
    if not raw or len(raw) % 4:
        raise InputError(f"A stored embedding has {len(raw or b'')} bytes, not a whole number of float32.",
                         "Re-encode the affected volumes.")
    return np.frombuffer(raw, dtype=np.float32)


def stored_vectors(inst, ids=None, batch: int = BATCH, progress: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(ids int64 (b,), vectors float32 (b, dim))`` from ``volumes.embedding``.

    Args:
        ids: only these vector ids (None: every encoded volume).
    """
    from medsearch.store.models import Volume

    def rows(where):
        query = (select(Volume.vector_id, Volume.embedding)
                 .where(Volume.vector_id.is_not(None), Volume.embedding.is_not(None), *where)
                 .order_by(Volume.vector_id))
        with inst.sessions() as s:
            yield from s.execute(query.execution_options(yield_per=batch))

    if ids is None:
        sources = [rows(())]
        total = len(db_vector_ids(inst, with_embedding=True)) if progress else None
    else:
        ids = np.asarray(ids, dtype=np.int64)
        total = len(ids)
        sources = [rows((Volume.vector_id.in_([int(i) for i in ids[i:i + IN_CHUNK]]),))
                   for i in range(0, len(ids), IN_CHUNK)]
    bar = tqdm(total=total, desc="reading embeddings", unit="vec", disable=not progress)
    got_ids: list[int] = []
    got_vecs: list[np.ndarray] = []
    for source in sources:
        for vector_id, raw in source:
            got_ids.append(vector_id)
            got_vecs.append(decode_embedding(raw))
            if len(got_ids) >= batch:
                bar.update(len(got_ids))
                yield np.asarray(got_ids, dtype=np.int64), _stack(got_vecs)
                got_ids, got_vecs = [], []
    if got_ids:
        bar.update(len(got_ids))
        yield np.asarray(got_ids, dtype=np.int64), _stack(got_vecs)
    bar.close()


def _stack(vecs: list[np.ndarray]) -> np.ndarray:
    if len({v.shape[0] for v in vecs}) != 1:
        raise InputError("Stored embeddings have different dimensions (volumes encoded by different models).",
                         "Re-encode every volume with the current model, then run 'medsearch index rebuild'.")
    return np.stack(vecs).astype(np.float32, copy=False)


@dataclass
class SyncReport:
    added: int = 0
    removed: int = 0
    unrecoverable: int = 0  # listed in the DB without a stored embedding
    rebuilt: bool = False

    @property
    def changed(self) -> bool:
        return bool(self.added or self.removed or self.rebuilt)


def reconcile(inst, index, progress: bool = False) -> SyncReport:
    """Make ``index`` hold exactly the database's encoded vectors (the caller saves)."""
    report = SyncReport()
    wanted = db_vector_ids(inst, with_embedding=True)
    report.unrecoverable = len(db_vector_ids(inst, with_embedding=False))
    held = index.ids()
    extra = np.setdiff1d(held, wanted, assume_unique=True)
    missing = np.setdiff1d(wanted, held, assume_unique=True)
    if len(extra):
        report.removed = index.remove(extra)
    if len(missing) and len(missing) >= len(held) - len(extra) and hasattr(index, "rebuild"):
        # more to add than kept: one fresh build beats growth-triggered retrains
        all_ids, all_vecs = _collect(stored_vectors(inst, progress=progress))
        index.rebuild(all_ids, all_vecs)
        report.added, report.rebuilt = len(missing), True
    elif len(missing):
        for ids, vecs in stored_vectors(inst, ids=missing, progress=progress):
            index.add(ids, vecs)
            report.added += len(ids)
    if report.changed:
        log.warning("index reconciled with the database: %d added, %d removed", report.added, report.removed)
    return report


def _collect(batches) -> tuple[np.ndarray, np.ndarray]:
    parts = list(batches)
    if not parts:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 1), dtype=np.float32)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def sync(inst, progress: bool = False) -> SyncReport:
    """Reconcile the instance's index with the database and save it.  Call after committing embeddings."""
    from medsearch.index import writing

    with writing(inst) as index:
        return reconcile(inst, index, progress=progress)


def rebuild(inst, progress: bool = True) -> dict:
    """Rebuild the index from scratch from ``volumes.embedding`` and save it (``medsearch index rebuild``).

    A damaged or undecryptable index file is replaced, not read.
    """
    from medsearch.index import forget_index, new_index

    index = new_index(inst, fresh=True)
    ids, vecs = _collect(stored_vectors(inst, progress=progress))
    if len(ids):
        index.rebuild(ids, vecs)
    index.save()  # an empty index is written too, so that doctor finds a file
    forget_index(inst)
    stats = index.stats()
    stats["unrecoverable"] = len(db_vector_ids(inst, with_embedding=False))
    index.close()
    return stats

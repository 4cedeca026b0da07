"""``medsearch doctor``'s index check: the index holds exactly the database's vectors.

It reads the index file as it is on disk (no repair), so that a crash between
a database commit and an index save shows up here until it is repaired, by
``medsearch index rebuild`` or by the next process that opens the index.
"""

from __future__ import annotations

import numpy as np

from medsearch.errors import MedsearchError

FIX = "Run 'medsearch index rebuild' to rebuild the index from the embeddings stored in the database."


def _index_ids(inst) -> tuple[np.ndarray | None, str]:
    """(ids held by the stored index or None when there is no index yet, a description)."""
    from medsearch.index import index_path, new_index

    if inst.settings.index_backend == "faiss" and not index_path(inst).exists():
        return None, "no index file"
    index = new_index(inst)
    try:
        if inst.settings.index_backend == "faiss":
            index.load()
        stats = index.stats()
        return index.ids(), f"{stats['kind']} index of {stats['count']} vectors"
    finally:
        index.close()


def doctor_check(inst, Check):
    from medsearch.index.dbsync import db_vector_ids

    listed = db_vector_ids(inst)
    unrecoverable = len(db_vector_ids(inst, with_embedding=False))
    try:
        held, what = _index_ids(inst)
    except MedsearchError as exc:
        return Check("index", "fail", exc.problem, exc.fix or FIX)
    if held is None:
        if len(listed):
            return Check("index", "fail", f"{len(listed)} vectors recorded in the database but there is no index file",
                         FIX)
        return Check("index", "ok", "empty (no encoded volumes yet)")
    missing = np.setdiff1d(listed, held, assume_unique=True)
    extra = np.setdiff1d(held, listed, assume_unique=True)
    if len(missing) or len(extra):
        detail = (f"{what}: {len(missing)} vectors recorded in the database are missing from the index, "
                  f"{len(extra)} indexed vectors are not in the database")
        fix = FIX
        if unrecoverable:
            detail += f"; {unrecoverable} recorded vectors have no stored embedding"
            fix += " Volumes without a stored embedding must be re-encoded first."
        return Check("index", "fail", detail, fix)
    return Check("index", "ok", f"{what}, in agreement with the database")

"""The vector-index interface shared by every backend, and input checks.

Vectors are float32, L2-normalised embeddings; similarity is the inner product.
A vector id is ``volumes.vector_id`` (by convention equal to ``volumes.id``),
so an id maps to one Volume row and through it to a Series and a Study (see
:mod:`medsearch.index.mapping`).

``search`` follows faiss's convention: it returns ``(scores, ids)``, both of
shape ``(n_queries, k)``, best first, padded with score ``-inf`` and id ``-1``
when fewer than ``k`` vectors qualify.  ``allowed`` restricts the search to a
set of ids (filters, policy, a user's sites); results never contain another id.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable

import numpy as np

from medsearch.errors import InputError

#: faiss's sentinel for "no result"
NO_ID = -1


class VectorIndex(abc.ABC):
    """One interface, several backends (FAISS in-process, Milvus)."""

    #: incremented on every change, so that caches (the hot-query cache) can invalidate
    generation: int = 0

    @property
    @abc.abstractmethod
    def dim(self) -> int | None:
        """Vector dimension, or None while the index is empty and untyped."""

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def add(self, ids, vectors) -> None:
        """Add (or replace) vectors.

        Args:
            ids: int64 array (n,) of vector ids, unique, >= 0.
            vectors: float32 array (n, dim).
        """

    @abc.abstractmethod
    def remove(self, ids) -> int:
        """Remove vectors by id (unknown ids are ignored); returns how many were removed."""

    @abc.abstractmethod
    def search(self, queries, k: int, allowed=None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` inner-product search.

        Args:
            queries: float32 array (nq, dim), or (dim,) for one query.
            k: results per query.
            allowed: None for all ids, else an iterable of the ids that may be returned.

        Returns:
            (scores float32 (nq, k), ids int64 (nq, k)), best first, padded with -inf / -1.
        """

    @abc.abstractmethod
    def ids(self) -> np.ndarray:
        """All vector ids held, sorted (int64)."""

    @abc.abstractmethod
    def save(self) -> None:
        """Persist the index (encrypted at rest for FAISS; a flush for Milvus)."""

    @abc.abstractmethod
    def stats(self) -> dict:
        """Counts and structure: {"backend", "kind", "count", "dim", "bytes", ...}."""

    def close(self) -> None:
        """Release resources (a Milvus connection); the default does nothing."""


# --------------------------------------------------------------------------- input checks
def as_ids(ids) -> np.ndarray:
    arr = np.asarray(list(ids) if not isinstance(ids, np.ndarray) and isinstance(ids, Iterable) else ids)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise InputError("Vector ids must be a one-dimensional array of integers.",
                         "Pass volumes.vector_id values (int64).")
    if arr.min() < 0:
        raise InputError("Vector ids must be >= 0.", "Pass volumes.vector_id values (int64).")
    return arr.astype(np.int64, copy=False)


def as_vectors(vectors, dim: int | None) -> np.ndarray:
    arr = np.asarray(vectors, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise InputError(f"Vectors must be a 2-D float array (n, dim); got shape {tuple(arr.shape)}.",
                         "Pass one embedding per row.")
    if dim is not None and arr.shape[1] != dim:
        raise InputError(f"Vectors have dimension {arr.shape[1]}, the index has dimension {dim}.",
                         "Use embeddings of the model that built the index, or run 'medsearch index rebuild' "
                         "after re-encoding with the new model.")
    if not np.isfinite(arr).all():
        raise InputError("Vectors contain NaN or infinite values.", "Re-encode the affected volumes.")
    return np.ascontiguousarray(arr)


def check_add(ids, vectors, dim: int | None) -> tuple[np.ndarray, np.ndarray]:
    ids = as_ids(ids)
    vectors = as_vectors(vectors, dim)
    if len(ids) != len(vectors):
        raise InputError(f"{len(ids)} ids but {len(vectors)} vectors.", "Pass one id per vector.")
    if len(np.unique(ids)) != len(ids):
        raise InputError("Vector ids passed to add() must be unique.", "Remove the duplicate ids.")
    return ids, vectors


def check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}.", "Ask for at least one result.")
    return int(k)


def empty_result(nq: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((nq, k), -np.inf, dtype=np.float32), np.full((nq, k), NO_ID, dtype=np.int64)


def exact_topk(queries: np.ndarray, ids: np.ndarray, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k of ``queries`` over the rows ``vectors`` labelled ``ids``.

    Ties are broken by ascending id, so that two backends agree exactly.
    """
    scores, out = empty_result(len(queries), k)
    if len(ids) == 0:
        return scores, out
    sims = queries @ vectors.T  # (nq, n)
    take = min(k, len(ids))
    for q in range(len(queries)):
        order = np.lexsort((ids, -sims[q]))[:take]
        scores[q, :take] = sims[q, order]
        out[q, :take] = ids[order]
    return scores, out

"""The Milvus backend: the scale-out seam, through pymilvus.

``milvus_uri`` names the server: ``http://host:19530`` for a Milvus cluster, or
a local file path for milvus-lite (the embedded engine with the same client
API, used by the tests).  The collection has two fields, ``id`` (INT64 primary
key, the vector id) and ``vec`` (FLOAT_VECTOR, inner product).

Exactness and parity: below ``flat_threshold`` vectors the collection uses a
FLAT index, so a filtered search returns exactly what the FAISS flat index
returns (same ids, same order; ties broken by ascending id on both).  Larger
collections use Milvus's AUTOINDEX and the server's own tuning.

Encryption at rest is the Milvus deployment's responsibility (encrypted
volumes or object storage); a milvus-lite file is NOT encrypted by medsearch,
so keep it on an encrypted disk, and prefer the FAISS backend on one machine.
"""

from __future__ import annotations

import contextlib
import logging
import threading

import numpy as np

from medsearch.errors import ConfigError, StorageError
from medsearch.index.base import VectorIndex, as_ids, as_vectors, check_add, check_k, empty_result

log = logging.getLogger(__name__)
#: Milvus caps a search's limit at 16384 and an expression's length; larger allowed sets go in pages
MAX_K = 16384
IN_PAGE = 10000
WRITE_BATCH = 5000


class MilvusIndex(VectorIndex):
    """Vectors in a Milvus collection (created on the first add)."""

    def __init__(self, uri: str, collection: str, flat_threshold: int = 20000, fresh: bool = False):
        if not uri:
            raise ConfigError("The milvus backend needs a server.", "Set milvus_uri (a URL, or a file for milvus-lite).")
        from pymilvus import MilvusClient
        from pymilvus.exceptions import MilvusException

        self.uri = uri
        self.collection = collection
        self.flat_threshold = flat_threshold
        self._lock = threading.RLock()
        self.generation = 0
        try:
            self._client = MilvusClient(uri)
            if fresh and self._client.has_collection(collection):
                self._client.drop_collection(collection)
            self._dim = self._read_dim()
        except MilvusException as exc:
            raise StorageError(f"Milvus at the configured milvus_uri is not usable ({exc.code}).",
                               "Check that the server runs and milvus_uri points at it.") from None
        self._index_type = None

    # ------------------------------------------------------------------ schema
    def _read_dim(self) -> int | None:
        if not self._client.has_collection(self.collection):
            return None
        desc = self._client.describe_collection(self.collection)
        for f in desc["fields"]:
            if f["name"] == "vec":
                return int(f["params"]["dim"])
        return None

    def _create(self, dim: int, expected: int) -> None:
        from pymilvus import DataType

        schema = self._client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vec", DataType.FLOAT_VECTOR, dim=dim)
        params = self._client.prepare_index_params()
        kind = "FLAT" if expected < self.flat_threshold else "AUTOINDEX"
        params.add_index(field_name="vec", index_type=kind, metric_type="IP")
        self._client.create_collection(self.collection, schema=schema, index_params=params,
                                       consistency_level="Strong")
        self._dim = dim

    @property
    def dim(self) -> int | None:
        return self._dim

    def __len__(self) -> int:
        return len(self.ids())

    # ------------------------------------------------------------------ mutation
    def add(self, ids, vectors) -> None:
        ids, vectors = check_add(ids, vectors, self._dim)
        if not len(ids):
            return
        with self._lock:
            if self._dim is None:
                self._create(vectors.shape[1], len(ids))
            for start in range(0, len(ids), WRITE_BATCH):
                rows = [{"id": int(i), "vec": v.tolist()}
                        for i, v in zip(ids[start:start + WRITE_BATCH], vectors[start:start + WRITE_BATCH])]
                self._client.upsert(self.collection, rows)  # add() replaces, as in FAISS
            self.generation += 1

    def remove(self, ids) -> int:
        ids = np.unique(as_ids(ids))
        with self._lock:
            if self._dim is None or not len(ids):
                return 0
            present = np.intersect1d(ids, self.ids(), assume_unique=True)
            for start in range(0, len(present), IN_PAGE):
                self._client.delete(self.collection, ids=[int(i) for i in present[start:start + IN_PAGE]])
            self.generation += 1
            return len(present)

    def rebuild(self, ids, vectors) -> None:
        ids, vectors = check_add(ids, vectors, None)
        with self._lock:
            if self._client.has_collection(self.collection):
                self._client.drop_collection(self.collection)
            self._dim = None
            self.add(ids, vectors)

    # ------------------------------------------------------------------ read
    def ids(self) -> np.ndarray:
        with self._lock:
            if self._dim is None:
                return np.zeros(0, dtype=np.int64)
            out: list[int] = []
            it = self._client.query_iterator(self.collection, batch_size=IN_PAGE, filter="id >= 0",
                                             output_fields=["id"])
            try:
                while batch := it.next():
                    out.extend(r["id"] for r in batch)
            finally:
                it.close()
            return np.sort(np.asarray(out, dtype=np.int64))

    def search(self, queries, k: int, allowed=None) -> tuple[np.ndarray, np.ndarray]:
        k = check_k(k)
        with self._lock:
            queries = as_vectors(queries, self._dim)
            if self._dim is None:
                return empty_result(len(queries), k)
            if allowed is None:
                return self._search(queries, k, None)
            allowed = np.unique(as_ids(allowed))
            if not len(allowed):
                return empty_result(len(queries), k)
            # one expression per page of allowed ids, then merge: an `id in [...]` list has a length limit
            pages = [self._search(queries, k, allowed[i:i + IN_PAGE]) for i in range(0, len(allowed), IN_PAGE)]
            return _merge(pages, k)

    def _search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None):
        scores, out = empty_result(len(queries), k)
        expr = "" if allowed is None else f"id in [{','.join(str(int(i)) for i in allowed)}]"
        hits = self._client.search(self.collection, data=[q.tolist() for q in queries], limit=min(k, MAX_K),
                                   filter=expr, output_fields=["id"], search_params={"metric_type": "IP"})
        for q, row in enumerate(hits):
            pairs = sorted(((float(h["distance"]), int(h["id"])) for h in row), key=lambda p: (-p[0], p[1]))
            for j, (score, vid) in enumerate(pairs[:k]):
                scores[q, j], out[q, j] = score, vid
        return scores, out

    def save(self) -> None:
        with self._lock:
            if self._dim is not None:
                self._client.flush(self.collection)

    def stale(self) -> bool:
        return False  # the server is shared; every call sees its current state

    @contextlib.contextmanager
    def writing(self):
        with self._lock:
            yield self
            self.save()

    def stats(self) -> dict:
        n = len(self)
        return {"backend": "milvus", "kind": "milvus", "count": n, "dim": self._dim,
                "bytes": n * (self._dim or 0) * 4, "bytes_per_vector": float((self._dim or 0) * 4) if n else 0.0,
                "generation": self.generation}

    def close(self) -> None:
        with contextlib.suppress(Exception):  # closing a dead connection must not mask the real error
            self._client.close()


def _merge(pages, k: int) -> tuple[np.ndarray, np.ndarray]:
    if len(pages) == 1:
        return pages[0]
    scores = np.concatenate([p[0] for p in pages], axis=1)
    ids = np.concatenate([p[1] for p in pages], axis=1)
    out_s, out_i = empty_result(len(scores), k)
    for q in range(len(scores)):
        order = np.lexsort((np.where(ids[q] < 0, np.iinfo(np.int64).max, ids[q]), -scores[q]))[:k]
        out_s[q], out_i[q] = scores[q, order], ids[q, order]
    return out_s, out_i

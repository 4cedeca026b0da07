"""Automatic choice of the FAISS structure, its construction and tuning.

The rule (``index_kind = "auto"``):

* fewer than ``index_flat_threshold`` vectors: exact ``IndexFlatIP``.  Below
  ~20k vectors a flat scan of 256-d vectors takes about a millisecond, so an
  approximate structure would buy nothing and lose recall;
* above it, IVF-Flat with ``nlist ~ 2 sqrt(n)`` (a power of two), when the raw
  vectors fit ``index_memory_budget_mb``;
* when they do not fit, IVF-SQ8 (8-bit scalar quantizer, 4x smaller, recall
  close to IVF-Flat), and when even that does not fit, IVF-PQ with as many PQ
  bytes per vector as the budget allows (at most ``dim / 16``: 16 bytes for 256-d).

An explicit kind below its training minimum (:data:`MIN_SIZE`) falls back to
flat: a few hundred vectors cannot train centroids, and flat is exact and fast
at that size.

HNSW is available on request (``index_kind = "hnsw"``): it answers faster than
IVF at the same recall, but it costs more memory than flat and its build is
slow on two cores (minutes at 1M vectors), so "auto" never picks it.

The search-time knob (``nprobe`` for IVF, ``efSearch`` for HNSW) is tuned at
build time on a sample of the indexed vectors against exact search, to the
smallest value that reaches ``index_target_recall`` at k = 10.

The index is retrained when the collection outgrows it (:func:`needs_rebuild`):
when the automatic kind changes, or an IVF holds more than 4x the vectors its
``nlist`` was chosen for (lists grow long and searches slow down).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import faiss
import numpy as np

from medsearch.errors import ConfigError

KINDS = ("flat", "ivf", "ivfsq", "hnsw", "ivfpq")
#: smallest collection each approximate kind is built for (PQ trains 256 centroids per sub-quantizer)
IVF_KINDS = ("ivf", "ivfsq", "ivfpq")
MIN_SIZE = {"ivf": 1024, "ivfsq": 1024, "hnsw": 1024, "ivfpq": 10240}
ID_BYTES = 8
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
#: k-means sample per centroid: faiss's advice is 30..256 points per centroid
TRAIN_PER_LIST = 40
#: smallest PQ sub-vector (see pq_m_for)
PQ_MIN_SUBDIM = 16
#: tuning: queries drawn from the collection, and the k that recall is measured at
TUNE_QUERIES = 200
TUNE_K = 10


@dataclass(frozen=True)
class IndexSpec:
    kind: str
    dim: int
    #: collection size the structure was chosen for
    planned_for: int = 0
    nlist: int = 0
    pq_m: int = 0
    hnsw_m: int = 0
    #: search-time knob: nprobe (IVF) or efSearch (HNSW)
    probe: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "IndexSpec":
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def nlist_for(n: int) -> int:
    """A power of two near 2 sqrt(n), between 16 and 65536."""
    return int(min(65536, max(16, 2 ** round(math.log2(max(1.0, 2 * math.sqrt(n)))))))


def pq_m_for(n: int, dim: int, budget_bytes: int, nlist: int) -> int:
    """Largest number of PQ bytes per vector that fits the budget.

    ``m`` divides ``dim`` and each sub-vector keeps at least :data:`PQ_MIN_SUBDIM` dimensions: faiss's
    k-means is ~100x slower on 2-8 dimensional sub-vectors than on 16 (measured: minutes instead of
    seconds to train 256-d codebooks on two cores), and finer codes would not fit a budget that binds.
    """
    per_vector = (budget_bytes - nlist * dim * 4) / max(n, 1) - ID_BYTES
    allowed = [m for m in range(1, dim + 1) if dim % m == 0 and dim // m >= min(PQ_MIN_SUBDIM, dim)]
    fits = [m for m in allowed if m <= per_vector]
    return max(fits) if fits else min(allowed)


def estimate_bytes(spec: IndexSpec, n: int) -> int:
    """Approximate resident memory of the index for ``n`` vectors."""
    raw = n * spec.dim * 4
    if spec.kind == "flat":
        return raw + n * ID_BYTES
    if spec.kind == "ivf":
        return raw + n * ID_BYTES + spec.nlist * spec.dim * 4
    if spec.kind == "ivfsq":
        return n * (spec.dim + ID_BYTES) + spec.nlist * spec.dim * 4
    if spec.kind == "hnsw":
        return raw + n * ID_BYTES + n * spec.hnsw_m * 2 * 4
    return n * (spec.pq_m + ID_BYTES) + spec.nlist * spec.dim * 4 + 256 * spec.dim * 4


def choose_spec(n: int, dim: int, kind: str = "auto", flat_threshold: int = 20000,
                memory_budget_mb: int = 4096) -> IndexSpec:
    """The structure for a collection of ``n`` vectors of dimension ``dim``."""
    if kind != "auto" and kind not in KINDS:
        raise ConfigError(f"Unknown index kind '{kind}'.", f"Set index_kind to auto or one of {', '.join(KINDS)}.")
    budget = memory_budget_mb * 1024 * 1024
    nlist = nlist_for(n)
    if kind == "auto":
        if n < flat_threshold and estimate_bytes(IndexSpec("flat", dim), n) <= budget:
            kind = "flat"
        elif estimate_bytes(IndexSpec("ivf", dim, nlist=nlist), n) <= budget:
            kind = "ivf"
        elif estimate_bytes(IndexSpec("ivfsq", dim, nlist=nlist), n) <= budget:
            kind = "ivfsq"
        else:
            kind = "ivfpq"
    if kind == "flat" or n < MIN_SIZE[kind]:
        return IndexSpec("flat", dim, planned_for=n)
    if kind == "hnsw":
        return IndexSpec("hnsw", dim, planned_for=n, hnsw_m=HNSW_M, probe=64)
    # IVF needs enough points to train its centroids; a tiny collection gets a small nlist
    nlist = max(1, min(nlist, n // TRAIN_PER_LIST if n >= TRAIN_PER_LIST else 1))
    if kind in ("ivf", "ivfsq"):
        return IndexSpec(kind, dim, planned_for=n, nlist=nlist, probe=min(nlist, 16))
    return IndexSpec("ivfpq", dim, planned_for=n, nlist=nlist, pq_m=pq_m_for(n, dim, budget, nlist),
                     probe=min(nlist, 16))


def needs_rebuild(spec: IndexSpec, n: int, kind: str = "auto", flat_threshold: int = 20000,
                  memory_budget_mb: int = 4096) -> bool:
    """Whether a collection grown (or shrunk) to ``n`` vectors should be rebuilt."""
    wanted = choose_spec(n, spec.dim, kind, flat_threshold, memory_budget_mb)
    if wanted.kind != spec.kind:
        return True
    if spec.kind in IVF_KINDS:
        return n > 4 * max(spec.planned_for, 1) and wanted.nlist > spec.nlist
    return False


# --------------------------------------------------------------------------- construction
def build(spec: IndexSpec) -> faiss.Index:
    """An empty (untrained) index for ``spec``; ids are native (IVF) or via IndexIDMap2 (flat, HNSW)."""
    d, ip = spec.dim, faiss.METRIC_INNER_PRODUCT
    if spec.kind == "flat":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(d))
    if spec.kind == "hnsw":
        inner = faiss.IndexHNSWFlat(d, spec.hnsw_m, ip)
        inner.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        inner.hnsw.efSearch = spec.probe
        return faiss.IndexIDMap2(inner)
    # IVF keeps ids itself: IndexIDMap's remove() assumes the sub-index renumbers
    # rows compactly, which IVF does not do.  A hashtable direct map gives
    # reconstruct(id) and remove(id) on IVF.
    quantizer = faiss.IndexFlatIP(d)
    if spec.kind == "ivf":
        index = faiss.IndexIVFFlat(quantizer, d, spec.nlist, ip)
    elif spec.kind == "ivfsq":
        index = faiss.IndexIVFScalarQuantizer(quantizer, d, spec.nlist, faiss.ScalarQuantizer.QT_8bit, ip)
    else:
        index = faiss.IndexIVFPQ(quantizer, d, spec.nlist, spec.pq_m, 8, ip)
        index.pq.cp.niter = 15  # codebook k-means converges well before faiss's default 25 here
    index.own_fields = True
    quantizer.this.disown()
    index.nprobe = spec.probe
    index.set_direct_map_type(faiss.DirectMap.Hashtable)
    return index


def train(index: faiss.Index, spec: IndexSpec, vectors: np.ndarray, seed: int = 1234) -> None:
    """Train IVF centroids / PQ codebooks on a sample of ``vectors`` (no-op for flat and HNSW)."""
    if spec.kind not in IVF_KINDS:
        return
    want = max(spec.nlist * TRAIN_PER_LIST, 256 * 40 if spec.kind == "ivfpq" else 0)
    if len(vectors) > want:
        rows = np.random.default_rng(seed).choice(len(vectors), want, replace=False)
        rows.sort()
        vectors = vectors[rows]
    index.cp.seed = seed  # deterministic centroids
    index.verbose = False
    index.train(np.ascontiguousarray(vectors, dtype=np.float32))


def set_probe(index: faiss.Index, spec: IndexSpec, probe: int) -> None:
    if spec.kind in IVF_KINDS:
        faiss.extract_index_ivf(index).nprobe = probe
    elif spec.kind == "hnsw":
        faiss.downcast_index(index.index).hnsw.efSearch = probe


def tune_probe(index: faiss.Index, spec: IndexSpec, ids: np.ndarray, vectors: np.ndarray,
               target_recall: float, seed: int = 99) -> tuple[IndexSpec, float]:
    """Smallest nprobe / efSearch reaching ``target_recall`` at k=10 on sampled queries.

    Queries are a sample of the indexed vectors with a little noise, so that
    they are near, not equal to, one entry (as a text query is near its
    studies); the ground truth is an exact flat search over the same vectors.

    Args:
        index: the filled index.
        ids: int64 (n,) the ids of ``vectors`` as held in ``index``.
        vectors: float32 (n, dim) the vectors the index holds.

    Returns:
        (spec with the tuned probe, recall@10 reached)
    """
    if spec.kind == "flat" or len(vectors) <= TUNE_K:
        return spec, 1.0
    rng = np.random.default_rng(seed)
    nq = min(TUNE_QUERIES, len(vectors))
    queries = vectors[rng.choice(len(vectors), nq, replace=False)].astype(np.float32)
    queries = queries + rng.normal(0, 0.05 / math.sqrt(spec.dim), queries.shape).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    exact = faiss.IndexFlatIP(spec.dim)
    exact.add(np.ascontiguousarray(vectors, dtype=np.float32))
    _, rows = exact.search(queries, TUNE_K)
    truth = np.where(rows >= 0, ids[np.maximum(rows, 0)], -1)
    limit = spec.nlist if spec.kind in IVF_KINDS else 4096
    probe, previous = max(1, spec.probe // 4), None
    while True:
        set_probe(index, spec, probe)
        _, got = index.search(queries, TUNE_K)
        recall = recall_at(truth, got)
        # PQ codes cap recall below exact search: once more probes stop helping, stop paying for them
        if previous is not None and recall - previous[1] < 0.002:
            probe, recall = previous
            set_probe(index, spec, probe)
            break
        if recall >= target_recall or probe >= limit:
            break
        previous = (probe, recall)
        probe = min(limit, probe * 2)
    return replace(spec, probe=probe), recall


def recall_at(truth: np.ndarray, got: np.ndarray) -> float:
    """Mean fraction of each row of ``truth`` found in the same row of ``got``."""
    hits = sum(len(set(t[t >= 0]) & set(g[g >= 0])) for t, g in zip(truth, got))
    total = sum(int((t >= 0).sum()) for t in truth)
    return hits / total if total else 1.0

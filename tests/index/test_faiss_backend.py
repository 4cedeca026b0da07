import numpy as np
import pytest

from medsearch.errors import InputError
from medsearch.index.base import exact_topk
from medsearch.index.choose import recall_at
from medsearch.index import faiss_backend
from medsearch.index.faiss_backend import FaissIndex

from .conftest import clustered

N, DIM = 12_000, 32
IDS = np.arange(N, dtype=np.int64) * 3 + 5  # sparse ids, as volume ids are
DATA = clustered(N, DIM, clusters=48, seed=1)
QUERIES = clustered(60, DIM, clusters=48, seed=1)[:60] + 0.02
QUERIES /= np.linalg.norm(QUERIES, axis=1, keepdims=True)
TRUTH = exact_topk(QUERIES, IDS, DATA, 10)[1]
#: recall@10 against exact search each structure must reach on this data.  IVF-PQ (the memory-bound
#: tier, here 2 bytes per vector) is a candidate generator: it must find the true top-10 among N=1000.
MIN_RECALL = {"flat": 1.0, "ivf": 0.95, "ivfsq": 0.93, "hnsw": 0.95, "ivfpq": 0.1}
PQ_RECALL_IN_1000 = 0.95


@pytest.fixture(scope="module", params=list(MIN_RECALL))
def built(request):
    index = FaissIndex(kind=request.param, flat_threshold=1000)
    index.add(IDS, DATA)
    return index


def test_structure_recall_against_exact_flat(built):
    kind = built.spec.kind
    assert kind == next(k for k in MIN_RECALL if built.kind == k)
    _, got = built.search(QUERIES, 10)
    assert recall_at(TRUTH, got) >= MIN_RECALL[kind]
    if kind == "ivfpq":
        assert recall_at(TRUTH, built.search(QUERIES, 1000)[1]) >= PQ_RECALL_IN_1000
    assert built.stats()["count"] == N and built.stats()["bytes_per_vector"] > 0


@pytest.mark.parametrize("size", [50, 6000])
def test_filtered_search_returns_only_allowed_ids(built, size, monkeypatch):
    # 50 ids: scored exactly; 6000 ids (above the lowered limit): a faiss selector with widened nprobe/efSearch
    monkeypatch.setattr(faiss_backend, "SUBSET_EXACT", 2000)
    rng = np.random.default_rng(size)
    allowed = rng.choice(IDS, size, replace=False)
    allowed_with_unknown = np.concatenate([allowed, [1, 2, 4]])  # ids not in the index are ignored
    scores, got = built.search(QUERIES, 10, allowed=allowed_with_unknown)
    assert set(got[got >= 0].tolist()) <= set(allowed.tolist())
    assert (got >= 0).all()  # enough allowed vectors: every slot filled
    mask = np.isin(IDS, allowed)
    truth = exact_topk(QUERIES, IDS[mask], DATA[mask], 10)[1]
    assert recall_at(truth, got) >= MIN_RECALL[built.spec.kind] - (0.05 if size > 2000 else 0)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first


def test_candidate_set_of_1000_is_full(built):
    # search asks for N ~ 1000 candidates; the tuned nprobe (for k=10) alone would scan too few vectors
    _, got = built.search(QUERIES[:3], 1000)
    assert (got >= 0).all() and all(len(set(row)) == 1000 for row in got)
    truth = exact_topk(QUERIES[:3], IDS, DATA, 1000)[1]
    assert recall_at(truth, got) >= min(0.9, MIN_RECALL[built.spec.kind])


def test_small_filter_is_exact_even_on_approximate_index(built):
    allowed = IDS[::400]
    _, got = built.search(QUERIES, 5, allowed=allowed)
    if built.spec.kind in ("flat", "ivf", "ivfsq", "hnsw"):  # exact vectors (SQ8: near-exact)
        mask = np.isin(IDS, allowed)
        assert recall_at(exact_topk(QUERIES, IDS[mask], DATA[mask], 5)[1], got) >= 0.95


def test_filter_with_fewer_allowed_than_k_pads():
    index = FaissIndex(kind="flat")
    index.add(IDS[:100], DATA[:100])
    scores, got = index.search(QUERIES[:2], 10, allowed=IDS[:3])
    assert sorted(got[0, :3].tolist()) == sorted(IDS[:3].tolist())
    assert (got[:, 3:] == -1).all() and np.isneginf(scores[:, 3:]).all()
    assert (index.search(QUERIES[:2], 10, allowed=[])[1] == -1).all()


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_remove_and_replace(kind):
    index = FaissIndex(kind=kind, flat_threshold=1000)
    index.add(IDS[:3000], DATA[:3000])
    target = IDS[7]
    assert index.search(DATA[7], 1)[1][0, 0] == target
    assert index.remove([target, 10**9]) == 1  # an unknown id is ignored
    assert len(index) == 2999 and target not in index.ids()
    assert target not in index.search(DATA[7], 10)[1]
    index.add([IDS[8]], [DATA[9]])  # re-encoding a volume replaces its vector
    assert len(index) == 2999
    np.testing.assert_allclose(index.vectors([IDS[8]])[0], DATA[9], atol=1e-6)


def test_growth_rebuilds_from_flat_to_ivf_without_losing_vectors():
    index = FaissIndex(kind="auto", flat_threshold=2000)
    index.add(IDS[:1500], DATA[:1500])
    assert index.spec.kind == "flat"
    index.add(IDS[1500:6000], DATA[1500:6000])
    assert index.spec.kind == "ivf" and index.spec.planned_for == 6000
    assert np.array_equal(index.ids(), np.sort(IDS[:6000]))
    assert index.tuned_recall >= 0.97  # nprobe tuned to index_target_recall


def test_empty_index_returns_padding():
    scores, got = FaissIndex().search(np.ones((2, 4), np.float32), 3)
    assert got.shape == (2, 3) and (got == -1).all() and np.isneginf(scores).all()


@pytest.mark.parametrize("ids, vectors, what", [
    ([1, 2], np.ones((2, DIM + 1), np.float32), "dimension"),
    ([1, 2], np.full((2, DIM), np.nan, np.float32), "NaN"),
    ([-1, 2], np.ones((2, DIM), np.float32), ">= 0"),
    ([1, 1], np.ones((2, DIM), np.float32), "unique"),
    ([1, 2, 3], np.ones((2, DIM), np.float32), "3 ids but 2 vectors"),
    ([1.5, 2.0], np.ones((2, DIM), np.float32), "integers"),
])
def test_bad_input_names_problem_and_fix(ids, vectors, what):
    index = FaissIndex()
    index.add([100], np.ones((1, DIM), np.float32))
    with pytest.raises(InputError) as err:
        index.add(ids, vectors)
    assert what in err.value.problem and err.value.fix


@pytest.mark.parametrize("k", [0, -3, 2.5, True])
def test_bad_k(k):
    with pytest.raises(InputError):
        FaissIndex().search(np.ones(4, np.float32), k)

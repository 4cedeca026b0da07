"""The Milvus backend, run against milvus-lite (the embedded engine with the same client API)."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from medsearch.cli import cli
from medsearch.index import forget_index, get_index, sync
from medsearch.index.faiss_backend import FaissIndex
from medsearch.index.milvus_backend import MilvusIndex

from .conftest import clustered

N, DIM = 2000, 32
IDS = np.arange(N, dtype=np.int64) * 2 + 11
DATA = clustered(N, DIM, seed=5)
QUERIES = clustered(8, DIM, seed=6)


@pytest.fixture
def milvus(tmp_path):
    index = MilvusIndex(str(tmp_path / "m.db"), "vectors")
    yield index
    index.close()


def test_filtered_search_parity_with_faiss(milvus):
    faiss_index = FaissIndex(kind="flat")
    for index in (faiss_index, milvus):
        index.add(IDS, DATA)
    rng = np.random.default_rng(0)
    for allowed in (None, rng.choice(IDS, 300, replace=False), rng.choice(IDS, 7, replace=False)):
        f_scores, f_ids = faiss_index.search(QUERIES, 10, allowed=allowed)
        m_scores, m_ids = milvus.search(QUERIES, 10, allowed=allowed)
        assert np.array_equal(f_ids, m_ids)
        finite = np.isfinite(f_scores)
        np.testing.assert_allclose(f_scores[finite], m_scores[finite], atol=1e-5)
        assert np.array_equal(finite, np.isfinite(m_scores))
        if allowed is not None:
            assert set(m_ids[m_ids >= 0].tolist()) <= set(allowed.tolist())


def test_remove_replace_and_ids(milvus):
    milvus.add(IDS[:100], DATA[:100])
    assert len(milvus) == 100 and milvus.dim == DIM
    assert milvus.remove([IDS[0], 999_999]) == 1
    assert IDS[0] not in milvus.ids()
    milvus.add([IDS[1]], [DATA[50]])  # replaces
    assert len(milvus) == 99
    assert milvus.search(DATA[50], 2)[1][0].tolist() == sorted([IDS[1], IDS[50]])
    milvus.save()
    again = MilvusIndex(milvus.uri, "vectors")  # a second client on the same data
    try:
        assert len(again) == 99
    finally:
        again.close()


def test_large_allowed_set_is_paged(milvus, monkeypatch):
    from medsearch.index import milvus_backend

    monkeypatch.setattr(milvus_backend, "IN_PAGE", 128)
    milvus.add(IDS, DATA)
    allowed = IDS[::3]
    _, got = milvus.search(QUERIES, 10, allowed=allowed)
    flat = FaissIndex()
    flat.add(IDS, DATA)
    assert np.array_equal(got, flat.search(QUERIES, 10, allowed=allowed)[1])


def test_instance_on_milvus_backend(sqlite_instance, populate_instance):
    from medsearch.instance import Instance

    inst = Instance(sqlite_instance.home, overrides={"index_backend": "milvus"})
    populate_instance(inst, n_patients=2, dim=DIM)
    try:
        sync(inst)
        index = get_index(inst)
        assert index.stats()["backend"] == "milvus" and len(index) == 4
        forget_index(inst)
    finally:
        inst.close()
    cfg = sqlite_instance.config_file
    cfg.write_text(cfg.read_text() + 'index_backend = "milvus"\n')
    result = CliRunner().invoke(cli, ["--home", str(sqlite_instance.home), "doctor", "--json"])
    check = next(c for c in json.loads(result.stdout)["checks"] if c["name"] == "index")
    assert check["status"] == "ok" and "milvus index of 4 vectors" in check["detail"]

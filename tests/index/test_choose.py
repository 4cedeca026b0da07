import pytest

from medsearch.errors import ConfigError
from medsearch.index.choose import MIN_SIZE, choose_spec, estimate_bytes, needs_rebuild, nlist_for


@pytest.mark.parametrize("n, budget_mb, kind", [
    (100, 4096, "flat"),
    (19_999, 4096, "flat"),
    (20_000, 4096, "ivf"),
    (1_000_000, 4096, "ivf"),  # 1 GiB of raw vectors fits 4 GiB
    (1_000_000, 600, "ivfsq"),  # raw 1 GiB does not fit; 8-bit codes (~256 MB) do
    (1_000_000, 100, "ivfpq"),
])
def test_auto_choice_follows_size_and_memory(n, budget_mb, kind):
    spec = choose_spec(n, 256, "auto", flat_threshold=20_000, memory_budget_mb=budget_mb)
    assert spec.kind == kind
    if kind != "flat":
        assert estimate_bytes(spec, n) <= budget_mb * 1024 * 1024 or kind == "ivfpq"


def test_pq_uses_the_budget_it_has():
    small = choose_spec(1_000_000, 256, "auto", memory_budget_mb=20)
    large = choose_spec(1_000_000, 256, "auto", memory_budget_mb=150)
    assert small.kind == large.kind == "ivfpq"
    assert small.pq_m < large.pq_m == 16 and 256 % small.pq_m == 0  # sub-vectors of >= 16 dims
    assert estimate_bytes(large, 1_000_000) <= 150 * 1024 * 1024


@pytest.mark.parametrize("kind", ["ivf", "ivfsq", "hnsw", "ivfpq"])
def test_explicit_kind_below_training_minimum_is_flat(kind):
    assert choose_spec(MIN_SIZE[kind] - 1, 32, kind).kind == "flat"
    assert choose_spec(MIN_SIZE[kind], 32, kind).kind == kind


def test_growth_triggers_rebuild():
    flat = choose_spec(10_000, 64)
    assert not needs_rebuild(flat, 19_999)
    assert needs_rebuild(flat, 20_000)  # crosses index_flat_threshold
    ivf = choose_spec(20_000, 64)
    assert not needs_rebuild(ivf, 60_000)
    assert needs_rebuild(ivf, 100_000)  # nlist chosen for 20k is too small for 5x the vectors
    assert nlist_for(100_000) > ivf.nlist


def test_unknown_kind_is_a_config_error():
    with pytest.raises(ConfigError) as err:
        choose_spec(10, 8, "annoy")
    assert "index_kind" in err.value.fix

"""The benchmark's key-slice measure (search_eval.localisation), on a stubbed search."""

from __future__ import annotations

import pytest

from medsearch import search_eval


@pytest.fixture
def pool(monkeypatch):
    """Two labelled studies; the stubbed search answers every query with both, in a fixed way."""
    labs = [
        {"_study": "S1", "_main_series": "E1", "findings": [
            {"type": "atelectasis", "site": "left lower lobe", "laterality": "left", "density": "solid",
             "diameter_mm": 30.0, "slice_range": [20, 22]}]},
        {"_study": "S2", "_main_series": "E2", "findings": [
            {"type": "nodule", "site": "right upper lobe", "laterality": "right", "density": "solid",
             "diameter_mm": 8.0, "slice_range": [40, 41]}]},
    ]
    answers = {"S1": (21, "slot"), "S2": (10, "finding")}

    def search(inst, text, k=10):
        return {"results": [{"study": s, "series": f"E{s[1]}", "key_slice": key, "located_by": by}
                            for s, (key, by) in answers.items()]}

    monkeypatch.setattr(search_eval.S, "search", search)
    monkeypatch.setattr(search_eval, "_shapes", lambda inst: {"E1": [60, 64, 64], "E2": [80, 64, 64]})
    return labs


def test_localisation_counts_relevant_hits_misses_by_type_and_by_source(pool):
    out = search_eval.localisation(None, pool)
    # each atelectasis phrase finds S1 within [20, 22]; each nodule phrase finds S2 off its slices
    n_atel, n_nod = out["by_source"]["slot"]["hits"], out["by_source"]["finding"]["hits"]
    assert n_atel > 0 and n_nod > 0 and out["relevant_hits"] == n_atel + n_nod
    assert out["by_source"]["slot"]["within"] == n_atel and out["by_source"]["finding"]["within"] == 0
    assert out["key_slice_within"] == n_atel and out["rate"] == pytest.approx(n_atel / (n_atel + n_nod))
    assert out["misses_by_type"] == {"nodule": n_nod}
    # the middle slice (30 of 60, 40 of 80) lies in the nodule's range only
    assert out["middle_slice_baseline"] == pytest.approx(n_nod / (n_atel + n_nod))

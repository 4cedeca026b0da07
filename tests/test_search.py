"""The search pipeline over a real database and a real FAISS index.

The ranking stage (:func:`medsearch.search._rank`) is driven with query vectors
chosen by the test, so that each rule is checked on a predictable ranking; the
end-to-end path (parse, encoder, index, audit) is in tests/test_search_e2e.py.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from medsearch import search as S
from medsearch.accounts import Principal
from medsearch.errors import InputError, NotFoundError
from medsearch.instance import Instance
from tests.search_fixtures import add_series, finding, parse_dict, pf, unit

RESULT_KEYS = {"study", "series", "score", "components", "matched", "unmatched", "key_slice", "region", "located_by",
               "study_date", "modality", "body_part"}


@pytest.fixture
def archive(instance):
    """Four studies: a LLL ground-glass nodule, a RLL solid nodule, an effusion, a normal study (MR, south)."""
    add_series(instance, "P1", "ST1", "SE1", unit(1.0, 0.2),
               [finding("nodule", "left lower lobe", "left", "ground-glass", 21.0, key_slice=17, bbox=[5, 6, 20, 22])])
    add_series(instance, "P2", "ST2", "SE2", unit(1.0, 0.5),
               [finding("nodule", "right lower lobe", "right", "solid", 8.0)], study_date=dt.date(2023, 5, 1))
    add_series(instance, "P3", "ST3", "SE3", unit(0.9, 0.0, 0.6),
               [finding("nodule", "left lower lobe", "left", "ground-glass", 20.0),
                finding("pleural effusion", "pleura", "right", probability=0.95)])
    add_series(instance, "P4", "ST4", "SE4", unit(0.0, 0.0, 0.0, 1.0), [], modality="MR", site="south",
               study_date=dt.date(2022, 2, 2))
    return instance


def ranked(inst, parsed, vector, k=10, filters=None, user=None, **kw):
    results, total, weights = S._rank(inst, parsed, None, vector, k, S.search_rules.normalise_filters(filters),
                                      user, use_reranker=False, **kw)
    return results, total, weights


def test_result_schema_and_order(archive):
    results, total, w = ranked(archive, parse_dict(pf("nodule")), unit(1.0, 0.2))
    assert total == 4
    assert [r["study"] for r in results][:1] == ["ST1"]
    for r in results:
        assert set(r) == RESULT_KEYS
        assert set(r["components"]) >= {"global", "region", "attributes", "similarity", "weights"}
    assert results[0]["study_date"] == "2024-01-10" and results[0]["modality"] == "CT"
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    assert w["region"] == 0.0 and sum(w.values()) == pytest.approx(1.0)


def test_attributes_outrank_a_closer_embedding(archive):
    # the query vector is closest to ST2 (RLL solid), but the query asks for a LLL ground-glass nodule of 2 cm
    q = parse_dict(pf("nodule", "left lower lobe", size={"min": 20, "max": 20}, density="ground-glass"))
    results, _, w = ranked(archive, q, unit(1.0, 0.5))
    assert results[0]["study"] in ("ST1", "ST3") and results[-1]["study"] != "ST1"
    top = results[0]
    assert top["matched"] == ["nodule", "left lower lobe", "20 mm", "ground-glass"]
    st2 = next(r for r in results if r["study"] == "ST2")
    assert "left lower lobe" in st2["unmatched"] and "ground-glass" in st2["unmatched"]
    assert w["attributes"] > w["global"]


def test_negation_excludes(archive):
    q = parse_dict(pf("nodule"), pf("pleural effusion", negated=True))
    results, total, _ = ranked(archive, q, unit(0.9, 0.0, 0.6))
    studies = [r["study"] for r in results]
    assert "ST3" not in studies and total == 3
    assert all("no pleural effusion" in r["matched"] for r in results)


def test_key_slice_from_predicted_finding_else_middle(archive):
    results, _, _ = ranked(archive, parse_dict(pf("nodule", "left lower lobe")), unit(1.0, 0.2))
    by = {r["study"]: r for r in results}
    assert by["ST1"]["key_slice"] == 17 and by["ST1"]["region"] == [5, 6, 20, 22]
    assert by["ST1"]["located_by"] == "finding"
    assert by["ST2"]["key_slice"] == 20 and by["ST2"]["region"] == [0, 0, 63, 63]  # no map, no slice: the middle
    assert by["ST2"]["located_by"] == "middle"


@pytest.mark.parametrize("z_cell, slices", [(3, {6, 7}), (0, {0, 1})])
def test_key_slice_from_the_stored_maps_conditioned_on_the_query(archive, z_cell, slices):
    # ST2's nodule was predicted without a key slice; its stored type and region maps show where a
    # nodule lies in the right lower lobe, and the query names exactly that
    from medsearch import vocab
    from medsearch.models.spatial_store import save_spatial

    n_t = len(vocab.FINDING_TYPES)
    sp = np.zeros((n_t + 1 + len(vocab.LOBES), 6, 5, 4), np.float32)
    sp[n_t + 1 + vocab.LOBES.index("right lower lobe")] = 1.0
    sp[vocab.FINDING_TYPES.index("nodule"), 1, 2, z_cell] = 0.8
    sp[vocab.FINDING_TYPES.index("pleural effusion"), 4, 1, 3 - z_cell] = 0.99  # another type: ignored
    canon = np.diag([2.0, 2.0, 2.0, 1.0])
    # native voxel (x, y, z) = canonical voxel: LPS = diag(-1, -1, 1) @ RAS
    save_spatial(archive, "SE2", sp, (12, 10, 8), canon, np.diag([-2.0, -2.0, 2.0, 1.0]), (40, 64, 64))
    results, _, _ = ranked(archive, parse_dict(pf("nodule", "right lower lobe")), unit(1.0, 0.5))
    st2 = next(r for r in results if r["study"] == "ST2")
    assert st2["key_slice"] in slices and st2["region"] != [0, 0, 63, 63]
    assert st2["located_by"] == "maps"


def test_key_slice_from_the_slot_the_query_names_before_the_maps(archive):
    # ST2's stored record also holds per-slot locations (ctseg encodes them): the query's slot wins over
    # the coarse heatmap of the same record
    from medsearch import vocab
    from medsearch.models.spatial_store import save_spatial

    n_t, n_l = len(vocab.FINDING_TYPES), len(vocab.LOBES)
    sp = np.zeros((n_t + 1 + n_l, 6, 5, 4), np.float32)
    sp[n_t + 1 + vocab.LOBES.index("right lower lobe")] = 1.0
    sp[vocab.FINDING_TYPES.index("nodule"), 1, 2, 0] = 0.8
    loc = np.zeros((n_t, n_l, 6), np.float32)
    loc[:, :, 1] = -1
    loc[vocab.FINDING_TYPES.index("nodule"), vocab.LOBES.index("right lower lobe")] = [0.4, 31, 10, 11, 14, 15]
    canon = np.diag([2.0, 2.0, 2.0, 1.0])
    save_spatial(archive, "SE2", sp, (12, 10, 8), canon, np.diag([-2.0, -2.0, 2.0, 1.0]), (40, 64, 64), loc)
    results, _, _ = ranked(archive, parse_dict(pf("nodule", "right lower lobe")), unit(1.0, 0.5))
    st2 = next(r for r in results if r["study"] == "ST2")
    assert (st2["key_slice"], st2["region"], st2["located_by"]) == (31, [10, 11, 14, 15], "slot")
    # a lobe the record has no location for falls back to the stored maps
    results, _, _ = ranked(archive, parse_dict(pf("nodule", "left upper lobe")), unit(1.0, 0.5))
    assert next(r for r in results if r["study"] == "ST2")["located_by"] != "slot"


def test_a_predicted_finding_in_another_lobe_yields_to_the_named_lobes_slot(archive):
    # ST1 predicts its nodule in the left lower lobe (key slice 17); asked for the right lower lobe, the
    # key slice is that lobe's slot, where the record has one, else still the predicted finding's
    from medsearch import vocab
    from medsearch.models.spatial_store import remove_spatial, save_spatial

    n_t, n_l = len(vocab.FINDING_TYPES), len(vocab.LOBES)
    loc = np.zeros((n_t, n_l, 6), np.float32)
    loc[:, :, 1] = -1
    loc[vocab.FINDING_TYPES.index("nodule"), vocab.LOBES.index("right lower lobe")] = [0.2, 9, 1, 2, 3, 4]
    sp = np.zeros((n_t + 1 + n_l, 6, 5, 4), np.float32)
    save_spatial(archive, "SE1", sp, (12, 10, 8), np.eye(4), np.eye(4), (40, 64, 64), loc)
    try:
        st1 = lambda q: next(r for r in ranked(archive, parse_dict(q), unit(1.0, 0.2))[0]  # noqa: E731
                             if r["study"] == "ST1")
        rll = st1(pf("nodule", "right lower lobe"))
        assert (rll["key_slice"], rll["located_by"]) == (9, "slot")
        assert (st1(pf("nodule", "left lower lobe"))["key_slice"], st1(pf("nodule"))["located_by"]) == (17, "finding")
        remove_spatial(archive, "SE1")
        assert (st1(pf("nodule", "right lower lobe"))["key_slice"],
                st1(pf("nodule", "right lower lobe"))["located_by"]) == (17, "finding")
    finally:
        remove_spatial(archive, "SE1")


@pytest.mark.parametrize("filters, expected", [
    ({"modality": "MR"}, {"ST4"}),
    ({"modality": ["ct"]}, {"ST1", "ST2", "ST3"}),
    ({"date_from": "2023-01-01", "date_to": "2023-12-31"}, {"ST2"}),
    ({"date_to": "2022-12-31"}, {"ST4"}),
    ({"body_part": "chest"}, {"ST1", "ST2", "ST3", "ST4"}),
    ({"body_part": "HEAD"}, set()),
])
def test_filters(archive, filters, expected):
    results, total, _ = ranked(archive, parse_dict(), unit(1.0), filters=filters)
    assert {r["study"] for r in results} == expected and total == len(expected)


def test_user_allowed_sites_fail_closed(archive):
    north = Principal("ann", "radiologist", allowed_sites=("north",))
    results, _, _ = ranked(archive, parse_dict(), unit(1.0), user=north)
    assert {r["study"] for r in results} == {"ST1", "ST2", "ST3"}
    nowhere = Principal("bob", "radiologist", allowed_sites=())
    assert ranked(archive, parse_dict(), unit(1.0), user=nowhere)[0] == []
    everyone = Principal("cid", "radiologist", allowed_sites=None)
    assert len(ranked(archive, parse_dict(), unit(1.0), user=everyone)[0]) == 4


def test_restricted_patients_never_appear(home):
    inst = Instance.create(home, settings={"restricted_patients": ["P1"]})
    try:
        add_series(inst, "P1", "ST1", "SE1", unit(1.0))
        add_series(inst, "P2", "ST2", "SE2", unit(0.5, 0.5))
        results, total, _ = ranked(inst, parse_dict(), unit(1.0))
        assert [r["study"] for r in results] == ["ST2"] and total == 1
        # also when a filter makes the index search pre-filtered
        results, _, _ = ranked(inst, parse_dict(), unit(1.0), filters={"modality": "CT"})
        assert [r["study"] for r in results] == ["ST2"]
    finally:
        inst.close()


def test_series_aggregate_to_their_study(sqlite_instance):
    add_series(sqlite_instance, "P1", "ST1", "SE1a", unit(0.2, 1.0), [finding("nodule", "right upper lobe")])
    add_series(sqlite_instance, "P1", "ST1", "SE1b", unit(1.0, 0.1), [finding("nodule", "right upper lobe")])
    add_series(sqlite_instance, "P2", "ST2", "SE2", unit(1.0, 0.4), [finding("nodule", "right upper lobe")])
    results, total, _ = ranked(sqlite_instance, parse_dict(pf("nodule")), unit(1.0))
    assert [r["study"] for r in results] == ["ST1", "ST2"] and total == 2
    assert results[0]["series"] == "SE1b"  # the study is represented by its best series


def test_k_limits_results(archive):
    results, total, _ = ranked(archive, parse_dict(), unit(1.0), k=2)
    assert len(results) == 2 and total == 4


def test_similar_leaves_out_its_own_study(archive):
    out = S.similar(archive, "SE1", k=3, user=Principal("ann", "radiologist"))
    studies = [r["study"] for r in out["results"]]
    assert "ST1" not in studies and studies[0] == "ST3"  # same LLL ground-glass nodule
    assert out["query"]["similar_to"] == {"series": "SE1"}


@pytest.mark.parametrize("series", ["NOPE", "", "x" * 65])
def test_similar_unknown_series(sqlite_instance, series):
    with pytest.raises((NotFoundError, InputError)):
        S.similar(sqlite_instance, series)


@pytest.mark.parametrize("filters, message", [
    ({"colour": "red"}, "Unknown search filter"),
    ({"date_from": "yesterday"}, "not a date"),
    ({"date_from": "2024-02-01", "date_to": "2024-01-01"}, "after date_to"),
    ({"modality": 5}, "must be a string"),
])
def test_bad_filters(filters, message):
    with pytest.raises(InputError, match=message):
        S.search_rules.normalise_filters(filters)


@pytest.mark.parametrize("text, k, message", [
    ("", 10, "empty"), ("   ", 10, "empty"), ("x" * 4001, 10, "longer than"), ("nodule", 0, "k must be"),
    ("nodule", 201, "k must be"), ("nodule", True, "k must be"), (None, 10, "empty"),
])
def test_bad_search_input(sqlite_instance, text, k, message):
    with pytest.raises(InputError, match=message):
        S.search(sqlite_instance, text, k=k)


@pytest.mark.parametrize("version, scored", [
    (None, False), ("", False), ("ctseg-62358090f9cf", False), ("ctseg-62358090f9cf-n372441", False),
    ("ctseg-62358090f9cf-n372441-s43ca4e", True), ("ctseg-62358090f9cf-int8-n372441-s43ca4e", True),
])
def test_which_model_versions_score_by_likelihood(version, scored):
    from medsearch.models.registry import scored_by_likelihood

    assert scored_by_likelihood(version) is scored


class _LikelihoodEncoder:
    model_version = "ctseg-000000000000-sabcdef"

    def similarity_query(self, vector, findings):
        self.seen = (vector, findings)
        return np.full(len(vector), 7.0, dtype=np.float32)


def test_more_like_this_asks_a_likelihood_model_for_its_query_and_refuses_another_models_vector(archive,
                                                                                                monkeypatch):
    enc = _LikelihoodEncoder()
    monkeypatch.setattr(S, "_encoder", lambda inst: enc)
    vec = unit(1.0, 0.2)
    found = [finding("nodule", "left lower lobe", "left", "ground-glass", 21.0)]
    out = S._similarity_query(archive, vec, found, enc.model_version)
    assert (out == 7.0).all() and enc.seen[1] == found
    # a projection model's vectors are their own query: the encoder is not even asked
    assert S._similarity_query(archive, vec, found, "ctseg-000000000000") is vec
    with pytest.raises(InputError, match="another model") as err:
        S._similarity_query(archive, vec, found, "ctseg-111111111111-s123456")
    assert "encode-pending" in str(err.value)

"""Attribute matching and adaptive weights, on plain parse dicts and finding rows."""

from __future__ import annotations

import pytest

from medsearch import search_match as sm


def q(*findings) -> dict:
    return {"findings": list(findings), "canonical": "", "unmatched": []}


def qf(concept, site=None, laterality=None, size=None, density=None, negated=False) -> dict:
    return {"concept": {"id": "x", "term": concept}, "site": {"id": "y", "term": site} if site else None,
            "laterality": laterality, "size_mm": size, "density": density, "negated": negated}


def pred(ftype, site=None, laterality=None, density=None, size_mm=None, probability=0.9) -> dict:
    return {"finding_type": ftype, "site": site, "laterality": laterality, "density": density, "size_mm": size_mm,
            "probability": probability}


GGN_LLL = pred("nodule", "left lower lobe", "left", "ground-glass", 22.0)


@pytest.mark.parametrize("pred_site, query_site, expected", [
    ("left lower lobe", "left lower lobe", 1.0),
    ("left lower lobe", "left lung", 1.0),
    ("lingula", "left lung", 1.0),
    ("lingula", "left upper lobe", 1.0),
    ("right lower lobe", "left lung", 0.0),
    ("left upper lobe", "lingula", sm.FINER_SITE_CREDIT),
    ("right lower lobe", "posterior basal segment of right lower lobe", sm.FINER_SITE_CREDIT),
    (None, "left lung", 0.0),
])
def test_site_hierarchy(pred_site, query_site, expected):
    assert sm.site_score(pred_site, query_site) == expected


@pytest.mark.parametrize("size_mm, bounds, expected", [
    (20.0, {"min": 20, "max": 20}, 1.0),
    (22.0, {"min": 20, "max": 20}, 1.0),  # within the 15% tolerance
    (25.0, {"min": 20, "max": None}, 1.0),
    (8.0, {"min": None, "max": 10}, 1.0),
    (40.0, {"min": None, "max": 10}, 0.0),
    (None, {"min": 5, "max": None}, 0.0),
])
def test_size_bounds(size_mm, bounds, expected):
    assert sm.size_score(size_mm, bounds) == pytest.approx(expected)


def test_size_score_decays_outside_bounds():
    near, far = sm.size_score(26.0, {"min": None, "max": 20}), sm.size_score(28.0, {"min": None, "max": 20})
    assert 0.0 < far < near < 1.0


def test_full_match_lists_every_attribute():
    m = sm.match(q(qf("nodule", "left lower lobe", size={"min": 20, "max": 20}, density="ground-glass")), [GGN_LLL])
    assert not m.excluded
    assert m.matched == ["nodule", "left lower lobe", "20 mm", "ground-glass"]
    assert m.unmatched == []
    assert m.score == pytest.approx(0.9)


def test_wrong_side_is_unmatched_and_scores_lower():
    good = sm.match(q(qf("nodule", "left lower lobe")), [GGN_LLL])
    bad = sm.match(q(qf("nodule", "right lower lobe")), [GGN_LLL])
    assert bad.unmatched == ["right lower lobe"] and "nodule" in bad.matched
    assert bad.score < good.score


@pytest.mark.parametrize("query, placed", [
    (qf("nodule"), True),                                   # no site named: anywhere will do
    (qf("nodule", "left lower lobe"), True),
    (qf("nodule", "left lung"), True),
    (qf("nodule", "right lower lobe"), False),              # right type, wrong lobe
    (qf("nodule", laterality="right"), False),
    (qf("nodule", "left lower lobe", size={"min": 5, "max": 5}), True),  # size does not move the key slice
    (qf("pneumothorax"), False),                            # nothing of the type
])
def test_placed_says_whether_the_best_finding_lies_where_the_query_says(query, placed):
    assert sm.match(q(query), [GGN_LLL]).placed == [placed]


def test_missing_concept_scores_zero():
    m = sm.match(q(qf("pneumothorax")), [GGN_LLL])
    assert m.score == 0.0 and m.unmatched == ["pneumothorax"] and m.best == [None]


def test_best_of_several_predictions_is_used():
    preds = [pred("nodule", "right upper lobe", "right", "solid", 5.0), GGN_LLL]
    m = sm.match(q(qf("nodule", "left lung", density="ground-glass")), preds)
    assert m.best == [GGN_LLL]


@pytest.mark.parametrize("probability, excluded", [(0.9, True), (0.6, True), (0.2, False)])
def test_negation_excludes_predicted_finding(probability, excluded):
    preds = [GGN_LLL, pred("pleural effusion", "pleura", "right", probability=probability)]
    m = sm.match(q(qf("nodule"), qf("pleural effusion", negated=True)), preds)
    assert m.excluded is excluded
    assert ("no pleural effusion" in m.unmatched) is excluded
    assert ("no pleural effusion" in m.matched) is not excluded


REPORT = (qf("nodule"), qf("pleural effusion", negated=True), qf("pneumothorax", negated=True),
          qf("consolidation", negated=True), qf("mass", negated=True))


@pytest.mark.parametrize("probability, excluded, contradicted", [
    (0.95, True, True),     # predicted confidently: the series is excluded
    (0.6, False, True),     # predicted, not confidently: it costs the series its share of the negations
    (0.2, False, False),    # not predicted: the negation is met
])
def test_a_reports_pertinent_negatives_exclude_only_confident_predictions(probability, excluded, contradicted):
    assert len(REPORT) >= sm.REPORT_FINDINGS
    preds = [GGN_LLL, pred("pneumothorax", "pleura", "left", probability=probability)]
    m = sm.match(q(*REPORT), preds)
    plain = sm.match(q(qf("nodule")), preds)
    assert plain.score > 0 and m.excluded is excluded
    assert ("no pneumothorax" in m.unmatched) is contradicted
    assert m.score == pytest.approx(0.0 if excluded else plain.score * (3 / 4 if contradicted else 1.0))


def test_negation_only_query_scores_passing_series_fully():
    assert sm.match(q(qf("pneumothorax", negated=True)), [GGN_LLL]).score == 1.0


def test_calcification_concept_matches_calcified_density():
    m = sm.match(q(qf("calcification")), [pred("nodule", "right upper lobe", "right", "calcified", 6.0)])
    assert m.score > 0 and m.matched == ["calcification"]


@pytest.mark.parametrize("lat, pred_lat, expected", [
    ("left", "left", 1.0), ("left", "bilateral", 1.0), ("left", "right", 0.0),
    ("bilateral", "left", 0.0), ("bilateral", "bilateral", 1.0),
])
def test_laterality(lat, pred_lat, expected):
    assert sm.laterality_score(pred("pleural effusion", "pleura", pred_lat), lat) == expected


def test_laterality_derived_from_site():
    assert sm.laterality_score(pred("nodule", "right middle lobe"), "right") == 1.0


def test_weights_adapt_to_complexity():
    free = sm.weights(q())
    one = sm.weights(q(qf("nodule")))
    rich = sm.weights(q(qf("nodule", "left lower lobe", size={"min": 20, "max": 20}, density="ground-glass")))
    for w in (free, one, rich):
        assert sum(w.values()) == pytest.approx(1.0)
    assert free["attributes"] == 0.0
    # a one-word query relies on the global embedding; several attributes on attributes and region
    assert one["global"] > one["attributes"] and one["global"] > one["region"]
    assert rich["attributes"] > rich["global"] and rich["region"] > one["region"]
    assert rich["global"] < one["global"] < free["global"]


def test_a_report_length_query_leans_on_the_global_embedding():
    three = q(qf("nodule", "left lower lobe"), qf("mass", "right upper lobe"), qf("pneumothorax", negated=True))
    report = q(qf("nodule", "left lower lobe"), qf("mass", "right upper lobe"), qf("pneumothorax", negated=True),
               qf("pleural effusion", negated=True))
    below, at = sm.weights(three), sm.weights(report)
    assert sum(at.values()) == pytest.approx(1.0)
    assert below["attributes"] > below["global"]                   # still a many-attribute query
    assert at["attributes"] == sm.REPORT_ATTRIBUTE_WEIGHT < at["global"] and at["region"] == below["region"]


def test_weights_without_region_move_to_global():
    w = sm.weights(q(qf("nodule", "left lower lobe")), have_region=False)
    assert w["region"] == 0.0 and sum(w.values()) == pytest.approx(1.0)


def test_complexity_counts_attributes_findings_and_negations():
    assert sm.complexity(q(qf("nodule"))) == 0
    assert sm.complexity(q(qf("nodule", "left lower lobe", density="solid"))) == 2
    assert sm.complexity(q(qf("nodule"), qf("mass"), qf("pleural effusion", negated=True))) == 2


def test_laterality_implied_by_the_site_is_not_a_second_attribute():
    implied = q(qf("nodule", "left lower lobe", laterality="left"))
    assert sm.complexity(implied) == 1
    m = sm.match(implied, [GGN_LLL])
    assert m.matched == ["nodule", "left lower lobe"]
    # a side that the site does not imply stays an attribute (e.g. a pleural finding)
    assert sm.complexity(q(qf("pleural effusion", "pleura", laterality="left"))) == 2

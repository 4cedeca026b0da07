"""Behaviour of medsearch.query.parse beyond the phrase set: schema, canonical grammar, leftovers, errors."""

import pytest

from medsearch.errors import InputError
from medsearch.query import canonical_phrase, parse, site_within
from medsearch.query.parser import MAX_CHARS


def test_schema_is_exactly_the_issue_s():
    d = parse("LLL GGN 2cm").to_dict()
    assert set(d) == {"findings", "canonical", "unmatched"}
    (f,) = d["findings"]
    assert list(f) == ["concept", "site", "laterality", "size_mm", "density", "shape", "count", "change", "negated"]
    assert f["concept"] == {"id": "ms:nodule", "term": "nodule"}
    assert f["site"] == {"id": "ms:left-lower-lobe", "term": "left lower lobe"}
    assert f["size_mm"] == {"min": 20, "max": 20}
    assert f["negated"] is False
    assert d["canonical"] == "left lower lobe 20 mm ground-glass nodule"


def test_no_size_is_null():
    assert parse("nodule").to_dict()["findings"][0]["size_mm"] is None


@pytest.mark.parametrize("text", ["磨玻璃结节", "ground-glass nodule", "GGN", "磨玻璃密度结节"])
def test_attributes_are_decoupled(text):
    (f,) = parse(text).findings
    assert (f.concept.term, f.density) == ("nodule", "ground-glass")


@pytest.mark.parametrize("text", ["GGO", "磨玻璃影", "ground glass opacity", "磨玻璃密度影"])
def test_ground_glass_opacity_is_a_concept(text):
    (f,) = parse(text).findings
    assert (f.concept.term, f.density) == ("ground-glass opacity", None)


@pytest.mark.parametrize("text,site,lat", [("右下肺结节", "right lower lobe", "right"),
                                           ("左上肺结节", "left upper lobe", "left"),
                                           ("双下肺结节", "lower lobe", "bilateral"),
                                           ("两肺结节", "lung", "bilateral"),
                                           ("right lower lobe nodule", "right lower lobe", "right"),
                                           ("nodule in the right lung base", "right lower lobe", "right")])
def test_colloquial_sites(text, site, lat):
    (f,) = parse(text).findings
    assert (f.site.term, f.laterality) == (site, lat)


def test_bilateral_lower_lobes_canonical():
    assert parse("双下肺结节").canonical == "bilateral lower lobes nodule"


def test_mixed_language_longest_match():
    a, b = parse("LLL 磨玻璃结节 2cm"), parse("左肺下叶 GGN 20 mm")
    assert a.to_dict()["findings"] == b.to_dict()["findings"]


def test_longest_match_prefers_cover():
    (f,) = parse("右肺门淋巴结肿大").findings
    assert (f.site.term, f.laterality) == ("hilum", "right")


def test_negation_scope_ends_at_the_clause():
    fs = parse("No pleural effusion. There is a nodule in the RLL.").findings
    assert [(f.concept.term, f.negated) for f in fs] == [("pleural effusion", True), ("nodule", False)]
    fs = parse("无胸腔积液，右下肺结节").findings
    assert [(f.concept.term, f.negated) for f in fs] == [("pleural effusion", True), ("nodule", False)]


def test_negation_carries_over_a_list():
    fs = parse("no effusion, pneumothorax, or consolidation").findings
    assert all(f.negated for f in fs) and len(fs) == 3


def test_typo_on_long_term_only():
    assert parse("pnuemothorax").findings[0].concept.term == "pneumothorax"
    assert parse("nodlue").findings == []
    assert parse("nodlue").unmatched == ["nodlue"]


def test_unmatched_words_are_reported():
    p = parse("RLL nodule with air bronchograms, suspicious for malignancy")
    assert {"air", "bronchograms", "suspicious", "malignancy"} <= set(p.unmatched)
    assert "rll" not in p.unmatched and "with" not in p.unmatched
    p = parse("右肺下叶结节，考虑恶性可能")
    assert "恶性" in p.unmatched and "结节" not in "".join(p.unmatched)


def test_impression_repeating_a_finding_adds_nothing():
    p = parse("A 2 cm nodule in the right lower lobe. Impression: right lower lobe nodule.")
    assert len(p.findings) == 1 and p.findings[0].size_max == 20


def test_site_only_query_has_a_canonical_phrase():
    p = parse("右下肺")
    assert p.findings == [] and p.canonical == "right lower lobe"


def test_imported_hierarchy_site_within():
    assert site_within("right lower lobe", "right lung")
    assert site_within("lingula", "left lung")
    assert site_within("right lower lobe", "lower lobe")
    assert not site_within("right lower lobe", "left lung")
    assert site_within("superior segment of right lower lobe", "right lung")
    assert not site_within("unknown place", "right lung")


@pytest.mark.parametrize("finding,phrase", [
    ({"type": "nodule", "site": "right lower lobe", "laterality": "right", "diameter_mm": 20.0,
      "density": "ground-glass"}, "right lower lobe 20 mm ground-glass nodule"),
    ({"type": "nodule", "site": "left upper lobe", "laterality": "left", "diameter_mm": 8.25, "density": "solid",
      "shape": "spiculated", "count": "single", "change": "growing"},
     "single growing left upper lobe 8.2 mm spiculated solid nodule"),
    ({"type": "pleural effusion", "site": "pleura", "laterality": "left"}, "left pleural effusion"),
    ({"type": "emphysema", "site": "right lung", "laterality": "right", "diameter_mm": None}, "right lung emphysema"),
    ({"type": "nodule", "count": 3}, "multiple nodules"),
    ({"type": "nodule", "size_mm": 8}, "8 mm nodule"),
    ({"concept": {"id": "ms:pleural-effusion", "term": "pleural effusion"}, "negated": True}, "no pleural effusion"),
    ({"concept": {"id": "ms:nodule", "term": "nodule"}, "site": {"id": "ms:lower-lobe", "term": "lower lobe"},
      "laterality": "bilateral", "size_mm": {"min": None, "max": 10}}, "bilateral lower lobes under 10 mm nodule"),
])
def test_canonical_phrase_of_a_label(finding, phrase):
    assert canonical_phrase(finding) == phrase


def test_canonical_phrase_equals_parse_canonical():
    p = parse("右肺上叶见一枚分叶状实性结节，大小约2.1×1.8cm，较前增大")
    assert canonical_phrase(p.to_dict()["findings"][0]) == p.canonical


@pytest.mark.parametrize("finding,problem", [({"type": "tumour"}, "Unknown finding type"),
                                             ({"site": "right lower lobe"}, "no 'type'"),
                                             ({"type": "nodule", "site": "kidney"}, "Unknown site"),
                                             ({"type": "nodule", "size_mm": "big"}, "size must be"),
                                             ("nodule", "must be a dict")])
def test_canonical_phrase_errors(finding, problem):
    with pytest.raises(InputError) as err:
        canonical_phrase(finding)
    assert problem in err.value.problem and err.value.fix


@pytest.mark.parametrize("text,problem", [(None, "must be text"), (b"LLL", "must be text"),
                                          ("x" * (MAX_CHARS + 1), "at most")])
def test_bad_input(text, problem):
    with pytest.raises(InputError) as err:
        parse(text)
    assert problem in err.value.problem and err.value.fix


@pytest.mark.parametrize("text", ["", "   ", "。。。", "12345", "!!!"])
def test_empty_input_parses_to_nothing(text):
    p = parse(text)
    assert p.findings == [] and p.canonical == ""


@pytest.mark.parametrize("text,word", [("亚实性结节", "亚实性"), ("胸膜下结节", "胸膜下"), ("subsolid nodule", "subsolid")])
def test_unmodelled_words_mislead_nothing(text, word):
    (f,) = parse(text).findings
    assert (f.density, f.site) == (None, None)
    assert parse(text).unmatched == [word]

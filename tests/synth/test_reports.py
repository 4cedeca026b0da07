"""Reports name every finding, in both languages, and never contradict one."""

from medsearch.synth.reports import NEGATIVES, TYPE_TERMS_EN, TYPE_TERMS_ZH, sentence_en, sentence_zh


def _names(text, terms):
    return any(t.lower() in text.lower() for t in terms)


def test_reports_name_every_finding(forced_studies):
    for s in forced_studies:
        for f in s.labels["findings"]:
            assert _names(s.labels["report_en"], TYPE_TERMS_EN[f["type"]]), (f["type"], s.labels["report_en"])
            assert _names(s.labels["report_zh"], TYPE_TERMS_ZH[f["type"]]), (f["type"], s.labels["report_zh"])


def test_reports_contradict_no_finding(plain_studies):
    for s in plain_studies:
        _check_no_contradiction(s)


def _check_no_contradiction(s):
    present = {f["type"] for f in s.labels["findings"]}
    for types, en_opts, zh_opts in NEGATIVES:
        said_en = any(o in s.labels["report_en"] for o in en_opts)
        said_zh = any(o in s.labels["report_zh"] for o in zh_opts)
        if present & set(types):
            assert not said_en and not said_zh, (types, s.labels["report_en"])
        else:
            assert said_en and said_zh  # pertinent negatives are stated
    if present:
        assert "lungs are clear" not in s.labels["report_en"].lower()


def test_sentences_use_abbreviations_and_measurements():
    import numpy as np

    f = {"type": "nodule", "site": "right lower lobe", "laterality": "right", "diameter_mm": 21.0,
         "short_axis_mm": 18.0, "density": "solid", "shape": "spiculated", "key_image_number": 40}
    en = {sentence_en(f, np.random.default_rng(i)) for i in range(40)}
    zh = {sentence_zh(f, np.random.default_rng(i)) for i in range(40)}
    assert any("RLL" in s for s in en) and any("right lower lobe" in s for s in en)
    assert any("2.1 x 1.8 cm" in s for s in en)
    assert any("右下叶" in s for s in zh) and any("约2.1cm×1.8cm" in s for s in zh)
    assert len(en) > 3


def test_follow_up_reports_compare_with_the_prior(plain_studies):
    s = plain_studies[-1]
    assert s.labels["visit"] > 0
    assert s.labels["prior_study_date"] in s.labels["report_en"]
    assert s.labels["prior_study_date"] in s.labels["report_zh"]


def test_forced_findings_reports_contradict_none(forced_studies):
    for s in forced_studies:
        _check_no_contradiction(s)


def test_longitudinal_lesions_follow_their_trajectory():
    """A tracked nodule appears, grows, stays stable or resolves across a patient's studies."""
    from medsearch.synth.plan import locate, patient_plan, visit_plan

    seen = set()
    for index in range(300):
        p, v = locate(0, index)
        pp = patient_plan(0, p)
        if pp.trajectory is None or v != pp.n_visits - 1 or pp.trajectory in seen:
            continue
        visits = [visit_plan(0, index - pp.n_visits + 1 + i) for i in range(pp.n_visits)]
        tracked = [next((f for f in vp.findings if f.lesion_id == pp.tracked.lesion_id), None) for vp in visits]
        if pp.trajectory == "appears":
            assert tracked[0] is None and tracked[1].change == "new"
        elif pp.trajectory == "grows":
            sizes = [t.diameter_mm for t in tracked]
            assert sizes == sorted(sizes) and sizes[-1] > sizes[0] and tracked[-1].change == "growing"
        elif pp.trajectory == "stable":
            assert len({t.diameter_mm for t in tracked}) == 1 and tracked[-1].change == "stable"
        else:
            assert tracked[0] is not None and tracked[-1] is None
            assert visits[-1].resolved[0].lesion_id == pp.tracked.lesion_id
        seen.add(pp.trajectory)
    assert seen == {"appears", "grows", "stable", "resolves"}


def test_bilateral_emphysema_is_reported_once_as_bilateral(forced_studies):
    s = forced_studies[0]  # nodule, mass, effusion, emphysema (bilateral or one lung)
    emph = [f for f in s.labels["findings"] if f["type"] == "emphysema"]
    if len(emph) == 2:
        assert "Bilateral emphysema." in s.labels["report_en"] and "双肺肺气肿。" in s.labels["report_zh"]
        assert "右肺肺气肿" not in s.labels["report_zh"]
    else:
        side = emph[0]["laterality"]
        assert f"Emphysema of the {side} lung." in s.labels["report_en"]

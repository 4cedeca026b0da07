"""Whole synthetic reports (medsearch.synth.reports) parse back to their labelled findings.

Every labelled finding must be recovered, not negated, with its type, site and side, its density for
nodules, and its size where the report states one; and no pertinent negative may deny a labelled type.
"""

from dataclasses import asdict
from types import SimpleNamespace

import numpy as np
import pytest

from medsearch import vocab
from medsearch.query import parse
from medsearch.synth.findings import sample_finding, split_bilateral
from medsearch.synth.reports import write_reports

TYPES = ("nodule", "mass", "cavity", "consolidation", "ground-glass opacity", "atelectasis", "pleural effusion",
         "pneumothorax", "emphysema")
ACQ = SimpleNamespace(thickness=1.25, kernel="B70f")


def _labels(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    findings = []
    kinds = rng.choice(TYPES, size=int(rng.integers(1, 4)), replace=False)
    prior = "2024-03-01" if seed % 2 else None
    for k, t in enumerate(kinds):
        for spec in split_bilateral(sample_finding(rng, str(t))):
            f = asdict(spec)
            f["sides_mm"] = f.pop("sides") or None
            if t in ("nodule", "mass", "cavity"):
                f["short_axis_mm"] = round(f["diameter_mm"] * float(rng.uniform(0.75, 0.95)), 1)
            if prior and t in ("nodule", "mass") and k == 0:
                f["change"] = ("new", "growing", "stable")[seed % 3]
                f["prior_diameter_mm"] = round(f["diameter_mm"] * (0.7 if f["change"] == "growing" else 1.0), 1)
            f["key_image_number"] = int(rng.integers(10, 120))
            findings.append(f)
    return {"findings": findings, "prior_study_date": prior, "contrast": bool(seed % 3 == 0), "resolved": []}


def _recovered(f: dict, parsed) -> bool:
    for g in parsed.findings:
        if g.negated or g.concept.term != f["type"]:
            continue
        if f["site"] in vocab.LOBES + (vocab.LINGULA,):
            if g.site is None or g.site.term != f["site"]:
                continue
        elif f["type"] == "emphysema":
            if g.laterality not in (f["laterality"], "bilateral"):
                continue
        elif g.laterality != f["laterality"]:
            continue
        if f["type"] == "nodule" and g.density != f["density"]:
            continue
        if g.size_max is not None and f["diameter_mm"] is not None and f["type"] != "pleural effusion":
            if abs(g.size_max - f["diameter_mm"]) > 1.0:
                continue
        return True
    return False


@pytest.mark.parametrize("seed", range(40))
def test_reports_parse_back_to_their_labels(seed):
    labels = _labels(seed)
    en, zh = write_reports(labels, ACQ, np.random.default_rng(seed))
    present = {f["type"] for f in labels["findings"]}
    for lang, text in (("en", en), ("zh", zh)):
        parsed = parse(text)
        for f in labels["findings"]:
            assert _recovered(f, parsed), (lang, f["type"], f["site"], [g.to_dict() for g in parsed.findings], text)
        denied = {g.concept.term for g in parsed.findings if g.negated}
        assert not denied & present, (lang, denied & present, text)

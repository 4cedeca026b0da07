"""Whole synthetic reports (medsearch.synth.reports) parse back to their labelled findings.

Every labelled finding must be recovered, not negated, with its type, site and side, its density for
nodules, and its size where the report states one (medsearch.query.evaluate.recovered); and no pertinent
negative may deny a labelled type.
"""

from types import SimpleNamespace

import numpy as np
import pytest

from medsearch.query import parse
from medsearch.query.evaluate import recovered, synthetic_report_labels
from medsearch.synth.reports import write_reports

ACQ = SimpleNamespace(thickness=1.25, kernel="B70f")


@pytest.mark.parametrize("seed", range(40))
def test_reports_parse_back_to_their_labels(seed):
    labels = synthetic_report_labels(seed)
    en, zh = write_reports(labels, ACQ, np.random.default_rng(seed))
    present = {f["type"] for f in labels["findings"]}
    for lang, text in (("en", en), ("zh", zh)):
        parsed = parse(text)
        for f in labels["findings"]:
            assert recovered(f, parsed), (lang, f["type"], f["site"], [g.to_dict() for g in parsed.findings], text)
        denied = {g.concept.term for g in parsed.findings if g.negated}
        assert not denied & present, (lang, denied & present, text)


def test_recovered_rejects_a_wrong_parse():
    f = {"type": "nodule", "site": "right lower lobe", "laterality": "right", "diameter_mm": 12.0, "density": "solid"}
    assert recovered(f, parse("12 mm solid nodule in the RLL"))
    for text in ("12 mm solid nodule in the LLL", "20 mm solid nodule in the RLL", "12 mm ground-glass nodule in the RLL",
                 "no solid nodule in the RLL", "12 mm solid mass in the RLL"):
        assert not recovered(f, parse(text)), text

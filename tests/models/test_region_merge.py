"""The learned merge: its regression, fitting, labels, file, and the slot model reading it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsearch import vocab
from medsearch.models.region_classifier import REGION_TYPES, RegionClassifier, RegionNet
from medsearch.models.region_merge import (INPUTS, RegionMerge, fit_logistic, fit_region_merge, lobe_labels,
                                           merge_features)

L = len(vocab.LOBES)
MASS, CONS = REGION_TYPES.index("mass"), REGION_TYPES.index("consolidation")


def _confused(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Presences where the U-Net calls masses and consolidations both "consolidation", and the classifier
    sees masses but only half of the consolidations: a lobe holds a consolidation where the U-Net's presence
    is high and the classifier's mass presence low."""
    rng = np.random.default_rng(seed)
    kind = rng.choice(3, size=(n, L), p=[0.8, 0.1, 0.1])               # none, mass, consolidation
    unet = rng.uniform(0.01, 0.2, (n, len(REGION_TYPES), L))
    mine = rng.uniform(0.001, 0.05, (n, len(REGION_TYPES), L))
    unet[:, CONS][kind > 0] = rng.uniform(0.5, 0.95, int((kind > 0).sum()))
    mine[:, MASS][kind == 1] = rng.uniform(0.6, 0.99, int((kind == 1).sum()))
    seen = (kind == 2) & (rng.random((n, L)) < 0.5)
    mine[:, CONS][seen] = rng.uniform(0.3, 0.9, int(seen.sum()))
    labels = np.zeros_like(unet)
    labels[:, MASS] = kind == 1
    labels[:, CONS] = kind == 2
    return unet.astype(np.float32), mine.astype(np.float32), labels.astype(np.float32)


def _ap(scores, labels) -> float:
    from medsearch.models.train_merge import average_precision

    return average_precision(scores, labels)


def test_the_regression_is_at_its_optimum_and_deterministic():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3))
    y = (x @ [1.5, -2.0, 0.0] + 0.3 + rng.logistic(size=400) > 0).astype(float)
    w, b = fit_logistic(x, y, c=0.5)
    # the penalised log-loss's gradient vanishes at the fit: X^T (sigmoid - y) + w / c = 0, sum(sigmoid - y) = 0
    r = 1 / (1 + np.exp(-(x @ w + b))) - y
    assert np.abs(x.T @ r + w / 0.5).max() < 1e-4 and abs(r.sum()) < 1e-4
    assert w[0] > 0.5 and w[1] < -0.5 and abs(w[2]) < 0.5
    w2, b2 = fit_logistic(x, y, c=0.5)
    assert np.array_equal(w, w2) and b == b2


def test_a_merge_tells_consolidations_from_masses_where_the_larger_presence_cannot():
    unet, mine, labels = _confused(300)
    merge = fit_region_merge(unet, mine, labels, ("consolidation",))
    assert merge.types == ("consolidation",) and merge.summary["lobes_with"]["consolidation"] == labels[:, CONS].sum()
    test_unet, test_mine, test_labels = _confused(300, seed=1)
    merged = merge.presence("consolidation", torch.from_numpy(test_unet), torch.from_numpy(test_mine)).numpy()
    larger = np.maximum(test_unet[:, CONS], test_mine[:, CONS])
    assert merged.shape == (300, L) and ((merged > 0) & (merged < 1)).all()
    assert _ap(merged, test_labels[:, CONS]) > 0.9 > _ap(larger, test_labels[:, CONS]) + 0.2
    # it learned why: the classifier's mass counts against a consolidation, the U-Net's consolidation for it
    w = dict(zip(INPUTS, merge.weights["consolidation"]))
    assert w["classifier mass"] < 0 < w["unet consolidation"]


def test_the_features_are_each_sources_log_odds_per_lobe():
    unet, mine = torch.full((2, 3, L), 0.5), torch.full((2, 3, L), 0.5)
    unet[1, CONS, 2], mine[1, MASS, 4] = 0.9, 0.0
    f = merge_features(unet, mine)
    assert f.shape == (2, L, len(INPUTS))
    assert torch.allclose(f[1, 2, INPUTS.index("unet consolidation")], torch.log(torch.tensor(9.0)))
    assert f[1, 4, INPUTS.index("classifier mass")] == pytest.approx(np.log(1e-4 / (1 - 1e-4)), rel=1e-4)
    assert (f[0] == 0).all()


@pytest.mark.parametrize("types, labels_of, message", [
    (("nodule",), lambda y: y, "not one of the region types"),
    (("atelectasis",), lambda y: y, "no lobe"),
    (("consolidation",), lambda y: np.ones_like(y), "every lobe"),
])
def test_a_merge_that_cannot_be_fitted_says_why(types, labels_of, message):
    unet, mine, labels = _confused(50)
    with pytest.raises(ValueError, match=message):
        fit_region_merge(unet, mine, labels_of(labels), types)


def test_lobe_labels_mark_the_region_types_lobes_and_the_lingula_as_the_left_upper_lobe():
    y = lobe_labels([{"type": "consolidation", "site": "lingula"}, {"type": "mass", "site": "right lower lobe"},
                     {"type": "nodule", "site": "left lower lobe"}, {"type": "atelectasis", "site": "left lung"}])
    assert y.sum() == 2
    assert y[CONS, vocab.LOBES.index("left upper lobe")] == 1 and y[MASS, vocab.LOBES.index("right lower lobe")] == 1


def test_the_merge_travels_in_the_region_classifiers_file_without_changing_its_evidence(tmp_path):
    from medsearch.models.region_classifier import REGION_FILE

    torch.manual_seed(0)
    clf = RegionClassifier(RegionNet(hidden=8))
    digest = clf.digest()
    unet, mine, labels = _confused(100)
    clf.merge = fit_region_merge(unet, mine, labels, ("consolidation", "mass"))
    # the merge reads the evidence, it does not make it: cached evidence stays valid
    assert clf.digest() == digest
    clf.save(tmp_path / REGION_FILE)
    back = RegionClassifier.load(tmp_path).merge
    assert back.types == ("mass", "consolidation")
    for t in back.types:
        assert np.allclose(back.weights[t], clf.merge.weights[t]) and back.bias[t] == pytest.approx(clf.merge.bias[t])


def test_a_merge_of_other_inputs_is_refused_on_load(tmp_path):
    from medsearch.errors import ConfigError
    from medsearch.models.region_classifier import REGION_FILE

    clf = RegionClassifier(RegionNet(hidden=8))
    clf.merge = RegionMerge({"mass": np.zeros(len(INPUTS))}, {"mass": 0.0})
    clf.save(tmp_path / REGION_FILE)
    blob = torch.load(tmp_path / REGION_FILE, weights_only=True)
    blob["merge"]["inputs"] = blob["merge"]["inputs"][:-1]
    torch.save(blob, tmp_path / REGION_FILE)
    with pytest.raises(ConfigError, match="train-regions"):
        RegionClassifier.load(tmp_path)
    with pytest.raises(ValueError, match="shape"):
        RegionMerge({"mass": np.zeros(3)}, {"mass": 0.0})


def _evidence(cells, probs):
    from medsearch.models.nodule_detector import NoduleEvidence

    n = len(probs)
    density = np.zeros((n, len(vocab.DENSITIES)), np.float32)
    density[:, vocab.DENSITIES.index("solid")] = 1.0
    return NoduleEvidence(np.asarray(cells, float).reshape(-1, 3), np.asarray(probs, np.float32),
                          np.full(n, np.log(40.0), np.float32), density)


def test_the_slot_model_takes_a_merged_types_presence_from_the_merge():
    from medsearch.models.image_tower_seg import HEAD_SPLIT
    from medsearch.models.nodule_detector import NoduleEvidence, lobes_within, nodule_slots
    from medsearch.models.region_classifier import LOBE_REACH
    from medsearch.models.slot_model import SlotModel

    torch.manual_seed(0)
    model = SlotModel().eval()
    x = torch.rand(1, 5, 16, 32, 32)
    weights = np.zeros(len(INPUTS))
    weights[INPUTS.index("unet consolidation")], weights[INPUTS.index("classifier mass")] = 1.0, -1.0
    merge = RegionMerge({"consolidation": weights}, {"consolidation": 0.5})
    ev = _evidence([[2, 5, 5]], [0.95])
    # a mass component, no consolidation component, and no atelectasis at all (missing counts as none)
    ev.others = {"mass": _evidence([[2, 5, 5]], [0.9]), "consolidation": NoduleEvidence.empty()}
    idx = [vocab.FINDING_TYPES.index(t) for t in REGION_TYPES]
    cons, mass = vocab.FINDING_TYPES.index("consolidation"), vocab.FINDING_TYPES.index("mass")
    with torch.no_grad():
        fixed = model.encode_image(x, [ev])
        model.region_merge = merge
        out = model.encode_image(x, [ev])
        unet = model.image.slots(model.image(x)[0])["presence"][0, idx]
    region = torch.softmax(out["maps"][:, :HEAD_SPLIT[0]], dim=1)[0, 1:]
    mine = torch.zeros_like(unet)
    mine[MASS] = nodule_slots(ev.others["mass"], lobes_within(region, LOBE_REACH))["presence"]
    assert torch.allclose(out["presence"][0, cons], merge.presence("consolidation", unet, mine), atol=1e-6)
    assert torch.allclose(out["presence"][0, cons],
                          torch.sigmoid(torch.logit(unet[CONS].clamp(1e-4, 1 - 1e-4))
                                        - torch.logit(mine[MASS].clamp(1e-4, 1 - 1e-4)) + 0.5), atol=1e-5)
    # the types it was not fitted for keep their fixed rule; the channels are painted as before
    assert torch.equal(out["presence"][0, mass], fixed["presence"][0, mass])
    assert torch.equal(out["maps"], fixed["maps"])
    assert not torch.equal(out["presence"][0, cons], fixed["presence"][0, cons])

"""Training the region classifier: labelled components of synthetic studies, training, calibration, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsearch.errors import InputError
from medsearch.models.region_classifier import CLASSES, REGION_TYPES
from medsearch.models.regions import FEATURE_NAMES, N_FEATURES
from medsearch.models.train_regions import (FORCED, RegionExamples, RegionTrainConfig, calibration_plan,
                                            study_components, train_regions, training_plan)


_TELLS = {"atelectasis": "short / long axis", "mass": "volume / its ellipsoid's",
          "consolidation": "share of the rim outside the lungs"}


def _toy(studies: int, seed: int) -> RegionExamples:
    """Each study: a few "none" components and, in turn, one of each region type, which one feature tells."""
    rng = np.random.default_rng(seed)
    feats, label, study, has = [], [], [], []
    for s in range(studies):
        t = REGION_TYPES[s % 3]
        k = CLASSES.index(t)
        rows = rng.normal(0, 0.3, (5, N_FEATURES)).astype(np.float32)
        rows[0, FEATURE_NAMES.index(_TELLS[t])] += 6.0                        # each type shows in one feature
        feats.append(rows)
        label += [k, 0, 0, 0, 0]
        study += [s] * 5
        has.append([r == t for r in REGION_TYPES])
    return RegionExamples(np.concatenate(feats), np.array(label, np.int64), np.array(study, np.int64),
                          np.array(has, bool))


def test_training_learns_separable_types_and_is_deterministic():
    cfg = RegionTrainConfig(steps=400, batch_size=64, hidden=16)
    clf, summary = train_regions(_toy(60, 0), _toy(30, 1), cfg, progress=False)
    again, _ = train_regions(_toy(60, 0), _toy(30, 1), cfg, progress=False)
    for a, b in zip(clf.net.state_dict().values(), again.net.state_dict().values()):
        assert torch.equal(a, b)
    for t in REGION_TYPES:
        assert summary["val"][t]["component_auc"] > 0.95 and summary["val"][t]["study_auc"] > 0.9
        assert summary["val"][t]["studies_with"] == 10
    assert summary["train_components_by_class"]["mass"] == 20 and set(summary["calibration"]) == set(REGION_TYPES)


def test_training_without_a_type_says_what_to_do():
    ex = _toy(9, 0)
    ex.label[ex.label == CLASSES.index("mass")] = 0
    with pytest.raises(InputError, match="--studies"):
        train_regions(ex, _toy(9, 1), RegionTrainConfig(steps=2), progress=False)


def test_the_plans_force_each_type_in_turn_and_calibrate_on_other_studies():
    plan = training_plan(8)
    assert [f for _, f in plan] == list(FORCED) * 2
    assert calibration_plan(3, 8) == [(8, None), (9, None), (10, None)]


def test_a_forced_mass_is_a_labelled_component_of_its_study():
    out = study_components((1303, 5, "mass"))
    assert out["features"].shape[1] == N_FEATURES and len(out["label"]) == len(out["features"])
    assert CLASSES.index("mass") in out["label"]
    assert out["has"].tolist() == [t == "mass" for t in REGION_TYPES]

"""The region classifier: its network's shape contract, files, calibration and detections."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsearch.errors import ConfigError
from medsearch.models.region_classifier import (CLASSES, REGION_FILE, REGION_TYPES, RegionClassifier, RegionNet)
from medsearch.models.regions import N_FEATURES


def test_region_net_shape_contract():
    net = RegionNet(hidden=8, mean=torch.ones(N_FEATURES), std=torch.full((N_FEATURES,), 2.0))
    assert net(torch.randn(5, N_FEATURES)).shape == (5, len(CLASSES))
    assert torch.equal(net.mean, torch.ones(N_FEATURES))     # the standardisation travels with the weights


def test_save_and_load_keep_weights_and_calibration(tmp_path):
    torch.manual_seed(0)
    clf = RegionClassifier(RegionNet(hidden=8), {"mass": (0.5, -1.0)}, {"steps": 3})
    clf.save(tmp_path / REGION_FILE)
    back = RegionClassifier.load(tmp_path)
    x = np.random.default_rng(0).normal(size=(4, N_FEATURES)).astype(np.float32)
    for t in REGION_TYPES:
        assert back.probabilities(x)[t] == pytest.approx(clf.probabilities(x)[t])
    assert back.calibration["mass"] == (0.5, -1.0) and back.calibration["atelectasis"] == (1.0, 0.0)
    assert back.summary == {"steps": 3} and back.digest() == clf.digest()
    assert RegionClassifier.load(tmp_path / "elsewhere") is None


def test_an_unreadable_file_names_the_fix(tmp_path):
    (tmp_path / REGION_FILE).write_bytes(b"not a torch file")
    with pytest.raises(ConfigError, match="train-regions"):
        RegionClassifier.load(tmp_path)


def test_probabilities_follow_the_calibration():
    clf = RegionClassifier(RegionNet(hidden=8))
    x = np.random.default_rng(1).normal(size=(6, N_FEATURES)).astype(np.float32)
    lo = clf.log_odds(x)
    p = clf.probabilities(x)
    assert set(p) == set(REGION_TYPES)
    k = CLASSES.index("mass")
    assert p["mass"] == pytest.approx(1 / (1 + np.exp(-lo[:, k])), rel=1e-5)
    clf.calibration["mass"] = (0.0, -3.0)                    # a calibration that ignores the net
    assert clf.probabilities(x)["mass"] == pytest.approx(np.full(6, 1 / (1 + np.exp(3.0))), rel=1e-5)
    assert all(len(v) == 0 for v in clf.probabilities(np.zeros((0, N_FEATURES), np.float32)).values())


def test_detect_classifies_each_component_of_a_scan():
    hu = np.full((40, 50, 50), -850.0, np.float32)
    z, y, x = np.meshgrid(*(np.arange(n) * 2.0 for n in hu.shape), indexing="ij")
    hu[(z - 40) ** 2 + (y - 50) ** 2 + (x - 50) ** 2 <= 14 ** 2] = 40.0
    det = RegionClassifier(RegionNet(hidden=8)).detect(hu, (2.0, 2.0, 2.0), np.ones(hu.shape, bool))
    assert len(det) == 1 and det.index[0] * 2.0 == pytest.approx([40, 50, 50], abs=1.5)
    assert all(p.shape == (1,) and 0 <= p[0] <= 1 for p in det.probability.values())

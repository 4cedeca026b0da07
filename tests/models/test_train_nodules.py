"""Training the nodule detector: examples from synthetic studies, calibration, determinism, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsearch import vocab
from medsearch.errors import InputError
from medsearch.models.candidates import PATCH_CELLS
from medsearch.models.train_nodules import (Examples, NoduleTrainConfig, build_examples, fit_platt,
                                            recalibrate_detector, study_examples, train_detector)


def _toy_examples(studies: int = 12, per_study: int = 10, seed: int = 0) -> Examples:
    """Patches where a nodule is a bright central ball and the rest is noise."""
    rng = np.random.default_rng(seed)
    n = studies * per_study
    c = np.arange(PATCH_CELLS) - (PATCH_CELLS - 1) / 2
    ball = (c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2) < 9
    label = np.zeros(n, np.int8)
    label[::per_study] = 1                                                # one nodule per study
    patches = rng.normal(-0.8, 0.1, (n, 1, PATCH_CELLS, PATCH_CELLS, PATCH_CELLS)).astype(np.float32)
    for k in np.flatnonzero(label == 1):
        patches[k, 0][ball] = 0.5
    return Examples(patches.astype(np.float16), rng.normal(0, 1, (n, 4)).astype(np.float32), label,
                    np.where(label == 1, np.log(12.0), 0).astype(np.float32),
                    np.where(label == 1, 0, -1).astype(np.int64), np.repeat(np.arange(studies), per_study),
                    np.ones(studies, bool))


def test_platt_scaling_recovers_a_known_calibration():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, 20000).astype(np.float32)
    labels = rng.random(20000) < 1 / (1 + np.exp(-(0.5 * logits - 2.0)))
    scale, offset = fit_platt(logits, labels)
    assert scale == pytest.approx(0.5, abs=0.08) and offset == pytest.approx(-2.0, abs=0.15)
    assert fit_platt(logits, np.zeros(20000, bool)) == (1.0, 0.0)     # nothing to fit


def test_training_learns_toy_nodules_and_is_deterministic():
    ex = _toy_examples()
    cfg = NoduleTrainConfig(steps=40, batch_size=16, width=4, val_fraction=0.25)
    det, summary = train_detector(ex, cfg, device="cpu", progress=False)
    again, _ = train_detector(ex, cfg, device="cpu", progress=False)
    for a, b in zip(det.net.state_dict().values(), again.net.state_dict().values()):
        assert torch.equal(a, b)
    assert summary["val"]["candidate_auc"] > 0.9
    assert summary["train_studies"] + summary["val_studies"] == 12
    assert {"scale", "offset"} == set(summary["calibration"])
    assert det.max_candidates == cfg.max_candidates == 48
    assert train_detector(ex, NoduleTrainConfig(steps=2, batch_size=4, width=4, max_candidates=96), device="cpu",
                          progress=False)[0].max_candidates == 96


def test_training_without_nodule_candidates_says_what_to_do():
    ex = _toy_examples()
    ex.label[:] = 0
    with pytest.raises(InputError, match="--studies"):
        train_detector(ex, NoduleTrainConfig(steps=2, batch_size=4, width=4), device="cpu", progress=False)


def test_examples_of_a_synthetic_study_label_the_candidates_on_its_nodule():
    one = study_examples((1101, 0, True))
    assert one["has_nodule"] and one["patches"].shape[1:] == (1, PATCH_CELLS, PATCH_CELLS, PATCH_CELLS)
    on = one["label"] == 1
    assert on.any()                                                     # the forced nodule is a candidate
    assert (one["density"][on] >= 0).all() and (one["density"][~on] == -1).all()
    assert (one["logsize"][on] > np.log(3)).all() and (one["logsize"][~on] == 0).all()
    assert one["density"][on].max() < len(vocab.DENSITIES)


def test_examples_hold_at_most_the_asked_number_of_candidates():
    few, many = study_examples((1101, 1, False, 8)), study_examples((1101, 1, False, 96))
    assert len(few["label"]) == 8 < len(many["label"]) <= 96
    assert np.array_equal(many["patches"][:8], few["patches"])           # the strongest come first either way


def test_build_examples_forces_a_nodule_into_every_other_study():
    ex = build_examples(1101, 2, workers=1, progress=False)
    assert ex.has_nodule[0] and len(ex.has_nodule) == 2
    assert set(np.unique(ex.study)) <= {0, 1} and len(ex.label) == len(ex.patches) == len(ex.features)
    sub = ex.subset(np.array([1]))
    assert (sub.study == 0).all() and len(sub.has_nodule) == 1


def test_other_types_add_studies_and_leave_the_nodule_examples_as_they_were():
    from medsearch.models.train_nodules import study_plan

    alone = study_plan(12, ("nodule",))
    assert alone == [(i, "nodule" if i % 2 == 0 else None) for i in range(12)]
    assert study_plan(12, ("nodule", "cavity")) == alone + [(1, "cavity"), (7, "cavity")]
    assert study_plan(12, ("nodule", "mass", "cavity")) == alone + [(1, "mass"), (7, "mass"), (3, "cavity"),
                                                                    (9, "cavity")]


@pytest.mark.parametrize("index, ftype", [(1, "mass"), (3, "cavity")])
def test_typed_examples_label_the_candidates_on_a_forced_mass_or_cavity(index, ftype):
    types = ("nodule", "mass", "cavity")
    one = study_examples((1101, index, ftype, 48, types))
    k = types.index(ftype) + 1
    on = one["label"] == k
    assert on.any() and one["has"].tolist() == [t == ftype for t in types]
    assert (one["logsize"][on] > np.log(14)).all() and (one["density"][on] == vocab.DENSITIES.index("solid")).all()
    plain = study_examples((1101, index, ftype))                        # nodules alone: the same candidates
    assert np.array_equal(plain["patches"], one["patches"]) and not (plain["label"] > 1).any()


def _typed_toy_examples(studies: int = 16, per_study: int = 10) -> Examples:
    """Toy patches: a small ball is a nodule, a big ball a mass, a hollow shell a cavity."""
    ex = _toy_examples(studies, per_study)
    c = np.arange(PATCH_CELLS) - (PATCH_CELLS - 1) / 2
    r2 = c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2
    patches = ex.patches.astype(np.float32)
    label = ex.label.copy()
    for k in range(1, len(label), per_study):
        label[k], label[k + 1] = 2, 3
        patches[k, 0][r2 < 36] = 0.5
        patches[k + 1, 0][(r2 < 36) & (r2 > 16)] = 0.5
    logsize = np.where(label > 0, np.log(12.0), 0).astype(np.float32)
    return Examples(patches.astype(np.float16), ex.features, label, logsize,
                    np.where(label > 0, 0, -1).astype(np.int64), ex.study, ex.has_nodule, ("nodule", "mass", "cavity"),
                    np.ones((studies, 3), bool))


def test_training_a_typed_detector_learns_each_type_and_calibrates_it_apart():
    ex = _typed_toy_examples()
    cfg = NoduleTrainConfig(steps=60, batch_size=16, width=4, val_fraction=0.25, other_per_batch=4)
    det, summary = train_detector(ex, cfg, device="cpu", progress=False)
    assert det.types == ("nodule", "mass", "cavity") and det.net.types == 3
    assert summary["types"] == ["nodule", "mass", "cavity"]
    for key in ("candidate_auc",):
        assert summary["val"][key] > 0.9
        assert summary["val"]["mass"][key] > 0.9 and summary["val"]["cavity"][key] > 0.9
    assert set(det.calibration) == {"mass", "cavity"} and det.calibration["mass"] != (1.0, 0.0)
    ex.label[ex.label == 3] = 0                                         # no cavity left to learn from
    with pytest.raises(InputError, match="cavity"):
        train_detector(ex, cfg, device="cpu", progress=False)


def test_recalibration_refits_every_type_on_new_candidates_and_keeps_the_network():
    ex = _typed_toy_examples()
    det, _ = train_detector(ex, NoduleTrainConfig(steps=60, batch_size=16, width=4, val_fraction=0.25,
                                                  other_per_batch=4), device="cpu", progress=False)
    weights = {k: v.clone() for k, v in det.net.state_dict().items()}
    before = (det.scale, det.offset, dict(det.calibration))
    # the same patches at a tenth of the nodules' rate: more weak candidates per scan, as with more candidates
    keep = (ex.label != 1) | (np.arange(len(ex.label)) % 100 == 0)
    rare = Examples(ex.patches[keep], ex.features[keep], ex.label[keep], ex.logsize[keep], ex.density[keep],
                    ex.study[keep], ex.has_nodule, ex.types, ex.has)
    val = recalibrate_detector(det, rare, device="cpu")
    assert all(torch.equal(v, weights[k]) for k, v in det.net.state_dict().items())
    assert det.offset < before[1]                                     # rarer nodules: lower probabilities
    assert set(det.calibration) == {"mass", "cavity"} and det.calibration != before[2]
    assert val["candidate_auc"] > 0.9 and val["positives"] == int((rare.label == 1).sum())


@pytest.mark.parametrize("change, message", [("types", "labelled for"), ("no cavity", "no candidate on a cavity")])
def test_recalibration_refuses_examples_it_cannot_fit(change, message):
    ex = _typed_toy_examples()
    det, _ = train_detector(ex, NoduleTrainConfig(steps=2, batch_size=16, width=4, other_per_batch=4),
                            device="cpu", progress=False)
    if change == "types":
        ex = Examples(ex.patches, ex.features, np.minimum(ex.label, 1), ex.logsize, ex.density, ex.study,
                      ex.has_nodule)
    else:
        ex.label[ex.label == 3] = 0
    with pytest.raises(InputError, match=message):
        recalibrate_detector(det, ex, device="cpu")

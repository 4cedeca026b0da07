"""Voxel targets from the synthetic archive, and the half-resolution batches built from them."""

from __future__ import annotations

import random

import numpy as np
import pytest

from medsearch import vocab
from medsearch.models.dense_data import NO_DENSITY, dense_example, forced_types, native_targets
from medsearch.models.train_seg import _shift, half, make_batch

SHAPE, SPACING = (48, 80, 80), (6.5, 4.3, 4.3)


@pytest.fixture(scope="module")
def study():
    from medsearch.synth import generate_study

    return generate_study(1003, 0, findings=["nodule", "pleural effusion"])


def test_native_targets_mark_every_finding_where_its_mask_is(study):
    tg = native_targets(study)
    for f, mask in zip(study.labels["findings"], study.masks):
        bit = 1 << vocab.FINDING_TYPES.index(f["type"])
        assert ((tg["types"][mask] & bit) != 0).all()
        assert ((tg["types"][~mask] & bit) == 0).all() or len(study.masks) > 1
        if f["type"] == "nodule":
            assert (tg["density"][mask] == vocab.DENSITIES.index(f["density"])).all()
            assert np.allclose(tg["logsize"][mask].astype(float), np.log(f["diameter_mm"]), atol=1e-2)
        if f["type"] == "pleural effusion":
            # a pleural collection lies outside the lungs but takes the lobes of its side
            lobes = {vocab.LOBES[r - 1] for r in np.unique(tg["region"][mask]) if r}
            sides = {vocab.LOBE_SIDE[x] for x in lobes}
            assert sides <= ({"left", "right"} if f["laterality"] == "bilateral" else {f["laterality"]})
            assert (tg["region"][mask] > 0).all()


def test_dense_example_is_on_the_canonical_grid(study):
    ex = dense_example(study, SPACING, SHAPE)
    assert {k: v.shape for k, v in ex.items()} == {k: SHAPE for k in ("hu", "region", "types", "density", "logsize")}
    assert ex["hu"].dtype == np.int16 and ex["hu"].min() >= -1100
    assert set(np.unique(ex["region"])) <= set(range(6))
    assert (ex["density"][ex["types"] == 0] == NO_DENSITY).all()
    for f in study.labels["findings"]:
        assert ((ex["types"] >> vocab.FINDING_TYPES.index(f["type"])) & 1).sum() > 0


def test_forced_types_are_deterministic_and_valid():
    picks = [forced_types(1101, i) for i in range(200)]
    assert picks == [forced_types(1101, i) for i in range(200)]
    forced = [p for p in picks if p is not None]
    assert 0.4 < len(forced) / len(picks) < 0.8
    assert all(set(p) <= set(vocab.FINDING_TYPES) and len(set(p)) == len(p) for p in forced)


def test_half_resolution_keeps_every_finding_voxel():
    types = np.zeros((1, 4, 4, 4), np.int16)
    types[0, 1, 2, 3] = 0b101
    assert half(types, "or")[0, 0, 1, 1] == 0b101
    assert half(types, "or").sum() == 0b101


def test_a_shift_moves_image_and_targets_together(study):
    from medsearch.models.train_seg import DenseSet

    ex = dense_example(study, SPACING, SHAPE)
    data = DenseSet(ex["hu"][None], half(ex["region"][None], "pick"), half(ex["types"][None], "or"),
                    half(ex["density"][None].astype(np.int16), "max").astype(np.uint8),
                    half(ex["logsize"][None], "max"), np.zeros((1, 9, 5), np.float32), np.ones(1, bool), [{}])
    plain = make_batch(data, [0], random.Random(0), augment=False)
    moved = make_batch(data, [0], random.Random(3), augment=True)
    # recover the shift from the targets and check the image moved by twice as many voxels
    ref, got = plain["region"][0].numpy(), moved["region"][0].numpy()
    best = max(((dz, dy, dx) for dz in range(-2, 3) for dy in range(-4, 5) for dx in range(-4, 5)),
               key=lambda s: (_shift(ref, s, 0) == got).mean())
    img = plain["x"][0, 0].numpy()
    shifted = _shift(img, [2 * v for v in best], img.min())
    inner = tuple(slice(10, -10) for _ in range(3))
    assert np.corrcoef(shifted[inner].ravel(), moved["x"][0, 0].numpy()[inner].ravel())[0, 1] > 0.95

"""Nodule candidates: the lung mask, the blob filter (blob over tube), the candidates and the patches."""

from __future__ import annotations

import numpy as np
import pytest

from medsearch.models.candidates import (MAX_CANDIDATES, PATCH_CELLS, blob_response, bounding_box, extract_patches,
                                         find_candidates, lung_mask)

SPACING = (2.5, 2.0, 2.0)
SHAPE = (48, 96, 96)


def _chest(seed: int = 0) -> tuple[np.ndarray, dict]:
    """A soft-tissue body in air with two lungs; in the right lung a 12 mm solid nodule, in the left a
    vessel-like tube of the same radius along z."""
    z, y, x = np.mgrid[:SHAPE[0], :SHAPE[1], :SHAPE[2]].astype(np.float32)
    zm, ym, xm = z * SPACING[0], y * SPACING[1], x * SPACING[2]
    hu = np.full(SHAPE, -1000.0, np.float32)
    hu[((ym - 96) / 80) ** 2 + ((xm - 96) / 90) ** 2 < 1] = 40.0
    lungs = np.zeros(SHAPE, bool)
    for cx in (56.0, 136.0):
        lungs |= ((ym - 96) / 55) ** 2 + ((xm - cx) / 30) ** 2 + ((zm - 60) / 55) ** 2 < 1
    hu[lungs] = -850.0
    nodule = (60.0, 90.0, 50.0)   # mm (z, y, x)
    hu[((zm - nodule[0]) ** 2 + (ym - nodule[1]) ** 2 + (xm - nodule[2]) ** 2) < 6.0 ** 2] = 40.0
    hu[((ym - 100) ** 2 + (xm - 140) ** 2 < 6.0 ** 2) & (abs(zm - 60) < 40)] = 40.0
    hu += np.random.default_rng(seed).normal(0, 10, SHAPE).astype(np.float32)
    return hu, {"nodule": np.array(nodule) / np.array(SPACING), "tube": np.array([60, 100, 140]) / np.array(SPACING),
                "lungs": lungs}


@pytest.fixture(scope="module")
def chest():
    return _chest()


def test_lung_mask_holds_both_lungs_and_the_lesions_inside_them_but_not_the_outside_air(chest):
    hu, where = chest
    mask = lung_mask(hu, SPACING)
    assert mask[tuple(np.round(where["nodule"]).astype(int))] and mask[tuple(np.round(where["tube"]).astype(int))]
    assert not mask[:, 0, 0].any() and not mask[:, :, :3].any()       # air around the body
    assert mask[where["lungs"]].mean() > 0.99                          # the lungs themselves
    assert mask[~where["lungs"]].mean() < 0.05                         # and little else


def test_lung_mask_of_a_scan_without_lungs_is_empty():
    assert not lung_mask(np.full((8, 16, 16), 40.0, np.float32), SPACING).any()


def test_the_blob_filter_prefers_a_nodule_to_a_vessel_of_the_same_radius(chest):
    hu, where = chest
    response, scale = blob_response(hu, SPACING, lung_mask(hu, SPACING))
    at = lambda p: response[tuple(np.round(p).astype(int))]  # noqa: E731
    assert at(where["nodule"]) > 5 * max(at(where["tube"]), 1e-3)
    assert scale[tuple(np.round(where["nodule"]).astype(int))] > 0
    assert (response[~lung_mask(hu, SPACING)] == 0).all()


def test_the_strongest_candidate_is_the_nodule(chest):
    hu, where = chest
    cands = find_candidates(hu, SPACING)
    assert 1 <= len(cands) <= MAX_CANDIDATES
    assert np.abs(cands.index[0] - where["nodule"]).max() <= 2
    assert (np.diff(cands.response) <= 0).all()                        # strongest first
    feats = cands.features()
    assert feats.shape == (len(cands), 4) and np.isfinite(feats).all()
    assert cands.hu[0] > -300                                          # the centre is the nodule's tissue


def test_candidates_of_empty_lungs_are_none():
    hu = np.full(SHAPE, 40.0, np.float32)
    cands = find_candidates(hu, SPACING, np.zeros(SHAPE, bool))
    assert len(cands) == 0 and cands.features().shape == (0, 4)


def test_patches_are_isotropic_cubes_centred_on_the_candidate(chest):
    hu, where = chest
    patches = extract_patches(hu, SPACING, np.round(where["nodule"])[None].astype(int))
    assert patches.shape == (1, 1, PATCH_CELLS, PATCH_CELLS, PATCH_CELLS) and patches.dtype == np.float32
    assert -1.0 <= patches.min() and patches.max() <= 1.0
    c = PATCH_CELLS // 2
    assert patches[0, 0, c, c, c] > patches[0, 0, 0, 0, 0]             # tissue at the centre, lung at the corner
    assert extract_patches(hu, SPACING, np.zeros((0, 3), int)).shape == (0, 1, PATCH_CELLS, PATCH_CELLS, PATCH_CELLS)


@pytest.mark.parametrize("dtype", [np.float32, np.int16])
def test_patches_of_many_candidates_are_each_candidates_own(chest, dtype):
    hu, _ = chest
    hu = hu.astype(dtype)
    index = np.array([[0, 0, 0], [10, 40, 30], [24, 48, 48], [47, 95, 95], [10, 40, 30]])
    together = extract_patches(hu, SPACING, index)
    alone = np.concatenate([extract_patches(hu, SPACING, i[None]) for i in index])
    assert together.dtype == np.float32 and np.array_equal(together, alone)
    assert not np.array_equal(together[1], together[2])


@pytest.mark.parametrize("voxels", [[(0, 0, 0)], [(4, 5, 6)], [(1, 2, 3), (6, 0, 9)], [(7, 8, 9), (0, 8, 0)]])
def test_bounding_box_is_the_box_of_the_true_voxels(voxels):
    mask = np.zeros((8, 9, 10), bool)
    for v in voxels:
        mask[v] = True
    lo, hi = bounding_box(mask)
    where = np.argwhere(mask)
    assert lo.tolist() == where.min(axis=0).tolist()
    assert hi.tolist() == (where.max(axis=0) + 1).tolist()
    assert mask[tuple(slice(a, b) for a, b in zip(lo, hi))].sum() == mask.sum()

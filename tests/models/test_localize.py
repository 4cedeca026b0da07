"""Key-slice localisation maths: heatmap peak -> native slice index and pixel box."""

from __future__ import annotations

import numpy as np
import pytest

from medsearch.models.localize import (canonical_to_native, cell_heatmap, localize, query_lobe_weights, slice_hit,
                                       slot_heatmap, upsample)

CANON_SHAPE = (96, 96, 64)
SPACING = (3.6, 3.6, 5.0)


def canon_affine(origin=(-172.8, -172.8, -160.0)):
    """Canonical voxel (R, A, S) -> RAS mm."""
    a = np.diag([*SPACING, 1.0])
    a[:3, 3] = origin
    return a


def native_affine(dx=0.7, dy=0.7, dz=1.25, origin=(-179.2, -179.2, -200.0)):
    """Native voxel (x, y, z) -> LPS mm, axial, rows along +y (posterior), slices ascending (superior)."""
    a = np.diag([dx, dy, dz, 1.0])
    a[:3, 3] = origin
    return a


def test_canonical_to_native_round_trip_of_a_known_point():
    # RAS (10, -20, 30) is LPS (-10, 20, 30)
    ca, na = canon_affine(), native_affine()
    canon_vox = (np.array([10.0, -20.0, 30.0]) - ca[:3, 3]) / np.array(SPACING)
    native = canonical_to_native(canon_vox[None], ca, na)[0]
    expect = (np.array([-10.0, 20.0, 30.0]) - na[:3, 3]) / np.array([0.7, 0.7, 1.25])
    assert np.allclose(native, expect)


def test_upsample_keeps_peak_cell():
    heat = np.zeros((3, 3, 2), dtype=np.float32)
    heat[2, 0, 1] = 1.0
    fine = upsample(heat, 4)
    assert fine.shape == (12, 12, 8)
    peak = np.unravel_index(np.argmax(fine), fine.shape)
    assert peak[0] // 4 == 2 and peak[1] // 4 == 0 and peak[2] // 4 == 1


@pytest.mark.parametrize("cell", [(1, 4, 1), (4, 2, 3), (0, 0, 0)])
def test_localize_lands_on_the_peak_cell(cell):
    grid = (6, 6, 4)
    heat = np.full(grid, 1e-3, dtype=np.float32)
    heat[cell] = 1.0
    ca, na = canon_affine(), native_affine()
    native_shape = (256, 512, 512)
    key, box = localize(heat, CANON_SHAPE, ca, na, native_shape)
    # the centre of the cell in canonical voxels, then in native voxels
    centre = (np.array(cell) + 0.5) * np.array(CANON_SHAPE) / np.array(grid) - 0.5
    native = canonical_to_native(centre[None], ca, na)[0]
    cell_mm = np.array(SPACING) * np.array(CANON_SHAPE) / np.array(grid)
    assert abs(key - np.clip(native[2], 0, 255)) <= cell_mm[2] / 1.25 / 2 + 1
    x0, y0, x1, y1 = box
    assert 0 <= x0 <= x1 <= 511 and 0 <= y0 <= y1 <= 511
    assert x0 <= np.clip(native[0], 0, 511) <= x1 + 1 and y0 <= np.clip(native[1], 0, 511) <= y1 + 1


def test_localize_clips_to_the_volume():
    heat = np.zeros((2, 2, 2), dtype=np.float32)
    heat[1, 1, 1] = 1.0
    key, box = localize(heat, CANON_SHAPE, canon_affine(), native_affine(), (10, 64, 64))
    assert 0 <= key <= 9
    assert all(0 <= v <= 63 for v in box)


def test_superior_peak_gives_a_higher_slice_than_inferior_peak():
    lo, hi = np.zeros((2, 2, 4), np.float32), np.zeros((2, 2, 4), np.float32)
    lo[0, 0, 0] = hi[0, 0, 3] = 1.0
    k_lo, _ = localize(lo, CANON_SHAPE, canon_affine(), native_affine(), (256, 512, 512))
    k_hi, _ = localize(hi, CANON_SHAPE, canon_affine(), native_affine(), (256, 512, 512))
    assert k_hi > k_lo


def test_cell_heatmap_peaks_at_the_most_similar_cell():
    rng = np.random.default_rng(0)
    spatial = rng.normal(size=(8, 3, 3, 2)).astype(np.float32)
    query = spatial[:, 2, 1, 0].copy()
    heat = cell_heatmap(query, spatial)
    assert heat.shape == (3, 3, 2) and heat.sum() == pytest.approx(1.0, abs=1e-5)
    assert np.unravel_index(np.argmax(heat), heat.shape) == (2, 1, 0)


@pytest.mark.parametrize("key, rng_, hit", [(5, (3, 7), True), (3, (3, 7), True), (8, (3, 7), False)])
def test_slice_hit(key, rng_, hit):
    assert slice_hit(key, rng_) is hit


@pytest.mark.parametrize("site, laterality, expected", [
    ("right lower lobe", None, [0, 0, 1, 0, 0]),
    ("right lung", None, [1, 1, 1, 0, 0]),
    ("lingula", None, [0, 0, 0, 1, 0]),
    ("pleura", "left", [0, 0, 0, 1, 1]),
    (None, "right", [1, 1, 1, 0, 0]),
    (None, None, [1, 1, 1, 1, 1]),
])
def test_query_lobe_weights(site, laterality, expected):
    from medsearch import vocab

    assert vocab.LOBES == ("right upper lobe", "right middle lobe", "right lower lobe", "left upper lobe",
                           "left lower lobe")
    assert query_lobe_weights(site, laterality).tolist() == expected


def _slot_map(shape=(6, 5, 4)):
    from medsearch import vocab

    n_t, n_l = len(vocab.FINDING_TYPES), len(vocab.LOBES)
    sp = np.zeros((n_t + 1 + n_l, *shape), np.float32)
    sp[n_t] = 1.0  # everything outside the lungs ...
    return sp, n_t


def test_slot_heatmap_peaks_where_the_type_lies_in_the_named_lobe():
    from medsearch import vocab

    sp, n_t = _slot_map()
    nod = vocab.FINDING_TYPES.index("nodule")
    rll, lll = n_t + 1 + vocab.LOBES.index("right lower lobe"), n_t + 1 + vocab.LOBES.index("left lower lobe")
    sp[n_t, :3], sp[rll, :3] = 0.0, 1.0      # ... but for the right lower lobe on one side
    sp[n_t, 3:], sp[lll, 3:] = 0.0, 1.0      # and the left lower lobe on the other
    sp[nod, 1, 2, 1] = 0.6                   # a nodule in the right lower lobe
    sp[nod, 4, 2, 1] = 0.9                   # a more certain one in the left lower lobe
    right = slot_heatmap(sp, [(nod, query_lobe_weights("right lower lobe", None))])
    anywhere = slot_heatmap(sp, [(nod, query_lobe_weights(None, None))])
    assert np.unravel_index(np.argmax(right), right.shape) == (1, 2, 1)
    assert np.unravel_index(np.argmax(anywhere), anywhere.shape) == (4, 2, 1)


@pytest.mark.parametrize("channels, wanted", [(15, []), (16, [(0, np.ones(5))]), (15, [(0, np.ones(5))])])
def test_slot_heatmap_gives_none_without_a_usable_map_or_query(channels, wanted):
    sp = np.zeros((channels, 3, 3, 3), np.float32)  # 15 channels but empty, or a non-ctseg map
    assert slot_heatmap(sp, wanted) is None

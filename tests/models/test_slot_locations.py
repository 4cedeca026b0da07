"""Slot locations: a key slice and box per (finding type, lobe), refined on the scan's pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsearch import vocab
from medsearch.models.candidates import LungGrid
from medsearch.models.image_tower_seg import HEAD_SPLIT
from medsearch.models.nodule_detector import NoduleEvidence
from medsearch.models.slot_locations import LOCATION_FIELDS, best_location, refine_slice, slot_locations

NR, NT, ND, _ = HEAD_SPLIT
T, L = len(vocab.FINDING_TYPES), len(vocab.LOBES)
LLL = vocab.LOBES.index("left lower lobe")
ATELECTASIS = vocab.FINDING_TYPES.index("atelectasis")
# canonical voxel (x, y, z) = 4.3 x 4.3 x 6.5 mm; native voxel = 2.15 x 2.15 x 1.625 mm, so one cell of
# the half-resolution maps is 4 x 4 native pixels and 8 native slices
CANON = np.diag([4.3, 4.3, 6.5, 1.0])
NATIVE = np.diag([-2.15, -2.15, 1.625, 1.0])
SPACING = (1.625, 2.15, 2.15)
SHAPE = (48, 40, 40)


def _chest(plate: bool = True, vessel: bool = True) -> np.ndarray:
    """Soft tissue around one air-filled lung; optionally a 3-slice plate of collapsed lung at slices
    20-22 and a one-pixel vessel through every slice."""
    hu = np.full(SHAPE, 40.0, np.float32)
    hu[2:46, 5:35, 5:35] = -850.0
    if plate:
        hu[20:23, 12:25, 12:25] = 35.0
    if vessel:
        hu[2:46, 28, 28] = 40.0
    return hu


def _maps(cell_z: int = 3, peak_logit: float = 2.0) -> torch.Tensor:
    """Half-resolution maps (20, 6, 10, 10): the left lower lobe everywhere, atelectasis at one cell block."""
    maps = torch.full((sum(HEAD_SPLIT), 6, 10, 10), -8.0)
    maps[1 + LLL] = 8.0
    maps[NR + ATELECTASIS, cell_z, 3:6, 3:6] = peak_logit
    return maps


def test_lung_grid_looks_up_the_coarse_mask_at_native_voxels():
    coarse = np.zeros((2, 2, 2), bool)
    coarse[1, 0, 1] = True
    grid = LungGrid(coarse, np.array([2, 3, 3]))
    box = grid.box(slice(1, 5), slice(0, 4), slice(2, 7))
    assert box.shape == (4, 4, 5)
    # native z 2-3 -> coarse 1 (z 4 is past the last whole block: the nearest, 1); y 0-2 -> 0; x 3-5 -> 1
    assert box[1:, :3, 1:].all() and not box[0].any() and not box[:, 3].any() and not box[:, :, 0].any()


def test_the_key_slice_moves_to_the_plate_within_one_cell():
    from medsearch.models.nodule_detector import scan_lungs

    hu = _chest()
    key = refine_slice(hu, scan_lungs(hu, SPACING), 27, [10, 10, 26, 26], 8, (-300, 300), SPACING)
    assert 20 <= key <= 22


@pytest.mark.parametrize("plate, vessel, expected", [(False, True, 27), (True, False, None)])
def test_vessels_do_not_count_as_tissue(plate, vessel, expected):
    from medsearch.models.nodule_detector import scan_lungs

    hu = _chest(plate, vessel)
    key = refine_slice(hu, scan_lungs(hu, SPACING), 27, [10, 10, 30, 30], 8, (-300, 300), SPACING)
    assert key == expected if expected is not None else 20 <= key <= 22


def test_a_window_outside_the_scan_or_an_empty_box_keeps_the_key():
    from medsearch.models.nodule_detector import scan_lungs

    hu = _chest()
    lungs = scan_lungs(hu, SPACING)
    assert refine_slice(hu, lungs, 27, [12, 12, 12, 20], 8, (-300, 300), SPACING) == 27
    assert refine_slice(hu, lungs, 60, [10, 10, 26, 26], 8, (-300, 300), SPACING) == 60


def test_slot_locations_shape_contract_and_unlocated_slots():
    loc = slot_locations(_maps(), CANON, NATIVE, _chest(), SPACING)
    assert loc.shape == (T, L, len(LOCATION_FIELDS)) and loc.dtype == np.float32
    located = loc[:, :, 1] >= 0
    # only the atelectasis of the left lower lobe clears MIN_PEAK
    assert located[ATELECTASIS, LLL] and located.sum() == 1
    assert loc[ATELECTASIS, LLL, 0] == pytest.approx(1 / (1 + np.exp(-2.0)), rel=1e-3)


def test_slot_locations_refine_a_faint_atelectasis_onto_its_slices():
    loc = slot_locations(_maps(cell_z=3), CANON, NATIVE, _chest(), SPACING)
    key, x0, y0, x1, y1 = (int(v) for v in loc[ATELECTASIS, LLL, 1:])
    # cell 3 centres on native slice 26; the plate lies on 20-22, inside the cell's window
    assert 20 <= key <= 22
    assert x0 <= 12 and y0 <= 12 and x1 >= 23 and y1 >= 23
    # without a plate the map's own slice stands
    bare = slot_locations(_maps(cell_z=3), CANON, NATIVE, _chest(plate=False), SPACING)
    assert int(bare[ATELECTASIS, LLL, 1]) == 26


def test_a_nodule_slot_takes_the_surest_detection_in_its_lobe():
    maps = _maps()
    maps[NR + vocab.FINDING_TYPES.index("nodule"), 1, 2, 2] = 3.0
    ev = NoduleEvidence(np.array([[1.0, 2, 2], [4.0, 7, 7]]), np.array([0.9, 0.4], np.float32),
                        np.log(np.array([8.0, 8.0], np.float32)), np.zeros((2, len(vocab.DENSITIES)), np.float32),
                        np.array([[11.0, 9, 9], [35.0, 30, 30]]))
    loc = slot_locations(maps, CANON, NATIVE, _chest(), SPACING, evidence=ev)
    key, x0, y0, x1, y1 = (int(v) for v in loc[vocab.FINDING_TYPES.index("nodule"), LLL, 1:])
    assert key == 11 and x0 <= 9 <= x1 and y0 <= 9 <= y1 and x1 - x0 <= 8


def _evidence(cells, probability, native) -> NoduleEvidence:
    n = len(probability)
    return NoduleEvidence(np.asarray(cells, float), np.asarray(probability, np.float32),
                          np.log(np.full(n, 8.0, np.float32)), np.zeros((n, len(vocab.DENSITIES)), np.float32),
                          np.asarray(native, float))


def test_a_nodule_slot_without_a_detection_takes_its_lobes_most_nodule_like_candidate():
    nodule = vocab.FINDING_TYPES.index("nodule")
    maps = _maps()
    # two weak candidates in the left lower lobe (every cell of the maps is LLL): the surer one places it
    weak = _evidence([[1.0, 2, 2], [4.0, 7, 7]], [0.004, 0.015], [[11.0, 9, 9], [35.0, 30, 30]])
    ev = NoduleEvidence.empty()
    ev.native, ev.weak = np.zeros((0, 3)), weak
    loc = slot_locations(maps, CANON, NATIVE, _chest(), SPACING, evidence=ev)
    assert int(loc[nodule, LLL, 1]) == 35
    # the peak stays the painted channel's (near zero): a located finding of another type outranks it
    assert loc[nodule, LLL, 0] < 0.01
    assert best_location(loc, [(nodule, np.eye(L)[LLL]), (ATELECTASIS, np.eye(L)[LLL])])[0] != 35
    assert best_location(loc, [(nodule, np.eye(L)[LLL])])[0] == 35
    # a real detection in the lobe wins over any weak candidate
    strong = _evidence([[1.0, 2, 2]], [0.3], [[11.0, 9, 9]])
    strong.weak = weak
    loc = slot_locations(maps, CANON, NATIVE, _chest(), SPACING, evidence=strong)
    assert int(loc[nodule, LLL, 1]) == 11
    # without any candidate the slot stays unlocated (no location is invented)
    loc = slot_locations(maps, CANON, NATIVE, _chest(), SPACING, evidence=NoduleEvidence.empty())
    assert int(loc[nodule, LLL, 1]) == -1


def test_best_location_follows_the_peak_within_the_named_lobes():
    loc = np.zeros((T, L, 6), np.float32)
    loc[:, :, 1] = -1
    rul = vocab.LOBES.index("right upper lobe")
    loc[ATELECTASIS, rul] = [0.6, 5, 1, 2, 3, 4]
    loc[ATELECTASIS, LLL] = [0.3, 30, 5, 6, 7, 8]
    anywhere = np.ones(L, np.float32)
    left_lower = np.eye(L, dtype=np.float32)[LLL]
    assert best_location(loc, [(ATELECTASIS, anywhere)]) == (5, [1, 2, 3, 4])
    assert best_location(loc, [(ATELECTASIS, left_lower)]) == (30, [5, 6, 7, 8])
    assert best_location(loc, [(vocab.FINDING_TYPES.index("cavity"), anywhere)]) is None
    assert best_location(loc, []) is None


def test_the_spatial_store_keeps_the_locations_and_reads_old_files(tmp_path):
    from types import SimpleNamespace

    from medsearch.models.spatial_store import load_spatial, save_spatial

    inst = SimpleNamespace(data_dir=tmp_path)
    loc = np.arange(T * L * 6, dtype=np.float32).reshape(T, L, 6)
    sp = np.zeros((15, 2, 2, 2), np.float16)
    save_spatial(inst, "SE1", sp, (4, 4, 4), CANON, NATIVE, SHAPE, locations=loc)
    save_spatial(inst, "SE2", sp, (4, 4, 4), CANON, NATIVE, SHAPE)
    assert np.array_equal(load_spatial(inst, "SE1").locations, loc)
    assert load_spatial(inst, "SE2").locations is None


def test_decoded_findings_refine_inside_the_lungs_where_the_heart_would_win_the_mean():
    from medsearch.models.nodule_detector import scan_lungs
    from medsearch.models.slot_findings import decode

    consolidation = vocab.FINDING_TYPES.index("consolidation")
    maps = torch.full((sum(HEAD_SPLIT), 6, 10, 10), -8.0)
    maps[0] = 8.0
    maps[0, 3, 3:6, 3:6] = -8.0
    maps[1 + LLL, 3, 3:6, 3:6] = 8.0
    maps[NR + consolidation, 3, 3:6, 3:6] = 8.0
    hu = _chest(plate=True, vessel=False)          # consolidated lung on slices 20-22
    hu[28:44, 5:30, 5:30] = 60.0                   # below it, the heart fills the box (outside the lungs)
    (mean_based,) = decode(maps, CANON, NATIVE, SHAPE, hu)
    (in_lungs,) = decode(maps, CANON, NATIVE, SHAPE, hu, lungs=scan_lungs(hu, SPACING), spacing=SPACING)
    assert mean_based["key_slice"] >= 28            # the brightest box: the heart
    assert 20 <= in_lungs["key_slice"] <= 22

"""Guard of the preprocessing anchors: clip/normalise, RAS, spacing, crop/pad, windows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsearch.dicom.volume import HUVolume
from medsearch.models.preprocess import (
    CANONICAL_SHAPE, CANONICAL_SPACING, WINDOWS, HUWindows, HUWindowsd, canonical_hu, preprocess_volume,
    to_canonical,
)


def _volume(flip_x: bool) -> HUVolume:
    """A 40 x 100 x 100 water phantom (1 mm x 4 mm slices) with a bone cube on the patient's left.

    LPS +x is the patient's left.  With ``flip_x`` the columns run right-to-left
    (negative x direction in the affine), so the array is mirrored but the anatomy is not.
    """
    hu = np.zeros((40, 100, 100), np.float32)
    cols = slice(70, 90) if not flip_x else slice(10, 30)
    hu[15:25, 40:60, cols] = 1000.0
    affine = np.diag([1.0, 1.0, 4.0, 1.0])
    if flip_x:
        affine[0, 0], affine[0, 3] = -1.0, 99.0
    return HUVolume(hu, (4.0, 1.0, 1.0), affine, "CT")


@pytest.mark.parametrize("flip_x", [False, True])
def test_canonical_grid_is_ras_fixed_spacing_and_shape(flip_x):
    arr, affine = to_canonical(_volume(flip_x))
    assert arr.shape == CANONICAL_SHAPE
    assert np.allclose(np.abs(np.diag(affine)[:3]), CANONICAL_SPACING[::-1], atol=1e-4)
    # RAS: the x index grows toward the patient's right, so a left-sided finding has a LOW x index.
    bone = np.argwhere(arr > 500)
    assert len(bone) > 0
    centre_x = bone[:, 2].mean()
    assert centre_x < CANONICAL_SHAPE[2] / 2, "the left-sided cube must land on the low-x (patient left) half"


def test_padding_is_air_and_crop_keeps_centre():
    arr, _ = to_canonical(_volume(False))
    # The 100 mm field is padded to 346 mm in-plane: the border is air, not water.
    assert arr[0, 0, 0] == pytest.approx(-1024.0, abs=1.0)
    assert arr[CANONICAL_SHAPE[0] // 2, CANONICAL_SHAPE[1] // 2, CANONICAL_SHAPE[2] // 2] == pytest.approx(0.0, abs=1.0)


def test_canonical_hu_is_int16_and_clipped():
    vol = _volume(False)
    hot = HUVolume(vol.hu * 10.0, vol.spacing, vol.affine, "CT")  # 10000 HU: beyond the int16 storage clip
    arr = canonical_hu(hot)
    assert arr.dtype == np.int16 and arr.max() == 3071 and arr.min() == -1024


def test_windows_clip_and_normalise_to_unit_range():
    hu = torch.tensor([[[-3000.0, -1350.0, -600.0, -160.0, 40.0, 240.0, 3000.0]]])
    out = HUWindows()(hu)
    assert out.shape == (2, 1, 1, 7)
    lung, mediastinum = out[0, 0, 0], out[1, 0, 0]
    assert lung[0] == 0.0 and lung[1] == 0.0 and lung[-1] == 1.0
    assert lung[2] == pytest.approx((-600 - WINDOWS[0][0]) / (WINDOWS[0][1] - WINDOWS[0][0]))
    assert mediastinum[3] == 0.0 and mediastinum[4] == pytest.approx(0.5) and mediastinum[5] == 1.0
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_dict_wrapper_matches_array_transform():
    hu = np.random.default_rng(0).uniform(-1200, 1200, (1, 4, 5, 6)).astype(np.float32)
    d = HUWindowsd(keys="image")({"image": hu, "other": 1})
    assert np.array_equal(d["image"], HUWindows()(hu)) and d["other"] == 1


def test_preprocess_volume_gives_the_tower_input():
    x = preprocess_volume(_volume(False))
    assert x.shape == (2, *CANONICAL_SHAPE) and x.dtype == torch.float32

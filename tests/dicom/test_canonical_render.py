"""Canonical resampling (MONAI) and windowed PNG rendering."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from medsearch.dicom.canonical import ToCanonicald, to_canonical, to_metatensor
from medsearch.dicom.render import apply_window, render_slice, render_thumbnail
from medsearch.dicom.volume import HUVolume
from medsearch.errors import InputError


def _vol(affine_diag=(1.0, 1.0, 1.0)) -> HUVolume:
    hu = np.full((8, 10, 12), -1000.0, dtype=np.float32)
    hu[:, :, :3] = 100.0  # a bright block at small x (patient right in LPS: x increases to the left)
    affine = np.diag(list(affine_diag) + [1.0])
    return HUVolume(hu=hu, spacing=(affine_diag[2], affine_diag[1], affine_diag[0]), affine=affine, modality="CT")


def test_to_canonical_shape_spacing_and_ras_orientation():
    vol = _vol((1.0, 1.0, 2.0))
    arr, affine = to_canonical(vol, spacing_mm=(1.0, 1.0, 1.0), shape=(16, 10, 12))
    assert arr.shape == (16, 10, 12) and arr.dtype == np.float32
    np.testing.assert_allclose(np.abs(np.diag(affine)[:3]), [1.0, 1.0, 1.0])
    assert affine[0, 0] > 0 and affine[1, 1] > 0  # RAS: indices increase to the right and anterior
    # The block sits at the smallest LPS x, i.e. the patient's far right.  In RAS the x index grows
    # toward the patient's right, so after orientation the block is at the high end of the x axis.
    assert arr[8, 5, -1] == pytest.approx(100.0)
    assert arr[8, 5, 0] == pytest.approx(-1000.0)


def test_padding_is_air_not_water():
    arr, _ = to_canonical(_vol(), spacing_mm=(1.0, 1.0, 1.0), shape=(12, 14, 16))
    assert arr[0, 0, 0] == pytest.approx(-1024.0)  # padded corner
    assert arr.min() == pytest.approx(-1024.0)


def test_dict_wrapper_equals_array_transform():
    vol = _vol()
    out = ToCanonicald(keys="image", spacing_mm=(1, 1, 1), shape=(8, 8, 8))({"image": to_metatensor(vol)})
    arr, _ = to_canonical(vol, (1, 1, 1), (8, 8, 8))
    np.testing.assert_allclose(out["image"].as_tensor()[0].numpy().transpose(2, 1, 0), arr)


@pytest.mark.parametrize("window, hu, grey", [("lung", -600, 127), ("lung", -2000, 0), ("lung", 500, 255),
                                              ("mediastinum", 50, 127), ("bone", 300, 127)])
def test_windows(window, hu, grey):
    assert int(apply_window(np.array([[hu]]), window)[0, 0]) == pytest.approx(grey, abs=1)


def test_render_slice_png_has_pixels_only():
    arr = np.full((3, 20, 30), -600, dtype=np.int16)
    png = render_slice(arr, 1, "lung")
    img = Image.open(io.BytesIO(png))
    assert img.size == (30, 20) and img.mode == "L"
    assert not img.info.get("text") and not any(k in img.info for k in ("Comment", "Description"))
    thumb = Image.open(io.BytesIO(render_thumbnail(np.zeros((3, 600, 300), dtype=np.int16))))
    assert max(thumb.size) == 256


@pytest.mark.parametrize("index, window, match", [(3, "lung", "outside the volume"), (-1, "lung", "outside"),
                                                  (0, "brain", "Unknown display window")])
def test_render_refuses_bad_requests(index, window, match):
    with pytest.raises(InputError, match=match):
        render_slice(np.zeros((3, 4, 4), dtype=np.int16), index, window)

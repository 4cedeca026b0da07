"""Dense components of the lungs and their shape features (the region classifier's input)."""

from __future__ import annotations

import numpy as np
import pytest

from medsearch.models.regions import FEATURE_NAMES, MIN_VOLUME_MM3, N_FEATURES, lesion_components

SPACING = (2.0, 2.0, 2.0)


def _lungs(shape=(60, 80, 80)):
    """A block of aerated lung (-850 HU) with its mask."""
    hu = np.full(shape, -850.0, np.float32)
    return hu, np.ones(shape, bool)


def _coords(shape):
    return np.meshgrid(*(np.arange(n) * s for n, s in zip(shape, SPACING)), indexing="ij")


def _feature(comp, i, name):
    return float(comp.features[i, FEATURE_NAMES.index(name)])


def test_a_round_mass_a_flat_plate_and_a_thin_vessel():
    hu, lungs = _lungs()
    z, y, x = _coords(hu.shape)
    ball = (z - 30) ** 2 + (y - 40) ** 2 + (x - 40) ** 2 <= 15 ** 2                       # 30 mm "mass"
    plate = ((z - 90) / 4) ** 2 + ((y - 120) / 25) ** 2 + ((x - 120) / 12) ** 2 <= 1    # 8 mm thick, flat
    vessel = ((y - 130) ** 2 + (x - 30) ** 2 <= 1.5 ** 2) & (z > 10) & (z < 100)        # 3 mm tube
    hu[ball | plate] = 35.0
    hu[vessel] = 40.0
    comp = lesion_components(hu, SPACING, lungs)
    assert comp.features.shape == (2, N_FEATURES) == (len(comp), len(FEATURE_NAMES))
    assert np.isfinite(comp.features).all()
    # the vessel was opened away; which component is which, by its centroid
    i_ball = int(np.argmin(np.abs(comp.centre[:, 0] * SPACING[0] - 30)))
    i_plate = 1 - i_ball
    assert comp.centre[i_ball] * SPACING == pytest.approx([30, 40, 40], abs=2.0)
    assert _feature(comp, i_ball, "short / long axis") > 0.8                 # round
    assert _feature(comp, i_plate, "short / long axis") < 0.35                # flat
    assert _feature(comp, i_plate, "|z| of the short axis") > 0.9             # lying flat: its thin axis is z
    assert comp.diameter_mm[i_ball] == pytest.approx(30, abs=4)
    assert comp.diameter_mm[i_plate] == pytest.approx(50, abs=5)
    assert (comp.labels[tuple(np.round(comp.centre[i_ball]).astype(int))] == comp.ids[i_ball])


def test_components_outside_the_lungs_or_too_small_are_not_lesions():
    hu, lungs = _lungs()
    z, y, x = _coords(hu.shape)
    lungs[:, :, :40] = False                                                   # the left half is not lung
    hu[(z - 60) ** 2 + (y - 80) ** 2 + (x - 30) ** 2 <= 12 ** 2] = 40.0          # outside
    r = (3 * MIN_VOLUME_MM3 / (4 * np.pi)) ** (1 / 3) * 0.8                      # a ball under the minimum
    hu[(z - 60) ** 2 + (y - 80) ** 2 + (x - 120) ** 2 <= r ** 2] = 40.0
    comp = lesion_components(hu, SPACING, lungs)
    assert len(comp) == 0 and comp.features.shape == (0, N_FEATURES) and comp.centre.shape == (0, 3)


def test_an_empty_scan_has_no_components():
    hu, lungs = _lungs((20, 20, 20))
    assert len(lesion_components(hu, SPACING, lungs)) == 0

"""The volume: tissue attenuation, findings inside their lobes, slice ranges."""

import numpy as np
import pytest
from scipy import ndimage

from medsearch.synth.anatomy import SITE_CODES, TISSUES
from medsearch.vocab import DENSITIES, FINDING_TYPES, LATERALITIES, SHAPES, SITES

# (tissue, low, high): medians of the noise-free volume, eroded to avoid partial volume.
TISSUE_HU = [("lung", -900, -780), ("fat", -120, -80), ("soft tissue", 20, 60), ("liver", 20, 130),
             ("air", -1001, -990)]


@pytest.mark.parametrize("tissue,low,high", TISSUE_HU)
def test_tissue_attenuation(forced_studies, tissue, low, high):
    for s in forced_studies:
        m = ndimage.binary_erosion(s.tissue == TISSUES[tissue], iterations=1)
        assert m.sum() > 50
        med = float(np.median(s.clean[m]))
        assert low <= med <= high, (tissue, med)


def test_bone_is_dense_and_bounded(forced_studies):
    for s in forced_studies:
        bone = s.clean[s.tissue == TISSUES["bone"]]
        assert np.percentile(bone, 75) >= 300
        assert bone.max() <= 1500


def test_reconstructed_lung_keeps_its_attenuation(forced_studies):
    """Noise and blur must not move lung parenchyma out of its range."""
    for s in forced_studies:
        m = ndimage.binary_erosion(s.tissue == TISSUES["lung"], iterations=2)
        assert -900 <= float(np.median(s.hu[m])) <= -780


def _in_range(f, s, i):
    m = ndimage.binary_erosion(s.masks[i]) if s.masks[i].sum() > 200 else s.masks[i]
    return float(np.median(s.clean[m]))


@pytest.mark.parametrize("density,low,high", [("ground-glass", -700, -300), ("solid", 20, 60),
                                              ("calcified", 200, 1500)])
def test_finding_attenuation_by_density(forced_studies, density, low, high):
    seen = 0
    for s in forced_studies:
        for i, f in enumerate(s.labels["findings"]):
            if f["density"] == density and f["type"] != "cavity" and f["diameter_mm"] >= 10:
                assert low <= f["hu"] <= high, f
                seen += 1
    if density != "calcified":
        assert seen


def test_effusion_is_fluid_and_dependent(forced_studies):
    for s in forced_studies:
        for i, f in enumerate(s.labels["findings"]):
            if f["type"] == "pleural effusion":
                assert 0 <= _in_range(f, s, i) <= 20
                jj = np.nonzero(s.masks[i])[1]
                lung_j = np.nonzero(s.lobes > 0)[1]
                assert jj.mean() > lung_j.mean()  # posterior (dependent) in a supine patient


def test_pneumothorax_is_air_at_the_apex(forced_studies):
    for s in forced_studies:
        for i, f in enumerate(s.labels["findings"]):
            if f["type"] == "pneumothorax":
                assert _in_range(f, s, i) == -1000.0
                kk = np.nonzero(s.masks[i])[0]
                lung_k = np.nonzero(s.lobes > 0)[0]
                assert kk.mean() > np.median(lung_k)


def test_findings_lie_in_their_site(forced_studies):
    for s in forced_studies:
        for i, f in enumerate(s.labels["findings"]):
            k, j, ii = s.grid.to_index(f["center_mm"])
            if f["site"] == "pleura":
                assert s.masks[i][k, j, ii], f
            else:
                assert s.lobes[k, j, ii] in SITE_CODES[f["site"]], f


def test_slice_range_contains_the_finding(forced_studies):
    for s in forced_studies:
        for i, f in enumerate(s.labels["findings"]):
            kk = np.nonzero(s.masks[i].any(axis=(1, 2)))[0]
            lo, hi = f["slice_range"]
            assert lo == kk.min() and hi == kk.max()
            assert lo <= f["key_slice"] <= hi


def test_labels_use_the_vocabulary(forced_studies):
    for s in forced_studies:
        for f in s.labels["findings"]:
            assert f["type"] in FINDING_TYPES and f["site"] in SITES and f["laterality"] in LATERALITIES
            assert f["density"] in DENSITIES + (None,) and f["shape"] in SHAPES + (None,)
            if f["type"] in ("nodule", "mass", "cavity"):
                assert 3 <= f["diameter_mm"] <= 60 and f["shape"] in SHAPES


def test_five_lobes_and_lingula(forced_studies):
    for s in forced_studies:
        assert set(np.unique(s.lobes)) == {0, 1, 2, 3, 4, 5, 6}
        # upper lobes above lower lobes (z ascending = superior)
        z = {c: np.nonzero(s.lobes == c)[0].mean() for c in (1, 3, 4, 5)}
        assert z[1] > z[3] and z[4] > z[5]

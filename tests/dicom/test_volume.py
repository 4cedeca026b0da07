"""Volume assembly: sorting, HU rescale, geometry, and every refusal with its reason."""

from __future__ import annotations

import copy

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from medsearch.dicom.volume import SeriesError, load_series


def test_sorts_along_normal_and_rescales_to_hu(make_series):
    paths = make_series(6, slope=2.0, intercept=-1000.0)
    vol = load_series(paths)
    assert vol.hu.dtype == np.float32
    assert vol.shape == (6, 16, 16)
    assert vol.modality == "CT"
    # Stored value of slice k, column c is 10k + c; HU = 2 * stored - 1000.
    expected = 2.0 * (np.arange(6)[:, None, None] * 10 + np.arange(16)[None, None, :]) - 1000.0
    np.testing.assert_array_equal(vol.hu, np.broadcast_to(expected, vol.hu.shape))
    assert vol.spacing == pytest.approx((2.5, 0.7, 0.8))
    # Voxel (x=1, y=2, z=3) -> LPS: x along row cosines * column spacing, y along columns * row spacing.
    np.testing.assert_allclose(vol.affine @ [1, 2, 3, 1], [0.8, 1.4, 7.5, 1.0])


def test_feet_first_order_is_ascending_along_normal(make_series):
    # Orientation with a flipped column direction: the normal points to -z, so the slice with the
    # largest z comes first.
    paths = make_series(4, orientation=(1, 0, 0, 0, -1, 0))
    vol = load_series(paths)
    assert vol.affine[2, 2] == pytest.approx(2.5 * -1.0)
    first = pydicom.dcmread(sorted(paths)[0])
    assert vol.hu[0, 0, 0] == first.InstanceNumber * 0 + -1024.0  # slice k=0 has normal offset 0, the smallest


@pytest.mark.parametrize("zs, reason", [
    ([0.0, 2.5, 2.5, 5.0], "duplicate slice"),
    ([0.0, 2.5, 7.5, 10.0], "missing 1 slice"),
    ([0.0, 2.5, 4.0, 7.5], "spacing varies"),
])
def test_rejects_bad_geometry_with_reason(make_series, zs, reason):
    with pytest.raises(SeriesError, match=reason):
        load_series(make_series(zs=zs))


def test_rejects_mixed_orientation(make_series, tmp_path):
    axial = make_series(4, folder=tmp_path / "a", series_uid="1.2.3.4")
    other = make_series(1, folder=tmp_path / "b", series_uid="1.2.3.4", orientation=(1, 0, 0, 0, 0, -1))
    with pytest.raises(SeriesError, match="mixes image orientations"):
        load_series(axial + other)


def test_rejects_mixed_series(make_series, tmp_path):
    with pytest.raises(SeriesError, match="2 different series"):
        load_series(make_series(2, folder=tmp_path / "a") + make_series(2, folder=tmp_path / "b"))


@pytest.mark.parametrize("mutate, reason", [
    (lambda ds: delattr(ds, "PixelData"), "no pixel data"),
    (lambda ds: delattr(ds, "ImagePositionPatient"), "ImagePositionPatient"),
    (lambda ds: setattr(ds, "PixelSpacing", ["1"]), "PixelSpacing"),
    (lambda ds: setattr(ds, "PhotometricInterpretation", "RGB"), "not monochrome"),
])
def test_rejects_incomplete_instances(make_series, mutate, reason):
    datasets = [pydicom.dcmread(p) for p in make_series(3)]
    mutate(datasets[1])
    with pytest.raises(SeriesError, match=reason):
        load_series(datasets)


def test_rejects_unreadable_file(tmp_path):
    bad = tmp_path / "x.dcm"
    bad.write_bytes(b"not dicom at all")
    with pytest.raises(SeriesError, match="not readable DICOM"):
        load_series([bad])


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm",
                                  "MR_small_jpeg_ls_lossless.dcm", "MR_small_bigendian.dcm",
                                  "J2K_pixelrep_mismatch.dcm"])
def test_compressed_and_legacy_transfer_syntaxes_decode(name):
    vol = load_series([get_testdata_file(name)])
    ref = pydicom.dcmread(get_testdata_file("CT_small.dcm" if name == "CT_small.dcm" else name))
    assert vol.hu.shape == (1, ref.Rows, ref.Columns)
    assert np.isfinite(vol.hu).all()


def test_lossless_compressed_equals_uncompressed():
    plain = load_series([get_testdata_file("MR_small.dcm")])
    for name in ("MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm"):
        np.testing.assert_array_equal(load_series([get_testdata_file(name)]).hu, plain.hu)


def _enhanced_from(classic: list[Dataset], shared_rescale: bool) -> Dataset:
    """Build an enhanced multi-frame CT from classic slices (functional groups per frame)."""
    first = classic[0]
    ds = copy.deepcopy(first)
    for kw in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "RescaleSlope",
               "RescaleIntercept", "SliceThickness"):
        delattr(ds, kw)
    ds.NumberOfFrames = len(classic)
    ds.PixelData = b"".join(c.PixelData for c in classic)
    shared = Dataset()
    ori = Dataset()
    ori.ImageOrientationPatient = first.ImageOrientationPatient
    shared.PlaneOrientationSequence = Sequence([ori])
    meas = Dataset()
    meas.PixelSpacing = first.PixelSpacing
    meas.SliceThickness = first.SliceThickness
    shared.PixelMeasuresSequence = Sequence([meas])
    if shared_rescale:
        tr = Dataset()
        tr.RescaleSlope, tr.RescaleIntercept, tr.RescaleType = 1, -1024, "HU"
        shared.PixelValueTransformationSequence = Sequence([tr])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for c in classic:
        fg = Dataset()
        pos = Dataset()
        pos.ImagePositionPatient = c.ImagePositionPatient
        fg.PlanePositionSequence = Sequence([pos])
        if not shared_rescale:
            tr = Dataset()
            tr.RescaleSlope, tr.RescaleIntercept, tr.RescaleType = 1, -1024, "HU"
            fg.PixelValueTransformationSequence = Sequence([tr])
        per_frame.append(fg)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    return ds


@pytest.mark.parametrize("shared_rescale", [True, False])
def test_enhanced_multiframe_matches_classic(make_series, shared_rescale):
    paths = sorted(make_series(5))
    classic = [pydicom.dcmread(p) for p in paths]
    enhanced = _enhanced_from(classic[::-1], shared_rescale)  # frames stored in reverse order
    a, b = load_series(paths), load_series([enhanced])
    np.testing.assert_array_equal(a.hu, b.hu)
    np.testing.assert_allclose(a.affine, b.affine)
    assert a.spacing == pytest.approx(b.spacing)


def test_multiframe_without_geometry_is_refused(make_series):
    ds = pydicom.dcmread(make_series(1)[0])
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2
    with pytest.raises(SeriesError, match="per-frame functional groups"):
        load_series([ds])

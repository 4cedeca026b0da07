"""Applying the profile: every action code, compound codes by Type, options, depth, privates, meta."""

from __future__ import annotations

import datetime as dt

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from medsearch.dicom.deidentify import Keys, deidentify, pixel_risk
from medsearch.dicom.descriptors import clean_text
from medsearch.dicom.profile import Context, Options, action_for, apply_profile, parse_safe_private
from medsearch.dicom.pseudonym import date_shift_days
from medsearch.dicom.quarantine import Quarantined
from medsearch.errors import ConfigError

KEYS = Keys(secret=b"s" * 32)


@pytest.fixture
def ds(slice_factory):
    return slice_factory(0, study_uid="1.2.3.20240102.555", series_uid="1.2.3.4", frame_uid="1.2.3.5")


def _ctx(options=Options(), shift=-400) -> Context:
    return Context(uid_secret=KEYS.secret, uid_root="", shift_days=shift, options=options)


@pytest.mark.parametrize("tag, options, expected", [
    (0x00100010, Options(), ("Z", None)),  # Patient's Name
    (0x00100030, Options(), ("Z", None)),  # Birth Date: never shifted (not in the dates option)
    (0x00080080, Options(), ("X", None)),  # Institution Name X/Z/D, Type 3 -> X
    (0x00100020, Options(), ("Z", None)),  # Patient ID Z/D, Type 2 -> Z
    (0x00181000, Options(), ("D", None)),  # Device Serial Number X/Z/D, Type 1 -> D
    (0x00081140, Options(), ("U", None)),  # Referenced Image Sequence X/Z/U*, Type 1 -> U
    (0x00081110, Options(), ("X", None)),  # Referenced Study Sequence X/Z, Type 3 -> X
    (0x00180010, Options(clean_descriptors=False), ("Z", None)),  # Contrast/Bolus Agent Z/D, Type 2 -> Z
    (0x00180010, Options(), ("C", "cleanDescOpt")),
    (0x00080018, Options(), ("U", None)),  # SOP Instance UID
    (0x00080020, Options(), ("C", "rtnLongModifDatesOpt")),  # Study Date, dates option on by default
    (0x00080020, Options(retain_dates=False), ("Z", None)),
    (0x00080021, Options(retain_dates=False), ("X", None)),  # Series Date X/D, Type 3
    (0x0008103E, Options(), ("C", "cleanDescOpt")),
    (0x0008103E, Options(clean_descriptors=False), ("X", None)),
    (0x00101010, Options(), ("X", None)),  # Patient's Age
    (0x00101010, Options(retain_patient_characteristics=True), ("K", "rtnPatCharsOpt")),
    (0x00181000, Options(retain_device_identity=True), ("K", "rtnDevIdOpt")),
    # Two options disagree (device identity K, modified dates C): the less disclosing C wins.
    (0x0018700C, Options(retain_device_identity=True), ("C", "rtnLongModifDatesOpt")),
    (0x00280010, Options(), ("K", None)),  # Rows: not in the table, kept
])
def test_action_resolution(tag, options, expected):
    assert action_for(tag, options) == expected


def test_each_action_applied(ds):
    ds.InstitutionName = "GENERAL HOSPITAL"  # X
    ds.DeviceSerialNumber = "SN-12345"  # D (Type 1)
    ds.ContrastBolusAgent = "IOHEXOL"  # C (Clean Descriptors): not imaging vocabulary, so emptied
    ds.StudyDate = "20240102"  # C: shifted
    ds.SeriesDescription = "CT CHEST DOE 1.25MM"  # C: cleaned
    ds.StudyTime = "101010.5"  # C on a time: kept
    apply_profile(ds, _ctx())
    assert "InstitutionName" not in ds
    assert ds.DeviceSerialNumber == "ANONYMIZED"
    assert not ds.ContrastBolusAgent
    assert ds.StudyDate == (dt.date(2024, 1, 2) + dt.timedelta(days=-400)).strftime("%Y%m%d")
    assert ds.SeriesDescription == "CT CHEST 1.25MM"
    assert ds.StudyTime == "101010.5"
    assert ds.SOPInstanceUID.startswith("2.25.") and ds.StudyInstanceUID != "1.2.3.20240102.555"
    assert ds.Rows == 16  # not in the table


@pytest.mark.parametrize("value, expected", [("CT CHEST W/O CONTRAST 1.25MM", "CT CHEST W/O CONTRAST 1.25MM"),
                                             ("JOHN DOE CHEST", "CHEST"), ("19500101", ""),
                                             ("MRN 12345678 AXIAL", "AXIAL"), ("", "")])
def test_clean_descriptors(value, expected):
    assert clean_text(value) == expected


@pytest.mark.parametrize("value", ["2024", "JOHN", "2024-01-02"])
def test_unshiftable_dates_get_a_dummy(ds, value, lenient_writing):
    ds.add_new(0x00080020, "DA", value)  # StudyDate with a partial or hostile value
    apply_profile(ds, _ctx())
    assert ds.StudyDate == "19000101"


def test_text_in_a_time_element_is_not_kept(ds, lenient_writing):
    ds.add_new(0x00080030, "TM", "DOE")
    apply_profile(ds, _ctx())
    assert ds.StudyTime == "000000"


def _nest(depth: int) -> Dataset:
    item = Dataset()
    item.PatientName = "DOE^DEEP"
    item.ReferencedSOPInstanceUID = "1.2.3.999"
    if depth:
        item.AnatomicRegionSequence = Sequence([_nest(depth - 1)])
    return item


def test_every_depth_is_deidentified(ds):
    ds.AnatomicRegionSequence = Sequence([_nest(6)])
    seen = []
    apply_profile(ds, _ctx(), on_item=seen.append)
    assert len(seen) == 7
    for item in seen:
        assert not item.PatientName and item.ReferencedSOPInstanceUID.startswith("2.25.")


def test_private_tags_removed_except_safe_list(ds):
    block = ds.private_block(0x0019, "GEMS_ACQU_01", create=True)
    block.add_new(0x0C, "DS", "1.5")  # safe-listed below
    block.add_new(0x0D, "LO", "DOE")
    other = ds.private_block(0x0029, "SIEMENS CSA HEADER", create=True)
    other.add_new(0x10, "OB", b"DOE BLOB")
    other.add_new(0x11, "SQ", Sequence([Dataset()]))
    safe = Options(safe_private=parse_safe_private(["0019,100C@GEMS_ACQU_01"]))
    apply_profile(ds, _ctx(safe))
    assert [(t.group, t.element) for t in ds.keys() if t.is_private] == [(0x0019, 0x0010), (0x0019, 0x100C)]
    apply_profile(ds, _ctx(Options()))
    assert not any(t.is_private for t in ds.keys())


@pytest.mark.parametrize("entry", ["0018,100C@GEMS", "0019,100C", "zz,yy@X", "0019,0010@GEMS"])
def test_safe_private_setting_is_validated(entry):
    with pytest.raises(ConfigError, match="deid_safe_private_tags"):
        parse_safe_private([entry])


def test_overlays_curves_icons_removed(ds):
    ds.add_new(0x60000010, "US", 16)  # Overlay Rows: not in the table, removed with its group
    ds.add_new(0x60023000, "OW", b"\x00\x01")
    ds.add_new(0x50000005, "US", 1)
    icon = Dataset()
    icon.Rows = 1
    ds.IconImageSequence = Sequence([icon])
    apply_profile(ds, _ctx())
    assert not any(0x5000 <= t.group <= 0x60FF for t in ds.keys())
    assert "IconImageSequence" not in ds


def test_unlisted_uid_embedding_an_mrn_is_replaced(ds):
    ds.add_new(0x00209161, "UI", "1.2.840.1234567890.20240102")  # Concatenation UID
    apply_profile(ds, _ctx())
    assert ds[0x00209161].value.startswith("2.25.")
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"  # a class UID is not an identifier


def test_deidentify_sets_identity_removed_method_codes_and_meta(ds):
    ds.file_meta.SourceApplicationEntityTitle = "MODALITY1"
    result = deidentify(ds, KEYS, Options(retain_patient_characteristics=True))
    assert ds.PatientIdentityRemoved == "YES"
    assert ds.PatientID == ds.PatientName == result.patient
    codes = [item.CodeValue for item in ds.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113105", "113107", "113108"]  # no 113101: pixels are not cleaned
    assert ds.LongitudinalTemporalInformationModified == "MODIFIED"
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert "SourceApplicationEntityTitle" not in ds.file_meta
    assert result.originals.study["StudyInstanceUID"] == "1.2.3.20240102.555"
    assert "1.2.3.20240102.555" not in repr(result)


@pytest.mark.parametrize("age, dicom, db", [("045Y", "045Y", "045"), ("089Y", "089Y", "089"),
                                            ("090Y", "090Y", "090+"), ("103Y", "090Y", "090+"),
                                            ("006M", "006M", "000")])
def test_age_capped_at_90(ds, age, dicom, db):
    ds.PatientAge = age
    result = deidentify(ds, KEYS, Options(retain_patient_characteristics=True))
    assert ds.PatientAge == dicom and result.age == db
    assert result.sex == "F"


def test_patient_characteristics_off_by_default(ds):
    ds.PatientAge = "045Y"
    result = deidentify(ds, KEYS, Options())
    assert "PatientAge" not in ds and not ds.PatientSex and result.age is None and result.sex is None


def test_date_shift_keeps_intervals_for_one_patient(slice_factory):
    a = slice_factory(0, study_uid=generate_uid(), series_uid=generate_uid(), frame_uid=generate_uid(),
                      study_date="20240102")
    b = slice_factory(0, study_uid=generate_uid(), series_uid=generate_uid(), frame_uid=generate_uid(),
                      study_date="20240301")
    ra, rb = deidentify(a, KEYS, Options()), deidentify(b, KEYS, Options())
    assert ra.patient == rb.patient
    assert (rb.study_date - ra.study_date).days == (dt.date(2024, 3, 1) - dt.date(2024, 1, 2)).days
    shift = date_shift_days(KEYS.secret, ra.patient)
    assert -3652 <= shift <= -365 and ra.study_date == dt.date(2024, 1, 2) + dt.timedelta(days=shift)


@pytest.mark.parametrize("mutate, reason", [
    (lambda d: setattr(d, "BurnedInAnnotation", "YES"), "burned-in annotation"),
    (lambda d: setattr(d, "SOPClassUID", "1.2.840.10008.5.1.4.1.1.7"), "secondary capture"),
    (lambda d: setattr(d, "ImageType", ["DERIVED", "SECONDARY", "SCREEN SAVE"]), "screen save"),
    (lambda d: delattr(d, "StudyInstanceUID"), "lacks a StudyInstanceUID"),
])
def test_clean_pixel_data_and_missing_uids_quarantine(ds, mutate, reason):
    mutate(ds)
    assert pixel_risk(ds) is None or "burned" in reason or "capture" in reason or "screen" in reason
    with pytest.raises(Quarantined, match=reason):
        deidentify(ds, KEYS, Options())


def test_burned_in_passes_when_the_option_is_off(ds):
    ds.BurnedInAnnotation = "YES"
    deidentify(ds, KEYS, Options(quarantine_burned_in=False))
    assert ds.PatientIdentityRemoved == "YES"

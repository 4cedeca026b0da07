"""Keyed pseudonyms and UIDs: normalised, stable, keyed, valid, and consistent across references."""

from __future__ import annotations

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from medsearch.dicom.deidentify import Keys, deidentify
from medsearch.dicom.profile import Options
from medsearch.dicom.pseudonym import normalise, patient_key, pseudonym
from medsearch.dicom.uids import check_root, is_valid_uid, new_uid
from medsearch.errors import ConfigError

SECRET = b"a" * 32


@pytest.mark.parametrize("a, b, person", [
    ("DOE^JOHN", "DOE^JOHN^", True), ("DOE^JOHN", "DOE^JOHN^^^", True), ("DOE^JOHN", "doe^john ", True),
    ("DOE^JOHN=", "DOE^JOHN", True), ("MRN0001 ", "MRN0001", False), ("MRN0001\x00", "MRN0001", False),
    ("1.2.3 ", "1.2.3", False),
])
def test_equivalent_spellings_normalise_equal(a, b, person):
    assert normalise(a, person) == normalise(b, person)


@pytest.mark.parametrize("a, b", [("DOE^JOHN", "DOE^JANE"), ("MRN0001", "MRN0002")])
def test_different_identifiers_differ(a, b):
    assert pseudonym(SECRET, "patient", normalise(a)) != pseudonym(SECRET, "patient", normalise(b))


def test_pseudonym_is_keyed_and_stable():
    p = pseudonym(SECRET, "patient", "id:\x1fMRN0001")
    assert p == pseudonym(SECRET, "patient", "id:\x1fMRN0001")  # same input, same pseudonym, any run
    assert p != pseudonym(b"b" * 32, "patient", "id:\x1fMRN0001")  # another key: unlinkable
    assert p != pseudonym(SECRET, "study", "id:\x1fMRN0001")  # domain separation between kinds
    assert p.startswith("P") and len(p) == 25


def test_patient_key_uses_id_then_name_then_study():
    assert patient_key("MRN1 ", "", "X", "", "1.2") == patient_key("MRN1", None, "Y", "1999", "9.9")
    assert patient_key("", "", "DOE^JOHN^", "19500101", "1.2") == patient_key(None, "", "DOE^JOHN", "19500101", "3")
    assert patient_key("", "", "", "", "1.2.3").startswith("study:")


@pytest.mark.parametrize("root", ["", "1.2.826.0.1.3680043.10.999"])
def test_new_uids_are_valid_and_stable(root):
    for original in ("1.2.3", "1.2.840.113619.2.55.3.20240102.123456789", "9" * 64):
        uid = new_uid(SECRET, original, root)
        assert is_valid_uid(uid) and len(uid) <= 64
        assert uid == new_uid(SECRET, original + " ", root)
        assert uid.startswith(root + "." if root else "2.25.")


@pytest.mark.parametrize("root", ["1.2.abc", "01.2", "1." * 30 + "1"])
def test_bad_uid_root_is_refused(root):
    with pytest.raises(ConfigError, match="uid_root"):
        check_root(root)


def test_references_stay_consistent_across_instances(make_series):
    paths = sorted(make_series(3))
    datasets = [pydicom.dcmread(p) for p in paths]
    originals = [str(ds.SOPInstanceUID) for ds in datasets]
    def ref(ds):
        item = Dataset()
        item.ReferencedSOPClassUID = ds.SOPClassUID
        item.ReferencedSOPInstanceUID = originals[0]
        return item

    for ds in datasets[1:]:
        ds.ReferencedImageSequence = Sequence([ref(ds)])
        ds.SourceImageSequence = Sequence([ref(ds)])
    keys = Keys(secret=SECRET)
    results = [deidentify(ds, keys, Options()) for ds in datasets]
    first = datasets[0].SOPInstanceUID
    for ds in datasets[1:]:
        assert ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID == first
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == first
    assert len({ds.FrameOfReferenceUID for ds in datasets}) == 1
    assert len({r.series for r in results}) == len({r.study for r in results}) == 1
    assert all(ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID for ds in datasets)
    assert not set(originals) & {str(ds.SOPInstanceUID) for ds in datasets}

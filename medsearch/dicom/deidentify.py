"""De-identify one DICOM instance: the profile, pseudonyms, the file meta and the method record.

:func:`deidentify` is the single entry point used by ``medsearch deid``, ingest,
STOW-RS, the Storage SCP worker and pull.  It either returns a
:class:`DeidResult` (the de-identified dataset plus the originals destined for
the encrypted vault) or raises :class:`~medsearch.dicom.quarantine.Quarantined`
with a reason that contains no identifier.

Order matters: pseudonyms and the date shift are computed from the original
values first, then the profile removes or replaces everything in Table E.1-1
at every depth, then the identifying top-level attributes get their
pseudonyms, and last the file meta is rebuilt from an allow-list so nothing
from the original meta (source AE title, private information) survives.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian,
)

from medsearch import __version__
from medsearch.dicom.descriptors import clean_text
from medsearch.dicom.profile import Context, Options, apply_profile
from medsearch.dicom.pseudonym import date_shift_days, normalise, patient_key, pseudonym
from medsearch.dicom.quarantine import Quarantined
from medsearch.dicom.uids import check_root, new_uid

DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
AGE_CAP_YEARS = 90
IMPLEMENTATION_VERSION = "MEDSEARCH"


@dataclass(frozen=True)
class Keys:
    """The secrets de-identification needs: the pseudonym HMAC key and the UID root."""

    secret: bytes = field(repr=False)
    uid_root: str = ""

    @classmethod
    def from_instance(cls, inst) -> "Keys":
        return cls(secret=inst.keyring.secret("pseudonym"), uid_root=check_root(inst.settings.uid_root))


@dataclass(frozen=True)
class Originals:
    """Original identifiers, for the encrypted vault only.  ``repr`` hides them, so a log or a
    traceback that prints this object cannot leak them."""

    patient: dict = field(repr=False)
    study: dict = field(repr=False)
    series: dict = field(repr=False)


@dataclass
class DeidResult:
    dataset: Dataset
    patient: str  # pseudonyms
    study: str
    series: str
    originals: Originals
    study_date: dt.date | None  # shifted, or None when dates are not retained
    sex: str | None
    age: str | None  # "045", "090+" (capped), or None
    modality: str
    body_part: str | None
    study_description: str | None  # cleaned
    series_description: str | None  # cleaned


def pixel_risk(ds: Dataset) -> str | None:
    """Why the pixels may show identifying text (Clean Pixel Data), or None."""
    if str(ds.get("BurnedInAnnotation", "")).strip().upper() == "YES":
        return "The image is flagged with burned-in annotation (BurnedInAnnotation=YES)."
    if str(ds.get("SOPClassUID", "")).startswith(SECONDARY_CAPTURE_PREFIX):
        return "The image is a secondary capture, which often shows burned-in text."
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    if "SCREEN SAVE" in image_type:
        return "The image is a screen save, which often shows burned-in text."
    return None


def _text(ds: Dataset, keyword: str) -> str:
    return normalise(ds.get(keyword, "") or "")


def _capped_age(value: str) -> tuple[str | None, str | None]:
    """(DICOM AS value, database value) with ages of 90 and over aggregated (HIPAA Safe Harbor)."""
    value = (value or "").strip().upper()
    if len(value) != 4 or not value[:3].isdigit() or value[3] not in "DWMY":
        return None, None
    if value[3] != "Y":
        return value, "000"
    years = int(value[:3])
    if years >= AGE_CAP_YEARS:
        return f"{AGE_CAP_YEARS:03d}Y", f"{AGE_CAP_YEARS:03d}+"
    return value, f"{years:03d}"


def _method_sequence(options: Options) -> Sequence:
    items = []
    for code, meaning in options.method_codes():
        item = Dataset()
        item.CodeValue = code
        item.CodingSchemeDesignator = "DCM"
        item.CodeMeaning = meaning
        items.append(item)
    return Sequence(items)


def _rebuild_meta(ds: Dataset, old_meta: FileMetaDataset | None) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    syntax = getattr(old_meta, "TransferSyntaxUID", None) if old_meta is not None else None
    if not syntax:
        # A file without meta (read with force): name the encoding it was actually read in.
        implicit, little = getattr(ds, "original_encoding", (False, True))
        little = True if little is None else little
        syntax = ImplicitVRLittleEndian if implicit else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    meta.TransferSyntaxUID = UID(str(syntax))
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    ds.file_meta = meta


def deidentify(ds: Dataset, keys: Keys, options: Options) -> DeidResult:
    """De-identify ``ds`` in place and return it with its pseudonyms and vault originals.

    Raises:
        Quarantined: the instance must not be de-identified automatically (reason given).
    """
    meta = getattr(ds, "file_meta", None)
    sop_class = str(ds.get("SOPClassUID", "") or getattr(meta, "MediaStorageSOPClassUID", "") or "")
    if sop_class == DICOMDIR_CLASS or "DirectoryRecordSequence" in ds:
        raise Quarantined("The file is a DICOMDIR media directory, not an image.",
                          "De-identify the image files; regenerate the DICOMDIR afterwards.")
    if not sop_class:
        raise Quarantined("The instance has no SOPClassUID.", "Correct the instance at the source.")
    if options.quarantine_burned_in:
        risk = pixel_risk(ds)
        if risk:
            raise Quarantined(risk, "Review the pixels by hand, or set deid_quarantine_burned_in=false "
                                    "only if such images never carry identifying text.")

    study_uid, series_uid = _text(ds, "StudyInstanceUID"), _text(ds, "SeriesInstanceUID")
    sop_uid = _text(ds, "SOPInstanceUID") or normalise(getattr(meta, "MediaStorageSOPInstanceUID", ""))
    if not (study_uid and series_uid and sop_uid):
        raise Quarantined("The instance lacks a StudyInstanceUID, SeriesInstanceUID or SOPInstanceUID.",
                          "Correct the instance at the source.")
    originals = Originals(
        patient={"PatientID": _text(ds, "PatientID"), "IssuerOfPatientID": _text(ds, "IssuerOfPatientID"),
                 "PatientName": normalise(ds.get("PatientName", "") or "")},
        study={"StudyInstanceUID": study_uid, "AccessionNumber": _text(ds, "AccessionNumber"),
               "StudyDate": _text(ds, "StudyDate")},
        series={"SeriesInstanceUID": series_uid},
    )
    key = patient_key(ds.get("PatientID"), ds.get("IssuerOfPatientID"), ds.get("PatientName"),
                      ds.get("PatientBirthDate"), study_uid)
    patient = pseudonym(keys.secret, "patient", key)
    study = pseudonym(keys.secret, "study", study_uid)
    series = pseudonym(keys.secret, "series", series_uid)
    shift = date_shift_days(keys.secret, patient) if options.retain_dates else None
    age_as, age_db = _capped_age(str(ds.get("PatientAge", "") or ""))

    if "SOPInstanceUID" not in ds:
        ds.SOPInstanceUID = sop_uid  # remapped by the profile like any instance UID
    ctx = Context(uid_secret=keys.secret, uid_root=keys.uid_root, shift_days=shift, options=options)
    apply_profile(ds, ctx)

    # Type 2 identity attributes get the pseudonym: a dummy value (Z/D) that keeps linkage.
    ds.PatientID = patient
    ds.PatientName = patient
    if options.retain_patient_characteristics and "PatientAge" in ds:
        if age_as:
            ds.PatientAge = age_as
        else:
            del ds.PatientAge
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = f"PS3.15 E.1 Basic Profile; medsearch {__version__}"[:64]
    ds.DeidentificationMethodCodeSequence = _method_sequence(options)
    ds.LongitudinalTemporalInformationModified = "MODIFIED" if options.retain_dates else "REMOVED"
    _rebuild_meta(ds, meta)

    study_date = None
    if shift is not None and ds.get("StudyDate"):
        try:
            study_date = dt.datetime.strptime(str(ds.StudyDate), "%Y%m%d").date()
        except ValueError:
            study_date = None
    sex = str(ds.get("PatientSex", "") or "").strip().upper()[:1] or None
    return DeidResult(
        dataset=ds, patient=patient, study=study, series=series, originals=originals,
        study_date=study_date,
        sex=sex if options.retain_patient_characteristics and sex in ("M", "F", "O") else None,
        age=age_db if options.retain_patient_characteristics else None,
        modality=str(ds.get("Modality", "") or "").strip().upper(),
        # BodyPartExamined is not in Table E.1-1 (it is kept in the DICOM output), but a hostile or careless
        # sender can put text there: the database only gets its vocabulary words.
        body_part=clean_text(str(ds.get("BodyPartExamined", "") or ""))[:32] or None,
        study_description=str(ds.get("StudyDescription", "") or "") or None,
        series_description=str(ds.get("SeriesDescription", "") or "") or None,
    )


def deidentified_uid(keys: Keys, original_uid: str) -> str:
    """The replacement an original UID gets (used to check references in tests and tools)."""
    return new_uid(keys.secret, original_uid, keys.uid_root)

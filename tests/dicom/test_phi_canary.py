"""The adversarial PHI-canary test: plant unique canaries everywhere, then scan every byte written.

Canaries go into every attribute of PS3.15 Table E.1-1 (with several values where the
attribute allows them), into sequences nested five levels deep, into
OtherPatientIDsSequence, RequestAttributesSequence, ReferencedPatientSequence,
ContributingEquipmentSequence and OriginalAttributesSequence, into private tags (text,
a vendor blob and a private sequence, also nested), into the file meta, into free-text
descriptions, into UIDs (a date and an MRN embedded in them) and into a Chinese name
under ISO_IR 192.  The series is then de-identified (``medsearch deid``) and ingested,
and every byte under the instance home and the output folder, the database tables
(a dump, for PostgreSQL), the CLI output and the captured logs is scanned in Latin-1,
UTF-8 and UTF-16.  The test passes only with zero leaks.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import pydicom
from click.testing import CliRunner
from pydicom.datadict import dictionary_VM, dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid
from sqlalchemy import inspect as sa_inspect
from sqlalchemy import select, text

from medsearch.cli import cli
from medsearch.dicom import profile_table
from medsearch.dicom.ingest import ingest_paths
from medsearch.store.models import AuditEvent, Series, VaultRecord

CANARY_DATE = "18830517"
CANARY_MRN = "900274455667"
CHINESE = "龘靐齉"
TEXT_VRS = {"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT", "UR", "TM", "AS"}
BINARY_VRS = {"OB", "OW", "UN", "OD", "OF", "OL", "OV"}
MULTI_VRS = {"AE", "CS", "LO", "PN", "SH", "UC", "DA", "DT", "IS", "DS", "UI", "TM"}
ALWAYS_PRESENT = {"PatientIdentityRemoved", "DeidentificationMethod", "DeidentificationMethodCodeSequence",
                  "LongitudinalTemporalInformationModified"}


class Canaries:
    """Unique marker strings; every one planted is remembered for the scan."""

    def __init__(self):
        self._n = itertools.count()
        self.planted: set[str] = {CANARY_DATE, CANARY_MRN, CHINESE}

    def word(self) -> str:
        value = f"QZX{next(self._n):05d}Q"
        self.planted.add(value)
        return value

    def number(self) -> str:
        # negative, because a bare digit string also turns up by chance inside the random decimal UIDs the
        # de-identifier writes ("2.25.<39 digits>": "73194183" did, about once in 30 runs); UIDs hold no '-'
        value = f"-7319{next(self._n):04d}"
        self.planted.add(value)
        return value

    def uid(self) -> str:
        return f"1.2.840.99999.{CANARY_DATE}.{CANARY_MRN}.{next(self._n)}"

    def value_for(self, vr: str, multi: bool):
        n = 2 if multi and vr in MULTI_VRS else 1
        if vr in TEXT_VRS:
            vals = [self.word() for _ in range(n)]
            if vr == "PN":
                vals = [f"{v}^{self.word()}" for v in vals]
        elif vr == "DA":
            vals = [CANARY_DATE] * n
        elif vr == "DT":
            vals = [CANARY_DATE + "101010"] * n
        elif vr in ("IS", "DS"):
            vals = [self.number() for _ in range(n)]
        elif vr == "UI":
            vals = [self.uid() for _ in range(n)]
        elif vr in BINARY_VRS:
            return self.word().encode() + b"\x00" + self.word().encode() + b"\x00"
        else:
            return None
        return vals if n > 1 else vals[0]


def _plant_item(c: Canaries, depth: int) -> Dataset:
    """An item holding a name, an ID, a UID, free text and a private blob, nested ``depth`` more levels."""
    item = Dataset()
    item.PatientName = f"{c.word()}^{c.word()}"
    item.PatientID = c.word()
    item.ReferencedSOPInstanceUID = c.uid()
    item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    item.StudyComments = c.word()
    item.PerformingPhysicianName = f"{c.word()}^{c.word()}"
    block = item.private_block(0x0029, "CANARY VENDOR", create=True)
    block.add_new(0x01, "LO", c.word())
    block.add_new(0x02, "OB", c.word().encode() + b"\x00")
    if depth > 0:
        # AnatomicRegionSequence is not in Table E.1-1, so it is kept and must be cleaned inside.
        item.AnatomicRegionSequence = Sequence([_plant_item(c, depth - 1)])
    return item


def _plant(ds: Dataset, c: Canaries) -> None:
    """Canaries in every Table E.1-1 attribute, the named sequences, private tags and the meta."""
    for value, mask, _name, _action, _options in profile_table.ROWS:
        if mask != 0xFFFFFFFF or value >> 16 in (0x0002, 0x0000):
            continue
        try:
            vr, vm = dictionary_VR(value), dictionary_VM(value)
        except KeyError:
            continue
        vr = vr.split(" or ")[0]
        if vr == "SQ":
            ds.add_new(value, "SQ", Sequence([_plant_item(c, 1)]))
            continue
        planted = c.value_for(vr, multi=vm != "1")
        if planted is not None:
            ds.add_new(value, vr, planted)
    # Overlays and curves (repeating groups) with canary text and data.
    ds.add_new(0x60004000, "LT", c.word())
    ds.add_new(0x60003000, "OW", c.word().encode() + b"\x00")
    ds.add_new(0x50000000 | 0x3000, "OB", c.word().encode() + b"\x00")
    # The named sequences, with canaries at depth.
    other = Dataset()
    other.PatientID, other.IssuerOfPatientID = c.word(), c.word()
    ds.OtherPatientIDsSequence = Sequence([other, _plant_item(c, 2)])
    request = Dataset()
    request.RequestedProcedureDescription = c.word()
    request.AccessionNumber = c.word()
    request.RequestedProcedureID = c.word()
    request.ScheduledProcedureStepDescription = c.word()
    request.ScheduledProcedureStepID = c.word()
    request.ReasonForTheRequestedProcedure = c.word()
    ds.RequestAttributesSequence = Sequence([request])
    ds.ReferencedPatientSequence = Sequence([_plant_item(c, 1)])
    equipment = Dataset()
    equipment.InstitutionName, equipment.StationName = c.word(), c.word()
    equipment.OperatorsName = f"{c.word()}^{c.word()}"
    equipment.ContributionDescription = c.word()
    ds.ContributingEquipmentSequence = Sequence([equipment])
    modified = Dataset()
    modified.PatientName = f"{c.word()}^{c.word()}"
    modified.PatientBirthDate = CANARY_DATE
    original = Dataset()
    original.ModifiedAttributesSequence = Sequence([modified])
    original.SourceOfPreviousValues = c.word()
    ds.OriginalAttributesSequence = Sequence([original])
    # Five levels of kept sequences, each item with its own canaries.
    ds.AnatomicRegionSequence = Sequence([_plant_item(c, 5)])
    # Private: text, a vendor blob, a private sequence with a nested private blob.
    block = ds.private_block(0x0011, "ACME CANARY 1.0", create=True)
    block.add_new(0x01, "LO", [c.word(), c.word()])
    block.add_new(0x02, "OB", b"\x01VENDORBLOB" + c.word().encode() + CHINESE.encode("utf-8") + b"\x00")
    block.add_new(0x03, "SQ", Sequence([_plant_item(c, 2)]))
    block.add_new(0x04, "UN", c.word().encode() + b"\x00")
    # Free-text descriptions around useful vocabulary; multi-valued elements.
    ds.SeriesDescription = f"CT CHEST {c.word()} 1.25MM"
    ds.StudyDescription = f"{c.word()} CHEST W/O CONTRAST"
    ds.ImageComments = f"patient {c.word()} born {CANARY_DATE} MRN {CANARY_MRN}"
    ds.OtherPatientNames = [f"{c.word()}^{c.word()}", f"{c.word()}^{c.word()}"]
    # A Chinese name in UTF-8 (ISO_IR 192), in the name and in a description.
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = f"{CHINESE}^{c.word()}"
    ds.PatientMotherBirthName = CHINESE
    # The file meta.
    ds.file_meta.SourceApplicationEntityTitle = c.word()
    ds.file_meta.PrivateInformationCreatorUID = c.uid()
    ds.file_meta.PrivateInformation = c.word().encode() + b"\x00"
    ds.file_meta.ImplementationVersionName = c.word()


def _canary_series(folder: Path, slice_factory, c: Canaries, n: int = 3) -> list[Path]:
    """A small CT series whose identifying UIDs embed a date and an MRN, with canaries everywhere."""
    folder.mkdir(parents=True)
    study_uid, series_uid, frame_uid = c.uid(), c.uid(), c.uid()
    paths = []
    for k in range(n):
        ds = slice_factory(k, study_uid=study_uid, series_uid=series_uid, frame_uid=frame_uid,
                           patient_id=CANARY_MRN, accession=c.word(), study_date=CANARY_DATE)
        keep = {kw: ds.get(kw) for kw in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
                                           "Rows", "Columns", "RescaleSlope", "RescaleIntercept", "Modality",
                                           "SOPClassUID", "BitsAllocated", "BitsStored", "HighBit",
                                           "PixelRepresentation", "SamplesPerPixel", "PhotometricInterpretation",
                                           "SliceThickness")}
        sop_uid = c.uid()
        _plant(ds, c)
        for kw, value in keep.items():  # geometry and pixel description stay valid
            setattr(ds, kw, value)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.StudyDate = CANARY_DATE
        ds.BurnedInAnnotation = "NO"
        if k == 0:
            first_uid = sop_uid
        ref = Dataset()  # references between the slices of the series
        ref.ReferencedSOPClassUID = ds.SOPClassUID
        ref.ReferencedSOPInstanceUID = first_uid
        ds.ReferencedImageSequence = Sequence([ref])
        ds.SourceImageSequence = Sequence([ref])
        path = folder / f"{CHINESE}_{CANARY_MRN}_{k}.dcm"  # identifying file names too
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _encodings(value: str) -> list[bytes]:
    out = []
    for enc in ("latin-1", "utf-8", "utf-16-le", "utf-16-be"):
        try:
            out.append(value.encode(enc))
        except UnicodeEncodeError:
            continue
    return out


def _scan(blobs: dict[str, bytes], canaries: set[str]) -> list[str]:
    needles = [(c, e) for c in sorted(canaries) for e in _encodings(c)]
    leaks = []
    for where, data in blobs.items():
        for canary, needle in needles:
            if needle in data:
                leaks.append(f"{canary!r} in {where}")
    return leaks


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _db_dump(inst) -> bytes:
    """Every row of every table, as text (the PostgreSQL equivalent of scanning the SQLite file)."""
    out = []
    with inst.engine.connect() as conn:
        for table in sa_inspect(conn).get_table_names():
            for row in conn.execute(text(f'SELECT * FROM "{table}"')):
                for value in row:
                    out.append(value if isinstance(value, bytes) else str(value).encode("utf-8"))
    return b"\n".join(out)


def test_phi_canaries_never_leak(instance, tmp_path, slice_factory, lenient_writing, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    c = Canaries()
    src = tmp_path / "incoming"
    paths = _canary_series(src, slice_factory, c)
    # The planted input really holds the canaries (the scan can find them).
    assert _scan(_files(src), {CANARY_MRN, CHINESE, "QZX00000Q"})
    planted_files = _files(src)
    numbers = {v for v in c.planted if v.startswith("-7319")}
    assert numbers and all(_scan(planted_files, {n}) for n in numbers)   # every IS and DS canary, as written

    out = tmp_path / "deid-out"
    result = CliRunner().invoke(cli, ["--home", str(instance.home), "deid", str(src), str(out)])
    assert result.exit_code == 0, result.output
    assert "3 deidentified" in result.output
    report = ingest_paths(instance, [src])
    assert sum(report.counts()["series"].values()) == 1 and report.counts()["files"] == {"ingested": 3}

    # The de-identified output is usable: one series, references consistent, meta matches.
    written = [pydicom.dcmread(p) for p in sorted(out.rglob("*.dcm"))]
    assert len(written) == 3
    uids = {ds.SOPInstanceUID for ds in written}
    for ds in written:
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.PatientIdentityRemoved == "YES"
        for ref in ds.get("ReferencedImageSequence", []):
            assert ref.ReferencedSOPInstanceUID in uids
        assert ds.SeriesDescription == "CT CHEST 1.25MM"
    assert len({ds.FrameOfReferenceUID for ds in written}) == 1

    with instance.sessions() as session:
        assert session.scalar(select(Series.description)) == "CT CHEST 1.25MM"
        assert session.query(VaultRecord).count() >= 5
        assert session.query(AuditEvent).count() >= 1

    blobs = {**{f"deid-out/{k}": v for k, v in _files(out).items()},
             **{f"home/{k}": v for k, v in _files(instance.home).items()},
             "database dump": _db_dump(instance),
             "cli output": result.output.encode("utf-8"),
             "captured stdout/stderr": "".join(capsys.readouterr()).encode("utf-8"),
             "logs": "\n".join(r.getMessage() for r in caplog.records).encode("utf-8"),
             "report": repr(report.to_dict()).encode("utf-8")}
    assert any(k.startswith("home/data/volumes/") for k in blobs) and any("thumbs" in k for k in blobs)
    leaks = _scan(blobs, c.planted)
    assert not leaks, f"{len(leaks)} leak(s): " + "; ".join(leaks[:20])


def test_canaries_cover_every_table_attribute(slice_factory, lenient_writing):
    """The canary dataset really holds every plantable Table E.1-1 attribute (the test above is not vacuous)."""
    ds = slice_factory(0, study_uid=generate_uid(), series_uid=generate_uid(), frame_uid=generate_uid())
    _plant(ds, Canaries())
    plantable = [v for v, m, *_ in profile_table.ROWS if m == 0xFFFFFFFF and v >> 16 not in (0, 2)
                 and keyword_for_tag(v) and dictionary_VR(v).split(" or ")[0] not in
                 {"US", "SS", "UL", "SL", "FL", "FD", "AT", "SV", "UV", "US or SS"}]
    missing = [hex(v) for v in plantable if v not in ds]
    assert len(plantable) > 500
    assert not missing

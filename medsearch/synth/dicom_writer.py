"""Writing a synthetic study as DICOM files, the way CT scanners do.

Series per study: a localizer (topogram), the main axial series (single-frame
CT Image Storage, or Enhanced CT Image Storage multi-frame), optionally a
thick mediastinal-window series and a secondary capture with burned-in
annotation.  Transfer syntaxes vary (explicit/implicit little endian, RLE
Lossless, JPEG 2000 Lossless).  All dates, times and UIDs derive from the seed,
so the same seed writes byte-identical files.
"""

from __future__ import annotations

import copy
import datetime as dt
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element, write_file_meta_info
from pydicom.pixels.encoders import JPEG2000LosslessEncoder, RLELosslessEncoder
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID
from scipy import ndimage

from medsearch.synth.acquisition import EXPLICIT_LE, IMPLICIT_LE, RLE, quantize, reconstruct
from medsearch.synth.phi import age_string, uid
from medsearch.synth.plan import rng_for
from medsearch.synth.study import SeriesInfo, SynthStudy, instance_number

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
IMPLEMENTATION_VERSION = "MEDSEARCH_SYNTH1"

#: Private blocks per manufacturer: (group, creator); elements hold identifiers as some vendors' do.
PRIVATE = {"SIEMENS": (0x0019, "SIEMENS CT VA0  COAD"), "GE MEDICAL SYSTEMS": (0x0009, "GEMS_IDEN_01"),
           "Philips": (0x01F1, "ELSCINT1"), "TOSHIBA": (0x7005, "TOSHIBA_MEC_CT3"),
           "Canon Medical Systems": (0x7005, "TOSHIBA_MEC_CT3")}


def write_study(study: SynthStudy, out_dir: Path, seed: int) -> list[dict]:
    """Write every series of ``study`` under ``out_dir``; one record per series (``path`` relative to it)."""
    base = _study_header(study, seed)
    records = []
    for s in study.series:
        folder = out_dir / f"SE{s.number:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        if s.role == "localizer":
            n = _write_localizer(study, s, base, folder)
        elif s.role == "axial":
            n = _write_volume(study, s, base, folder, study.stored, study.grid, study.acquisition.kernel,
                              study.acquisition.thickness, (-600, 1500) if study.acquisition.sharp else (40, 400),
                              study.acquisition.multiframe)
        elif s.role == "mediastinal":
            stored, grid = _thick_series(study, seed)
            n = _write_volume(study, s, base, folder, stored, grid, study.acquisition.soft_kernel, 5.0, (40, 400), False)
        else:
            n = _write_secondary_capture(study, s, base, folder)
        records.append({"role": s.role, "series_uid": s.uid, "series_number": s.number,
                        "path": folder.name, "files": n})
    return records


def _charset(values: list[str]) -> str | None:
    if all(v.isascii() for v in values):
        return None
    for cs, codec in (("ISO_IR 100", "latin_1"), ("ISO_IR 144", "iso8859_5")):
        try:
            for v in values:
                v.encode(codec)
            return cs
        except UnicodeEncodeError:
            continue
    return "ISO_IR 192"


def _da(d: dt.date) -> str:
    return d.strftime("%Y%m%d")


def _tm(t: dt.datetime | dt.time) -> str:
    return t.strftime("%H%M%S") + ".000000"


def _study_header(study: SynthStudy, seed: int) -> Dataset:
    pp = study.plan.patient
    pid, sid, acq = pp.identity, study.identity, study.acquisition
    rng = rng_for(seed, 8, pp.index, study.plan.visit)
    ds = Dataset()
    people = [pid.person, sid.referring, sid.performing, sid.reading, sid.operator]
    texts = [p.dicom_name for p in people] + [pid.address, sid.institution, sid.institution_address, sid.department]
    cs = _charset(texts)
    if cs:
        ds.SpecificCharacterSet = cs
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.StudyDate = _da(sid.study_date)
    ds.StudyTime = _tm(sid.study_time)
    ds.AccessionNumber = sid.accession
    ds.Modality = "CT"
    ds.Manufacturer = acq.manufacturer
    ds.InstitutionName = sid.institution
    ds.InstitutionAddress = sid.institution_address
    ds.ReferringPhysicianName = sid.referring.dicom_name
    ds.StationName = sid.station
    desc = "CT CHEST WITH CONTRAST" if acq.contrast_hu is not None else "CT CHEST W/O CONTRAST"
    ds.StudyDescription = desc if rng.random() < 0.7 else f"{desc} ACC {sid.accession}"
    ds.InstitutionalDepartmentName = sid.department
    ds.PhysiciansOfRecord = sid.referring.dicom_name
    ds.PerformingPhysicianName = sid.performing.dicom_name
    ds.NameOfPhysiciansReadingStudy = sid.reading.dicom_name
    ds.OperatorsName = sid.operator.dicom_name
    ds.ManufacturerModelName = acq.model
    ds.PatientName = pid.person.dicom_name
    ds.PatientID = pid.patient_id
    ds.IssuerOfPatientID = pid.issuer
    ds.PatientBirthDate = _da(pid.birth_date)
    ds.PatientSex = pid.sex
    other = Dataset()
    other.PatientID = pid.other_id
    other.IssuerOfPatientID = "HIS"
    other.TypeOfPatientID = "TEXT"
    ds.OtherPatientIDsSequence = Sequence([other])
    ds.PatientAge = age_string(pid.birth_date, sid.study_date)
    ds.PatientSize = f"{pid.height_m:.2f}"
    ds.PatientWeight = f"{pid.weight_kg:.1f}"
    ds.PatientAddress = pid.address
    ds.PatientTelephoneNumbers = pid.phone
    if rng.random() < 0.4:
        ds.AdditionalPatientHistory = f"f/u nodule, pt {pid.person.romanized.title()} MRN {pid.other_id}"
    ds.BodyPartExamined = "CHEST"
    ds.DeviceSerialNumber = sid.device_serial
    ds.SoftwareVersions = {"SIEMENS": "syngo CT VA48A", "GE MEDICAL SYSTEMS": "gmp_vct.40",
                           "Philips": "4.1.6"}.get(acq.manufacturer, "V6.0")
    ds.ProtocolName = "Thorax Routine" if rng.random() < 0.6 else f"CHEST {sid.accession}"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study.study_uid
    ds.StudyID = sid.study_id
    ds.FrameOfReferenceUID = study.frame_uid
    ds.PositionReferenceIndicator = ""
    ds.RequestingPhysician = sid.referring.dicom_name
    ds.RequestedProcedureDescription = desc
    req = Dataset()
    req.RequestedProcedureID = f"RP{sid.accession[1:]}"
    req.ScheduledProcedureStepID = f"SPS{sid.study_id}"
    req.AccessionNumber = sid.accession
    ds.RequestAttributesSequence = Sequence([req])
    ds.PerformedProcedureStepStartDate = _da(sid.study_date)
    ds.PerformedProcedureStepStartTime = _tm(sid.study_time)
    ds.PerformedProcedureStepID = f"PPS{sid.study_id}"
    ds.PerformedProcedureStepDescription = f"{desc} {pid.patient_id}" if rng.random() < 0.3 else desc
    if acq.contrast_hu is not None:
        ds.ContrastBolusAgent = str(rng.choice(["Omnipaque 350", "Iopamiro 370", "Ultravist 370"]))
        ds.ContrastBolusVolume = f"{int(rng.integers(60, 100))}"
    group, creator = PRIVATE[acq.manufacturer]
    block = ds.private_block(group, creator, create=True)
    block.add_new(0x10, "LO", pid.patient_id)
    block.add_new(0x11, "PN", pid.person.dicom_name)
    block.add_new(0x12, "LO", sid.accession)
    block.add_new(0x13, "DA", _da(pid.birth_date))
    block.add_new(0x14, "LO", f"{sid.institution}/{sid.station}")
    return ds


def _meta(sop_class: str, sop_uid: str, ts: str) -> FileMetaDataset:
    m = FileMetaDataset()
    m.MediaStorageSOPClassUID = sop_class
    m.MediaStorageSOPInstanceUID = sop_uid
    m.TransferSyntaxUID = ts
    m.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    m.ImplementationVersionName = IMPLEMENTATION_VERSION
    return m


def _pixels(ds: Dataset, frames: np.ndarray, ts: str) -> None:
    """Set PixelData for ``frames`` ``(n, rows, cols)`` in transfer syntax ``ts``."""
    if ts in (EXPLICIT_LE, IMPLICIT_LE):
        ds.PixelData = np.ascontiguousarray(frames).astype(frames.dtype.newbyteorder("<"), copy=False).tobytes()
        ds["PixelData"].VR = "OW"
        return
    kw = dict(rows=int(ds.Rows), columns=int(ds.Columns), samples_per_pixel=1, bits_allocated=int(ds.BitsAllocated),
              bits_stored=int(ds.BitsStored), pixel_representation=int(ds.PixelRepresentation),
              photometric_interpretation=str(ds.PhotometricInterpretation), number_of_frames=1)
    enc = []
    for f in frames:
        if ts == RLE:
            enc.append(RLELosslessEncoder.encode(np.ascontiguousarray(f), encoding_plugin="pylibjpeg", **kw))
        else:
            enc.append(JPEG2000LosslessEncoder.encode(np.ascontiguousarray(f), **kw))
    ds.PixelData = encapsulate(enc)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True


def _save(ds: Dataset, path: Path, ts: str) -> None:
    ds.save_as(path, implicit_vr=ts == IMPLICIT_LE, little_endian=True, enforce_file_format=True)


def _encode_elements(ds: Dataset, implicit: bool, encodings) -> dict:
    out = {}
    for elem in ds:
        fp = DicomBytesIO()
        fp.is_little_endian, fp.is_implicit_VR = True, implicit
        write_data_element(fp, elem, encodings)
        out[elem.tag] = fp.getvalue()
    return out


class _SeriesWriter:
    """Writes the slices of one series, encoding the header elements shared by all slices once.

    pydicom re-encodes every element of a dataset on each save; for a series
    of hundreds of slices that differ in a handful of elements that is most
    of the generation time.  The file is the same as ``Dataset.save_as`` would
    write: preamble, ``DICM``, file meta group, then all elements in tag order,
    each encoded by pydicom's own element writer.
    """

    def __init__(self, static: Dataset, ts: str):
        self.ts = ts
        self.implicit = ts == IMPLICIT_LE
        self.encodings = static._character_set
        self.static = _encode_elements(static, self.implicit, self.encodings)

    def write(self, path: Path, dynamic: Dataset, meta: FileMetaDataset) -> None:
        elems = dict(self.static)
        elems.update(_encode_elements(dynamic, self.implicit, self.encodings))
        fp = DicomBytesIO()
        fp.is_little_endian, fp.is_implicit_VR = True, False
        fp.write(b"\0" * 128 + b"DICM")
        write_file_meta_info(fp, meta, enforce_standard=True)
        path.write_bytes(fp.getvalue() + b"".join(elems[t] for t in sorted(elems)))


def _image_pixel(ds: Dataset, rows: int, cols: int, acq, bits_stored=None, rep=None) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated = 16
    ds.BitsStored = acq.bits_stored if bits_stored is None else bits_stored
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = acq.pixel_representation if rep is None else rep


def _series_header(study: SynthStudy, s: SeriesInfo, base: Dataset, offset_s: int) -> tuple[Dataset, dt.datetime]:
    ds = copy.deepcopy(base)  # a shallow copy would share (and mutate) the study's elements
    when = study.acquired + dt.timedelta(seconds=offset_s)
    ds.SeriesDate = _da(when.date())
    ds.SeriesTime = _tm(when)
    ds.AcquisitionDate = _da(when.date())
    ds.AcquisitionTime = _tm(when)
    ds.ContentDate = _da(when.date())
    ds.SeriesInstanceUID = s.uid
    ds.SeriesNumber = s.number
    ds.SeriesDescription = s.description
    ds.AcquisitionNumber = 1
    acq = study.acquisition
    ds.KVP = str(acq.kvp)
    ds.XRayTubeCurrent = int(acq.mas * 1.6)
    ds.Exposure = acq.mas
    ds.DataCollectionDiameter = "500.0"
    ds.ReconstructionDiameter = f"{acq.pixel_mm * acq.matrix:.1f}"
    ds.GantryDetectorTilt = "0.0"
    ds.TableHeight = f"{150 + acq.offset[1]:.1f}"
    ds.RotationDirection = "CW"
    ds.CTDIvol = round(acq.mas * 0.07, 2)
    return ds, when


def _write_volume(study, s, base, folder, stored, grid, kernel, thickness, window, multiframe) -> int:
    acq = study.acquisition
    ds, when = _series_header(study, s, base, 30 + 10 * s.number)
    ds.ConvolutionKernel = kernel
    ds.SliceThickness = f"{thickness:g}"
    ds.SpacingBetweenSlices = f"{grid.spacing[0]:g}"
    n = grid.shape[0]
    rows, cols = grid.shape[1:]
    ox, oy, _ = grid.origin
    zs = grid.axes()[2]
    order = list(range(n - 1, -1, -1)) if acq.instances_descending else list(range(n))
    ts = acq.transfer_syntax
    if multiframe:
        ts = EXPLICIT_LE if ts == IMPLICIT_LE else ts  # enhanced objects are written explicit-VR
        return _write_enhanced(study, s, ds, folder, stored, grid, order, kernel, thickness, window, ts, when)
    _image_pixel(ds, rows, cols, acq)
    ds.SOPClassUID = CT_IMAGE
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [f"{grid.spacing[1]:.6g}", f"{grid.spacing[2]:.6g}"]
    ds.RescaleIntercept = f"{acq.intercept:g}"
    ds.RescaleSlope = f"{acq.slope:g}"
    ds.RescaleType = "HU"
    ds.WindowCenter, ds.WindowWidth = str(window[0]), str(window[1])
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    writer = _SeriesWriter(ds, ts)
    for num, k in enumerate(order, start=1):
        sop = uid(3, study.identity.uid_key, when, s.number, num)
        dyn = Dataset()
        dyn.SOPInstanceUID = sop
        dyn.InstanceNumber = num
        dyn.ImagePositionPatient = [f"{ox:.4f}", f"{oy:.4f}", f"{float(zs[k]):.4f}"]
        dyn.SliceLocation = f"{float(zs[k]):.4f}"
        t = when + dt.timedelta(milliseconds=int(350 * num))
        dyn.ContentTime = _tm(t)
        dyn.AcquisitionDateTime = t.strftime("%Y%m%d%H%M%S.%f")
        dyn.InstanceCreationDate = _da(t.date())
        dyn.InstanceCreationTime = _tm(t)
        dyn.Rows, dyn.Columns = ds.Rows, ds.Columns
        dyn.BitsAllocated, dyn.BitsStored = ds.BitsAllocated, ds.BitsStored
        dyn.PixelRepresentation, dyn.PhotometricInterpretation = ds.PixelRepresentation, ds.PhotometricInterpretation
        _pixels(dyn, stored[k:k + 1], ts)
        writer.write(folder / f"IM{num:05d}.dcm", dyn, _meta(CT_IMAGE, sop, ts))
    return n


def _write_enhanced(study, s, ds, folder, stored, grid, order, kernel, thickness, window, ts, when) -> int:
    acq = study.acquisition
    n = len(order)
    rows, cols = grid.shape[1:]
    ox, oy, _ = grid.origin
    zs = grid.axes()[2]
    for key in ("KVP", "XRayTubeCurrent", "Exposure", "DataCollectionDiameter", "ReconstructionDiameter",
                "GantryDetectorTilt", "TableHeight", "RotationDirection", "CTDIvol", "ImageType"):
        if key in ds:
            del ds[key]
    _image_pixel(ds, rows, cols, acq, bits_stored=16 if acq.bits_stored == 12 else acq.bits_stored)
    if acq.bits_stored == 12:
        ds.BitsStored, ds.HighBit = 12, 11
    ds.SOPClassUID = ENHANCED_CT
    sop = uid(3, study.identity.uid_key, when, s.number, 1)
    ds.SOPInstanceUID = sop
    ds.InstanceNumber = 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.NumberOfFrames = n
    ds.ContentTime = _tm(when)
    ds.AcquisitionDateTime = when.strftime("%Y%m%d%H%M%S.%f")
    ds.InstanceCreationDate = _da(when.date())
    ds.InstanceCreationTime = _tm(when)
    ds.ContentQualification = "PRODUCT"
    ds.ImageComments = f"{acq.model}"
    ds.PresentationLUTShape = "IDENTITY"
    ds.VolumetricProperties = "VOLUME"
    ds.VolumeBasedCalculationTechnique = "NONE"
    ds.PixelPresentation = "MONOCHROME"
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    dim_uid = uid(5, study.identity.uid_key, when, s.number)
    org = Dataset()
    org.DimensionOrganizationUID = dim_uid
    ds.DimensionOrganizationSequence = Sequence([org])
    ds.DimensionOrganizationType = "3D"
    idx = []
    for ptr, grp in ((0x00209056, 0x00209111), (0x00209057, 0x00209111)):
        d = Dataset()
        d.DimensionOrganizationUID = dim_uid
        d.DimensionIndexPointer = ptr
        d.FunctionalGroupPointer = grp
        idx.append(d)
    ds.DimensionIndexSequence = Sequence(idx)
    shared = Dataset()
    pm = Dataset()
    pm.PixelSpacing = [f"{grid.spacing[1]:.6g}", f"{grid.spacing[2]:.6g}"]
    pm.SliceThickness = f"{thickness:g}"
    pm.SpacingBetweenSlices = f"{grid.spacing[0]:g}"
    shared.PixelMeasuresSequence = Sequence([pm])
    po = Dataset()
    po.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared.PlaneOrientationSequence = Sequence([po])
    pvt = Dataset()
    pvt.RescaleIntercept = f"{acq.intercept:g}"
    pvt.RescaleSlope = f"{acq.slope:g}"
    pvt.RescaleType = "HU"
    shared.PixelValueTransformationSequence = Sequence([pvt])
    voi = Dataset()
    voi.WindowCenter, voi.WindowWidth = str(window[0]), str(window[1])
    shared.FrameVOILUTSequence = Sequence([voi])
    ft = Dataset()
    ft.FrameType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ft.PixelPresentation = "MONOCHROME"
    ft.VolumetricProperties = "VOLUME"
    ft.VolumeBasedCalculationTechnique = "NONE"
    shared.CTImageFrameTypeSequence = Sequence([ft])
    rec = Dataset()
    rec.ConvolutionKernel = kernel
    rec.ReconstructionDiameter = f"{acq.pixel_mm * acq.matrix:.1f}"
    shared.CTReconstructionSequence = Sequence([rec])
    xr = Dataset()
    xr.KVP = str(acq.kvp)
    shared.CTXRayDetailsSequence = Sequence([xr])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per = []
    for num, k in enumerate(order, start=1):
        fg = Dataset()
        fc = Dataset()
        fc.StackID = "1"
        fc.InStackPositionNumber = int(k) + 1
        fc.DimensionIndexValues = [1, int(k) + 1]
        t = when + dt.timedelta(milliseconds=int(350 * num))
        fc.FrameAcquisitionDateTime = t.strftime("%Y%m%d%H%M%S.%f")
        fc.FrameReferenceDateTime = fc.FrameAcquisitionDateTime
        fc.FrameAcquisitionDuration = 350.0
        fg.FrameContentSequence = Sequence([fc])
        pp = Dataset()
        pp.ImagePositionPatient = [f"{ox:.4f}", f"{oy:.4f}", f"{float(zs[k]):.4f}"]
        fg.PlanePositionSequence = Sequence([pp])
        per.append(fg)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per)
    ds.file_meta = _meta(ENHANCED_CT, sop, ts)
    _pixels(ds, stored[order], ts)
    _save(ds, folder / "IM00001.dcm", ts)
    return 1


def _thick_series(study: SynthStudy, seed: int):
    """A 5 mm soft-kernel series reconstructed from the same acquisition."""
    from medsearch.synth.geometry import Grid

    acq, grid = study.acquisition, study.grid
    f = max(1, int(round(5.0 / grid.spacing[0])))
    n = grid.shape[0] // f
    clean = study.clean[: n * f].reshape(n, f, *grid.shape[1:]).mean(axis=1)
    g = Grid((n,) + grid.shape[1:], (grid.spacing[0] * f,) + grid.spacing[1:],
             (grid.origin[0], grid.origin[1], grid.origin[2] + grid.spacing[0] * (f - 1) / 2))
    rng = rng_for(seed, 9, study.plan.patient.index, study.plan.visit)
    noisy = reconstruct(clean, acq, rng, g, sharp=False, noise_sd=acq.noise_sd * 0.35 if acq.sharp else acq.noise_sd * 0.6)
    stored, _ = quantize(noisy, acq)
    return stored, g


def _write_localizer(study, s, base, folder) -> int:
    """A frontal topogram: attenuation summed front to back, bone bright."""
    acq, grid = study.acquisition, study.grid
    ds, when = _series_header(study, s, base, 0)
    mu = np.clip(study.clean + 1000.0, 0, None) / 1000.0
    proj = mu.sum(axis=1) * grid.spacing[1]                      # (z, x) line integrals in mm
    proj = ndimage.zoom(proj, (grid.spacing[0] / grid.spacing[2], 1), order=1)[::-1]  # rows from head down
    img = np.clip(proj / max(proj.max(), 1e-6) * 3600, 0, 4095).astype(np.uint16)
    rows, cols = img.shape
    _image_pixel(ds, rows, cols, acq, bits_stored=12, rep=0)
    ds.SOPClassUID = CT_IMAGE
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.ConvolutionKernel = "T20f" if acq.manufacturer == "SIEMENS" else "STANDARD"
    ds.SliceThickness = "0.6"
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    z_top = grid.origin[2] + grid.spacing[0] * (grid.shape[0] - 1)
    ds.ImagePositionPatient = [f"{grid.origin[0]:.4f}", "0.0000", f"{z_top:.4f}"]
    ds.PixelSpacing = [f"{grid.spacing[2]:.6g}", f"{grid.spacing[2]:.6g}"]
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "US"
    ds.WindowCenter, ds.WindowWidth = "1800", "3600"
    sop = uid(3, study.identity.uid_key, when, s.number, 1)
    ds.SOPInstanceUID = sop
    ds.InstanceNumber = 1
    ds.ContentTime = _tm(when)
    ds.file_meta = _meta(CT_IMAGE, sop, EXPLICIT_LE)
    _pixels(ds, img[None], EXPLICIT_LE)
    _save(ds, folder / "IM00001.dcm", EXPLICIT_LE)
    return 1


def _write_secondary_capture(study, s, base, folder) -> int:
    """A key image with patient details burned into the pixels."""
    pid = study.plan.patient.identity
    sid = study.identity
    k = study.labels["findings"][0]["key_slice"] if study.labels["findings"] else study.grid.shape[0] // 2
    sl = study.hu[k]
    img8 = (np.clip((sl + 1350) / 1500, 0, 1) * 255).astype(np.uint8)
    size = max(256, sl.shape[0] * 2)
    im = Image.fromarray(img8).resize((size, size), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(im)
    font = ImageFont.load_default(size=max(10, size // 28))
    lines = [pid.person.romanized, f"ID {pid.patient_id}  DOB {pid.birth_date:%Y-%m-%d}",
             f"{sid.study_date:%Y-%m-%d} ACC {sid.accession}"]
    for i, line in enumerate(lines):
        draw.text((4, 4 + i * (size // 24)), line, fill=255, font=font)
    draw.text((4, size - size // 20), sid.institution.encode("ascii", "ignore").decode() or "HOSPITAL", fill=255, font=font)
    arr = np.asarray(im, dtype=np.uint8)
    ds, when = _series_header(study, s, base, 600)
    for key in ("KVP", "XRayTubeCurrent", "Exposure", "DataCollectionDiameter", "ReconstructionDiameter",
                "GantryDetectorTilt", "TableHeight", "RotationDirection", "CTDIvol", "FrameOfReferenceUID",
                "PositionReferenceIndicator"):
        if key in ds:
            del ds[key]
    ds.Modality = "OT"
    ds.SOPClassUID = SECONDARY_CAPTURE
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.ConversionType = "WSD"
    ds.BurnedInAnnotation = "YES"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = arr.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    sop = uid(3, sid.uid_key, when, s.number, 1)
    ds.SOPInstanceUID = sop
    ds.InstanceNumber = 1
    ds.ContentTime = _tm(when)
    ds.file_meta = _meta(SECONDARY_CAPTURE, sop, EXPLICIT_LE)
    ds.PixelData = arr.tobytes()
    ds["PixelData"].VR = "OB"
    _save(ds, folder / "IM00001.dcm", EXPLICIT_LE)
    return 1


__all__ = ["write_study", "instance_number"]

"""One synthetic study in memory: the volume the DICOM encodes, its labels and masks.

:func:`generate_study` is the fast path for model training: it renders and
reconstructs the main series and returns exactly the HU values that the
written DICOM files decode to (the same quantisation by rescale slope and
intercept), without writing anything.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np

from medsearch.errors import InputError
from medsearch.synth.acquisition import MATRICES, Acquisition, quantize, reconstruct, sample_acquisition
from medsearch.synth.anatomy import Anatomy, render_anatomy
from medsearch.synth.findings import RenderedFinding, render_findings, sample_finding, split_bilateral
from medsearch.synth.geometry import Grid
from medsearch.synth.phi import StudyIdentity, make_study_identity, uid
from medsearch.synth.plan import VisitPlan, rng_for, visit_plan
from medsearch.synth.reports import write_reports
from medsearch.vocab import FINDING_TYPES


@dataclass
class SeriesInfo:
    role: str            # localizer | axial | mediastinal | secondary_capture
    number: int
    uid: str
    description: str


@dataclass
class SynthStudy:
    """A generated study.

    Attributes:
        hu: float32 ``(z, y, x)`` HU of the main (axial) series, slices ascending
            along the normal: exactly what its DICOM files decode to.
        spacing: ``(dz, dy, dx)`` mm.
        affine: 4x4, voxel ``(x, y, z)`` -> patient LPS mm.
        labels: the ``labels.jsonl`` record of the study.
        lobes: uint8 ``(z, y, x)`` lobe map (anatomy.LOBE_CODES; 0 = not lung).
        masks: one bool ``(z, y, x)`` mask per entry of ``labels["findings"]``.
    """

    hu: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray
    labels: dict
    lobes: np.ndarray
    masks: list[np.ndarray]
    tissue: np.ndarray
    stored: np.ndarray
    clean: np.ndarray
    grid: Grid
    acquisition: Acquisition
    plan: VisitPlan
    identity: StudyIdentity
    series: list[SeriesInfo]
    study_uid: str
    frame_uid: str
    acquired: dt.datetime


def generate_study(seed: int, index: int, matrix: int = 128, findings: list[str] | None = None) -> SynthStudy:
    """Generate study ``index`` of the archive with ``seed``.

    Args:
        seed: archive seed; the same (seed, index, matrix) gives the same study.
        index: 0-based study number.
        matrix: in-plane matrix (128, 256 or 512).
        findings: force these finding types (vocab.FINDING_TYPES) instead of the
            planned ones, e.g. to train or test on a balanced set.
    """
    if int(matrix) not in MATRICES:
        raise InputError(f"matrix {matrix} is not supported.", f"use one of {', '.join(map(str, MATRICES))}.")
    if index < 0:
        raise InputError("study index must be zero or positive.", "pass an index from 0 to studies - 1.")
    matrix = int(matrix)
    plan = visit_plan(seed, index)
    if findings is not None:
        unknown = sorted(set(findings) - set(FINDING_TYPES))
        if unknown:
            raise InputError(f"unknown finding type(s): {', '.join(unknown)}.",
                             f"use types from: {', '.join(FINDING_TYPES)}.")
        frng = rng_for(seed, 10, index)
        plan.findings = [x for t in findings for x in split_bilateral(sample_finding(frng, t))]
        plan.resolved = []
    pp = plan.patient
    rng = rng_for(seed, 5, pp.index, plan.visit)
    anat = pp.anatomy
    acq = sample_acquisition(rng, matrix, 2 * anat.body_a, anat.lung_h)
    body_grid = acq.grid(anat.lung_h)
    anatomy: Anatomy = render_anatomy(anat, body_grid, acq.contrast_hu)
    patient_seed = int(rng_for(seed, 4, pp.index).integers(2**31))
    rendered: list[RenderedFinding] = render_findings(plan.findings, anatomy, body_grid, anat, patient_seed)
    clean = anatomy.hu
    noisy = reconstruct(clean, acq, rng, body_grid)
    stored, hu = quantize(noisy, acq)

    ox, oy, oz = acq.offset
    gx, gy, gz = body_grid.origin
    grid = Grid(body_grid.shape, body_grid.spacing, (round(gx + ox, 4), round(gy + oy, 4), round(gz + oz, 4)))
    sid = make_study_identity(rng_for(seed, 6, pp.index, plan.visit), plan.date)
    acquired = dt.datetime.combine(plan.date, sid.study_time)
    study_uid = uid(1, sid.uid_key, acquired)
    frame_uid = uid(4, sid.uid_key, acquired)
    series = _series(acq, sid, acquired, pp.identity.patient_id)
    findings = [_finding_label(r, grid, acq) for r in rendered]
    labels = {
        "study_uid": study_uid,
        "accession_number": sid.accession,
        "patient_id": pp.identity.patient_id,
        "patient_name": pp.identity.person.dicom_name,
        "study_date": plan.date.isoformat(),
        "study_index": index,
        "patient_index": pp.index,
        "visit": plan.visit,
        "prior_study_date": plan.prior_date.isoformat() if plan.prior_date else None,
        "series": [{"role": s.role, "series_uid": s.uid, "series_number": s.number, "description": s.description}
                   for s in series],
        "main_series_uid": next(s.uid for s in series if s.role == "axial"),
        "n_slices": int(grid.shape[0]),
        "spacing_mm": [float(v) for v in grid.spacing],
        "findings": findings,
        "resolved": [{"type": r.type, "site": r.site, "laterality": r.laterality,
                      "prior_diameter_mm": r.diameter_mm, "lesion_id": r.lesion_id} for r in plan.resolved],
        "normal": not findings,
        "contrast": acq.contrast_hu is not None,
    }
    en, zh = write_reports(labels, acq, rng_for(seed, 7, pp.index, plan.visit))
    labels["report_en"], labels["report_zh"] = en, zh
    return SynthStudy(hu=hu, spacing=grid.spacing, affine=grid.affine(), labels=labels, lobes=anatomy.lobes,
                      masks=[r.mask for r in rendered], tissue=anatomy.tissue, stored=stored, clean=clean,
                      grid=grid, acquisition=acq, plan=plan, identity=sid, series=series, study_uid=study_uid,
                      frame_uid=frame_uid, acquired=acquired)


def instance_number(k: int, n: int, acq: Acquisition) -> int:
    """Instance number of slice ``k`` (ascending order) in the main series."""
    return n - k if acq.instances_descending else k + 1


def _finding_label(r: RenderedFinding, grid: Grid, acq: Acquisition) -> dict:
    s = r.spec
    ox, oy, oz = acq.offset
    cx, cy, cz = r.center_body
    center = [round(cx + ox, 2), round(cy + oy, 2), round(cz + oz, 2)]
    kk = np.nonzero(r.mask.any(axis=(1, 2)))[0]
    key = grid.to_index(center)[0]
    return {
        "type": s.type, "site": s.site, "laterality": s.laterality,
        "diameter_mm": s.diameter_mm, "short_axis_mm": s.short_axis_mm if s.type in ("nodule", "mass", "cavity") else None,
        "density": s.density, "shape": s.shape, "count": s.count,
        "center_mm": center, "slice_range": [int(kk.min()), int(kk.max())], "key_slice": int(key),
        "key_image_number": instance_number(int(key), grid.shape[0], acq),
        "change": s.change, "prior_diameter_mm": s.prior_diameter_mm, "lesion_id": s.lesion_id,
        "sides_mm": dict(s.sides) if s.type == "pleural effusion" else None,
        "hu": round(float(s.hu), 1) if s.hu is not None else None,
    }


def _series(acq: Acquisition, sid: StudyIdentity, when: dt.datetime, patient_id: str) -> list[SeriesInfo]:
    k = sid.uid_key
    main_desc = f"Thorax {acq.thickness:g} {acq.kernel}"
    series = [SeriesInfo("localizer", 1, uid(2, k, when, 1), "Topogram 0.6 T20f" if acq.manufacturer == "SIEMENS"
                         else "Scout"),
              SeriesInfo("axial", 2, uid(2, k, when, 2), main_desc)]
    if acq.thick_series:
        series.append(SeriesInfo("mediastinal", 3, uid(2, k, when, 3), f"Mediastinum 5.0 {acq.soft_kernel}"))
    if acq.burned_in:
        series.append(SeriesInfo("secondary_capture", 99, uid(2, k, when, 99), f"Key image {patient_id}"))
    return series

"""What the pages and the API show, built from the store and the other areas' interfaces.

Plain functions (no Flask).  Where a capability another area provides has not
landed (search, similar, vault, ingest), :func:`capability` raises
:class:`NotBuiltError` (HTTP 503) naming it, instead of faking an answer.
"""

from __future__ import annotations

import datetime as dt
import importlib
import importlib.util
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from medsearch.accounts import Principal
from medsearch.errors import ConfigError, InputError, MedsearchError, ModelError, NotBuiltError, NotFoundError
from medsearch.store.models import Series, Study, Volume

WINDOWS = ("lung", "mediastinum")
_PSEUDONYM_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


def capability(module: str, attr: str, what: str):
    """The function ``module.attr``, or NotBuiltError naming ``what``."""
    if importlib.util.find_spec(module) is None:
        raise NotBuiltError(what)
    mod = importlib.import_module(module)
    fn = getattr(mod, attr, None)
    if fn is None:
        raise NotBuiltError(what)
    return fn


def check_pseudonym(value: str, what: str = "study") -> str:
    if not value or len(value) > 64 or not set(value) <= _PSEUDONYM_CHARS:
        raise NotFoundError(f"No {what} with that identifier.", "Use a pseudonym from a search result.")
    return value


def _hidden(inst, study: Study, principal: Principal, patient: str | None = None) -> bool:
    """The search pipeline's business rules, applied to a direct look-up too.

    A restricted patient's study (VIP, staff) and a study from a hospital site
    outside the user's ``allowed_sites`` do not exist for that user (an admin
    sees restricted patients; the site rule binds everyone it is set for).
    """
    patient = patient if patient is not None else study.patient.pseudonym
    if patient in (inst.settings.restricted_patients or []) and principal.role != "admin":
        return True
    sites = principal.allowed_sites
    return sites is not None and getattr(study, "site", None) not in sites


def _finding_dict(f) -> dict:
    return {"finding": f.finding_type, "site": f.site, "laterality": f.laterality, "density": f.density,
            "size_mm": f.size_mm, "probability": round(float(f.probability), 4), "key_slice": f.key_slice,
            "region": f.bbox}


def _series_dict(se: Series) -> dict:
    v = se.volume
    findings = sorted(v.findings, key=lambda f: -f.probability) if v else []
    key = next((f for f in findings if f.key_slice is not None), None)
    shape = list(v.shape) if v else None
    return {"series": se.pseudonym, "modality": se.modality, "body_part": se.body_part,
            "description": se.description, "instances": se.n_instances,
            "volume": {"shape": shape, "spacing": list(v.spacing), "status": v.status,
                       "model_version": v.model_version} if v else None,
            "findings": [_finding_dict(f) for f in findings],
            "key_slice": key.key_slice if key else (shape[0] // 2 if shape else None),
            "region": key.bbox if key else None}


def study_detail(inst, study: str, principal: Principal) -> dict:
    check_pseudonym(study)
    with inst.sessions() as s:
        row = s.execute(select(Study).where(Study.pseudonym == study).options(
            selectinload(Study.patient), selectinload(Study.series).selectinload(Series.volume)
            .selectinload(Volume.findings))).scalar_one_or_none()
        # A restricted patient's study does not exist for a non-admin (no confirmation either way).
        if row is None or _hidden(inst, row, principal):
            raise NotFoundError("No study with that identifier.", "Use a pseudonym from a search result.")
        return {"study": row.pseudonym, "patient": row.patient.pseudonym,
                "study_date": row.study_date.isoformat() if row.study_date else None,
                "modality": row.modality, "body_part": row.body_part, "description": row.description,
                "series": [_series_dict(se) for se in sorted(row.series, key=lambda x: x.id)]}


def series_detail(inst, series: str, principal: Principal) -> dict:
    check_pseudonym(series, "series")
    with inst.sessions() as s:
        row = s.execute(select(Series).where(Series.pseudonym == series).options(
            selectinload(Series.study).selectinload(Study.patient),
            selectinload(Series.volume).selectinload(Volume.findings))).scalar_one_or_none()
        if row is None or _hidden(inst, row.study, principal):
            raise NotFoundError("No series with that identifier.", "Use a pseudonym from a search result.")
        return {**_series_dict(row), "study": row.study.pseudonym, "patient": row.study.patient.pseudonym}


class _VolumeCache:
    """Memory-mapped stored volumes, a few at a time (a scroller asks for many slices of one)."""

    def __init__(self, size: int = 8):
        self.size = size
        self._items: OrderedDict[Path, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: Path) -> np.ndarray:
        with self._lock:
            if path in self._items:
                self._items.move_to_end(path)
                return self._items[path]
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
        with self._lock:
            self._items[path] = arr
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return arr


_volumes = _VolumeCache()


def _volume_path(inst, series: str) -> Path:
    path = inst.data_dir / "volumes" / f"{series}.npy"
    if not path.is_file():
        raise NotFoundError("This series has no stored volume.", "Ingest the series again.")
    return path


def check_series_access(inst, series: str, principal: Principal) -> str:
    """The series pseudonym when it exists for this principal (one light query: images are asked for often)."""
    from medsearch.store.models import Patient

    check_pseudonym(series, "series")
    with inst.sessions() as s:
        row = s.execute(select(Series.pseudonym, Patient.pseudonym, Study).join(Study, Study.id == Series.study_id)
                        .join(Patient, Patient.id == Study.patient_id)
                        .where(Series.pseudonym == series)).first()
        if row is None or _hidden(inst, row[2], principal, patient=row[1]):
            raise NotFoundError("No series with that identifier.", "Use a pseudonym from a search result.")
    return row[0]


def slice_png(inst, series: str, index: int, window: str, principal: Principal, max_size: int | None = None) -> bytes:
    pseudonym = check_series_access(inst, series, principal)
    if window not in WINDOWS:
        raise InputError(f"Unknown window '{window}'.", f"Use one of: {', '.join(WINDOWS)}.")
    render = capability("medsearch.dicom.render", "render_slice", "slice rendering (issue 4)")
    arr = _volumes.get(_volume_path(inst, pseudonym))
    return render(arr, index, window=window, max_size=max_size)


def thumbnail_png(inst, series: str, principal: Principal) -> bytes:
    pseudonym = check_series_access(inst, series, principal)
    path = inst.data_dir / "thumbs" / f"{pseudonym}.png"
    if path.is_file():
        return path.read_bytes()
    render = capability("medsearch.dicom.render", "render_thumbnail", "slice rendering (issue 4)")
    return render(_volumes.get(_volume_path(inst, pseudonym)))


# --------------------------------------------------------------------------- other areas
def run_search(inst, text: str, k: int, filters: dict, principal: Principal) -> dict:
    fn = capability("medsearch.search", "search", "search pipeline (issue 7)")
    return fn(inst, text, k=k, filters=filters, user=principal)


def run_similar(inst, series: str, k: int, filters: dict, principal: Principal) -> dict:
    # The source series obeys the same rules as a direct look-up: a hidden one does not exist.
    series_detail(inst, series, principal)
    fn = capability("medsearch.search", "similar", "query by example (issue 7)")
    return fn(inst, series, k=k, user=principal, filters=filters)


def parse_query(text: str) -> dict | None:
    try:
        fn = capability("medsearch.query", "parse", "query parsing (issue 5)")
    except NotBuiltError:
        return None
    return fn(text).to_dict()


REVEAL_FIELDS = ("StudyInstanceUID", "AccessionNumber")


def reveal_study(inst, study: str, principal: Principal, reason: str) -> dict:
    """Decrypt the study's original identifiers through the vault (which audits it)."""
    reason = (reason or "").strip()
    if len(reason) < 5 or len(reason) > 500:
        raise InputError("A reason of 5 to 500 characters is required to reveal identifiers.",
                         "Say why you need the original study (e.g. 'compare with prior for tumour board').")
    detail = study_detail(inst, study, principal)
    fn = capability("medsearch.dicom.vault", "reveal", "encrypted vault (issue 4)")
    values = fn(inst, "study", detail["study"], list(REVEAL_FIELDS), principal.name, reason)
    return {"study": detail["study"], "study_uid": values.get("StudyInstanceUID"),
            "accession": values.get("AccessionNumber")}


def ingest_status(inst) -> dict:
    from sqlalchemy import func

    from medsearch.store.models import IngestJob, Quarantine

    with inst.sessions() as s:
        jobs = dict(s.execute(select(IngestJob.status, func.count()).group_by(IngestJob.status)).all())
        vols = dict(s.execute(select(Volume.status, func.count()).group_by(Volume.status)).all())
        last = s.execute(select(func.max(IngestJob.updated_at))).scalar()
        return {"jobs": {k: jobs.get(k, 0) for k in ("queued", "running", "done", "dead")},
                "volumes": {k: vols.get(k, 0) for k in ("stored", "encoded", "failed")},
                "studies": s.execute(select(func.count(Study.id))).scalar_one(),
                "series": s.execute(select(func.count(Series.id))).scalar_one(),
                "quarantined": s.execute(select(func.count(Quarantine.id))).scalar_one(),
                "last_job_update": last.isoformat() if isinstance(last, dt.datetime) else None}


def run_query(inst, text: str | None, k: int, filters: dict, principal: Principal,
              similar_to: str | None = None, upload: list[bytes] | None = None) -> dict:
    """A text search, "more like this" from a series, or from an uploaded series.

    The pipeline records the SearchEvent itself (query, filters, count, study
    pseudonyms), so nothing is tracked here.  An upload is de-identified in
    memory by the pipeline and never stored.
    """
    try:
        if upload is not None:
            fn = capability("medsearch.search", "similar_to_upload", "query by example (issue 7)")
            return fn(inst, upload, k=k, user=principal, filters=filters)
        if similar_to:
            return run_similar(inst, similar_to, k, filters, principal)
        return run_search(inst, text, k, filters, principal)
    except ImportError as exc:  # a module the pipeline needs has not landed yet
        raise NotBuiltError(f"search pipeline dependency {exc.name or ''}".strip()) from None
    except (ModelError, ConfigError) as exc:  # no model installed, or one that does not match the index
        raise Unavailable(exc.problem, exc.fix) from None


class Unavailable(MedsearchError):
    """A service the request needs cannot run in this instance's state (e.g. no model): 503."""

    http_status = 503
    code = "unavailable"


def series_shapes(inst, series: list[str]) -> dict[str, list[int]]:
    """Stored volume shapes (z, y, x) by series pseudonym, to place region outlines."""
    if not series:
        return {}
    with inst.sessions() as s:
        rows = s.execute(select(Series.pseudonym, Volume.shape).join(Volume, Volume.series_id == Series.id)
                         .where(Series.pseudonym.in_(series))).all()
    return {p: list(shape) for p, shape in rows}

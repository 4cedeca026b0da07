"""Business rules and filters of the search pipeline, over database rows.

Rules (always applied, whoever asks):

* studies of patients in the ``restricted_patients`` setting (VIP, staff) never
  appear;
* a user whose account lists ``allowed_sites`` sees only studies from those
  hospital sites; a study with no recorded site is hidden from such a user
  (fail closed).

Filters (asked for by the user): ``modality`` (one or a list), ``date_from`` /
``date_to`` (``YYYY-MM-DD``, inclusive, on the shifted study date) and
``body_part`` (one or a list, case-insensitive).

Two ways to apply them, chosen by the pipeline: :func:`passes` on the few
hundred ANN candidates (cheap), or :func:`allowed_vector_ids` to pre-filter the
index when the filters are selective.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
from sqlalchemy import and_, func, select

from medsearch.errors import InputError
from medsearch.store.models import Finding, Patient, Series, Study, Volume

FILTER_KEYS = ("modality", "date_from", "date_to", "body_part")


def _as_list(value, key: str) -> list[str]:
    if isinstance(value, str):
        value = [v for v in (p.strip() for p in value.split(",")) if v]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
        raise InputError(f"The filter '{key}' must be a string or a list of strings.",
                         f"Pass e.g. {key}=CT or {key}=CT,MR.")
    return [v.upper() for v in value]


def _as_date(value, key: str) -> str:
    try:
        return dt.date.fromisoformat(str(value)).isoformat()
    except ValueError:
        raise InputError(f"The filter '{key}' is not a date.", "Use the form YYYY-MM-DD, e.g. 2024-01-31.") from None


def normalise_filters(filters: dict | None) -> dict:
    """Validate filters; returns a canonical dict (lists upper-cased, ISO dates), empty values dropped."""
    out: dict = {}
    for key, value in (filters or {}).items():
        if key not in FILTER_KEYS:
            raise InputError(f"Unknown search filter '{key}'.", f"Use one of: {', '.join(FILTER_KEYS)}.")
        if value in (None, "", [], ()):
            continue
        out[key] = _as_date(value, key) if key.startswith("date_") else _as_list(value, key)
    if "date_from" in out and "date_to" in out and out["date_from"] > out["date_to"]:
        raise InputError("The filter date_from is after date_to.", "Swap the two dates.")
    return out


def user_sites(user) -> tuple[str, ...] | None:
    """The hospital sites a user may see (None: all).  Accepts a Principal, a User row or None."""
    sites = getattr(user, "allowed_sites", None)
    return None if sites is None else tuple(sites)


# --------------------------------------------------------------------------- candidate rows
_COLUMNS = (Volume.vector_id, Volume.id, Series.pseudonym, Study.pseudonym, Patient.pseudonym, Study.study_date,
            Series.modality, Study.modality, Series.body_part, Study.body_part, Study.site, Volume.shape)
_NAMES = ("vector_id", "volume_id", "series", "study", "patient", "study_date", "series_modality",
          "study_modality", "series_body_part", "study_body_part", "site", "shape")


def _joined(stmt):
    return (stmt.join(Series, Series.id == Volume.series_id).join(Study, Study.id == Series.study_id)
            .join(Patient, Patient.id == Study.patient_id))


#: Predicted findings below this probability are not fetched: they can neither match nor exclude.
MIN_FINDING_PROBABILITY = 0.3


def candidate_rows(session, vector_ids) -> dict[int, dict]:
    """Metadata and predicted findings of the series behind ``vector_ids``.

    Findings come without ``key_slice``/``bbox`` (JSON decoding of thousands of boxes per query was the
    slowest step); :func:`finding_locations` fetches them for the few results shown.

    Returns:
        {vector_id: {"series", "study", "patient", "study_date", "modality", "body_part", "site",
        "shape", "findings": [finding dicts with "id"]}}; ids with no row (a stale index entry) are absent.
    """
    ids = [int(i) for i in vector_ids if int(i) >= 0]
    rows: dict[int, dict] = {}
    by_volume: dict[int, dict] = {}
    for start in range(0, len(ids), 900):  # stay below every backend's bound-parameter limit
        chunk = ids[start:start + 900]
        for rec in session.execute(_joined(select(*_COLUMNS)).where(Volume.vector_id.in_(chunk))):
            r = dict(zip(_NAMES, rec))
            r["modality"] = r.pop("series_modality") or r.pop("study_modality")
            r.pop("study_modality", None)
            r["body_part"] = r.pop("series_body_part") or r.pop("study_body_part")
            r.pop("study_body_part", None)
            r["findings"] = []
            rows[r["vector_id"]] = r
            by_volume[r["volume_id"]] = r
    vids = list(by_volume)
    for start in range(0, len(vids), 900):
        chunk = vids[start:start + 900]
        stmt = select(Finding.id, Finding.volume_id, Finding.finding_type, Finding.site, Finding.laterality,
                      Finding.density, Finding.size_mm, Finding.probability
                      ).where(Finding.volume_id.in_(chunk), Finding.probability >= MIN_FINDING_PROBABILITY)
        for fid, vol_id, ftype, site, lat, dens, size, prob in session.execute(stmt):
            by_volume[vol_id]["findings"].append(
                {"id": fid, "finding_type": ftype, "site": site, "laterality": lat, "density": dens,
                 "size_mm": size, "probability": prob})
    return rows


def finding_locations(session, finding_ids) -> dict[int, tuple]:
    """{finding id: (key_slice, bbox)} of the findings that have a predicted location."""
    ids = [int(i) for i in finding_ids]
    if not ids:
        return {}
    stmt = select(Finding.id, Finding.key_slice, Finding.bbox).where(Finding.id.in_(ids),
                                                                     Finding.key_slice.is_not(None))
    return {fid: (ks, bbox) for fid, ks, bbox in session.execute(stmt)}


# --------------------------------------------------------------------------- rules on rows
def passes(row: dict, filters: dict, restricted: frozenset[str], sites: tuple[str, ...] | None) -> bool:
    """True when a candidate row survives the business rules and the filters."""
    if row["patient"] in restricted:
        return False
    if sites is not None and row.get("site") not in sites:
        return False
    if "modality" in filters and (row.get("modality") or "").upper() not in filters["modality"]:
        return False
    if "body_part" in filters and (row.get("body_part") or "").upper() not in filters["body_part"]:
        return False
    date = row.get("study_date")
    iso = date.isoformat() if date is not None else None
    if "date_from" in filters and (iso is None or iso < filters["date_from"]):
        return False
    if "date_to" in filters and (iso is None or iso > filters["date_to"]):
        return False
    return True


def allowed_vector_ids(session, filters: dict, restricted: frozenset[str],
                       sites: tuple[str, ...] | None) -> np.ndarray:
    """Every vector id that survives the rules and filters (for a pre-filtered index search)."""
    conds = [Volume.vector_id.is_not(None)]
    if restricted:
        conds.append(Patient.pseudonym.not_in(sorted(restricted)))
    if sites is not None:
        conds.append(Study.site.in_(sites))
    if "modality" in filters:
        conds.append(func.upper(func.coalesce(Series.modality, Study.modality)).in_(filters["modality"]))
    if "body_part" in filters:
        conds.append(func.upper(func.coalesce(Series.body_part, Study.body_part)).in_(filters["body_part"]))
    if "date_from" in filters:
        conds.append(Study.study_date >= dt.date.fromisoformat(filters["date_from"]))
    if "date_to" in filters:
        conds.append(Study.study_date <= dt.date.fromisoformat(filters["date_to"]))
    ids = session.execute(_joined(select(Volume.vector_id)).where(and_(*conds))).scalars().all()
    return np.asarray(sorted(ids), dtype=np.int64)

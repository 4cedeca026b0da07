"""Vector ids <-> Volume / Series / Study rows.

The convention is ``volumes.vector_id == volumes.id``: stable across rebuilds,
unique, and known as soon as the Volume row is flushed.  Search uses
:func:`vector_ids_where` to turn filters into an allowed-id set and
:func:`series_refs` to turn result ids into pseudonyms.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
from sqlalchemy import select

IN_CHUNK = 900


@dataclass(frozen=True)
class SeriesRef:
    vector_id: int
    volume_id: int
    series: str  # series pseudonym
    study: str  # study pseudonym
    patient: str  # patient pseudonym
    modality: str | None
    body_part: str | None
    study_date: dt.date | None


def _joined():
    from medsearch.store.models import Patient, Series, Study, Volume

    return (select(Volume.vector_id, Volume.id, Series.pseudonym, Study.pseudonym, Patient.pseudonym,
                   Series.modality, Study.body_part, Study.study_date)
            .join(Series, Volume.series_id == Series.id)
            .join(Study, Series.study_id == Study.id)
            .join(Patient, Study.patient_id == Patient.id))


def series_refs(inst, vector_ids) -> dict[int, SeriesRef]:
    """The rows behind ``vector_ids``; ids the database no longer lists are absent (never an error)."""
    from medsearch.store.models import Volume

    ids = [int(i) for i in np.unique(np.asarray(vector_ids, dtype=np.int64)) if i >= 0]
    out: dict[int, SeriesRef] = {}
    with inst.sessions() as s:
        for start in range(0, len(ids), IN_CHUNK):
            query = _joined().where(Volume.vector_id.in_(ids[start:start + IN_CHUNK]))
            for row in s.execute(query):
                out[row[0]] = SeriesRef(*row)
    return out


def vector_ids_where(inst, *clauses) -> np.ndarray:
    """Sorted vector ids of encoded volumes whose Volume/Series/Study/Patient rows satisfy ``clauses``.

    Example: ``vector_ids_where(inst, Series.modality == "CT", Study.study_date >= start)``.
    """
    from medsearch.store.models import Volume

    query = _joined().with_only_columns(Volume.vector_id).where(Volume.vector_id.is_not(None), *clauses)
    with inst.sessions() as s:
        return np.sort(np.fromiter(s.scalars(query), dtype=np.int64))

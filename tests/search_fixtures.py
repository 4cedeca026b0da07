"""Helpers that put studies, series, encoded volumes and predicted findings into an instance.

Rows go through the real store and the real index (``medsearch.index.sync``);
the embeddings are chosen by the test so that rankings are predictable.
"""

from __future__ import annotations

import datetime as dt

import numpy as np

from medsearch.store.models import Finding, Patient, Series, Study, Volume

DIM = 16


def unit(*hot: float, dim: int = DIM, seed: int = 0) -> np.ndarray:
    """A unit vector mostly along the first axes (weights ``hot``), with a little seeded noise."""
    v = np.random.default_rng(seed).normal(scale=0.01, size=dim).astype(np.float32)
    v[:len(hot)] += np.asarray(hot, dtype=np.float32)
    return v / np.linalg.norm(v)


def add_series(inst, patient: str, study: str, series: str, vector: np.ndarray, findings=(), *,
               study_date=dt.date(2024, 1, 10), modality="CT", body_part="CHEST", site="north",
               shape=(40, 64, 64)) -> int:
    """Add one encoded series (creating the patient and study when new); returns its vector id."""
    with inst.sessions() as s, s.begin():
        p = s.query(Patient).filter_by(pseudonym=patient).one_or_none()
        if p is None:
            p = Patient(pseudonym=patient)
            s.add(p)
            s.flush()
        st = s.query(Study).filter_by(pseudonym=study).one_or_none()
        if st is None:
            st = Study(pseudonym=study, patient_id=p.id, uid=f"2.25.{abs(hash(study)) % 10**20}",
                       study_date=study_date, modality=modality, body_part=body_part, site=site)
            s.add(st)
            s.flush()
        se = Series(pseudonym=series, study_id=st.id, uid=f"2.25.{abs(hash(series)) % 10**20}", modality=modality,
                    body_part=body_part, n_instances=shape[0])
        s.add(se)
        s.flush()
        vol = Volume(series_id=se.id, path=f"volumes/{series}.npy", shape=list(shape), spacing=[1.25, 0.7, 0.7],
                     sha256="0" * 64, status="encoded", embedding=np.asarray(vector, np.float32).tobytes())
        s.add(vol)
        s.flush()
        vol.vector_id = vol.id
        for f in findings:
            s.add(Finding(volume_id=vol.id, **f))
        vid = vol.id
    from medsearch.index import sync

    sync(inst)
    return vid


def finding(ftype, site=None, laterality=None, density=None, size_mm=None, probability=0.9, key_slice=None,
            bbox=None) -> dict:
    return {"finding_type": ftype, "site": site, "laterality": laterality, "density": density, "size_mm": size_mm,
            "probability": probability, "key_slice": key_slice, "bbox": bbox}


def parse_dict(*findings) -> dict:
    return {"findings": list(findings), "canonical": "", "unmatched": []}


def pf(concept, site=None, laterality=None, size=None, density=None, negated=False) -> dict:
    return {"concept": {"id": concept, "term": concept}, "site": {"id": site, "term": site} if site else None,
            "laterality": laterality, "size_mm": size, "density": density, "shape": None, "count": None,
            "change": None, "negated": negated}

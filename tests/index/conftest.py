"""Helpers for the index tests: embedding-like vectors and a populated instance."""

from __future__ import annotations

import datetime as dt
import os

import numpy as np
import pytest


def clustered(n: int, dim: int, clusters: int = 64, spread: float = 0.35, seed: int = 0) -> np.ndarray:
    """L2-normalised vectors drawn around ``clusters`` centres, like embeddings of similar studies."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + spread * rng.normal(size=(n, dim))
    x = x.astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def populate(inst, n_patients: int = 3, series_per_study: int = 2, dim: int = 16, seed: int = 0,
             encode: bool = True) -> dict:
    """Patients -> one study -> series -> volumes with embeddings, vault records and data files.

    Returns {patient pseudonym: {"studies": [...], "series": [...], "vector_ids": [...]}}.
    vector_id == volumes.id (the convention of medsearch.index.mapping).
    """
    from medsearch.store.models import Patient, Series, Study, VaultRecord, Volume

    rng = np.random.default_rng(seed)
    out: dict = {}
    (inst.data_dir / "volumes").mkdir(parents=True, exist_ok=True)
    (inst.data_dir / "thumbs").mkdir(parents=True, exist_ok=True)
    with inst.sessions() as s, s.begin():
        for p in range(n_patients):
            pp = f"PAT{seed}x{p}"
            patient = Patient(pseudonym=pp)
            study = Study(pseudonym=f"STU{seed}x{p}", uid=f"2.25.{seed}{p}1", patient=patient,
                          study_date=dt.date(2020, 1, 1 + p), modality="CT", body_part="CHEST")
            s.add(patient)
            entry = {"studies": [study.pseudonym], "series": [], "volumes": []}
            vault = [("patient", pp), ("study", study.pseudonym)]
            for r in range(series_per_study):
                sp = f"SER{seed}x{p}x{r}"
                series = Series(pseudonym=sp, uid=f"2.25.{seed}{p}2{r}", study=study, modality="CT")
                vec = rng.normal(size=dim).astype(np.float32)
                vec /= np.linalg.norm(vec)
                series.volume = Volume(path=f"volumes/{sp}.npy", shape=[2, 2, 2], spacing=[1, 1, 1], sha256="0" * 64,
                                       status="encoded" if encode else "stored",
                                       embedding=vec.tobytes() if encode else None)
                s.add(series)
                entry["series"].append(sp)
                entry["volumes"].append(series.volume)
                vault.append(("series", sp))
                np.save(inst.data_dir / "volumes" / f"{sp}.npy", np.zeros((2, 2, 2), np.int16))
                (inst.data_dir / "thumbs" / f"{sp}.png").write_bytes(b"\x89PNG fake thumbnail")
            for kind, owner in vault:
                s.add(VaultRecord(owner_kind=kind, owner_pseudonym=owner, field="PatientID", key_id="k",
                                  wrapped_key=os.urandom(40), nonce=os.urandom(12), ciphertext=os.urandom(24)))
            out[pp] = entry
        s.flush()
        for entry in out.values():
            for v in entry["volumes"]:
                if encode:
                    v.vector_id = v.id
            entry["vector_ids"] = [v.id for v in entry["volumes"]] if encode else []
            del entry["volumes"]
    return out


@pytest.fixture
def clustered_vectors():
    return clustered


@pytest.fixture
def populate_instance():
    return populate

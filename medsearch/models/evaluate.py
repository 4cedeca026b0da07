"""Retrieval evaluation: ``medsearch eval`` and the benchmark.

Protocol (a), report -> volume (CT-CLIP's): each study's report, in English and
separately in Chinese, normalised by the terminology, is the query; R@1/5/10/50
of that study in the pool, where studies with identical finding sets count as
the same answer.

Protocol (b), phrase -> volumes (the radiologist's): short queries generated
from the labels (a finding alone; with site; with site and density; with size)
in both languages, graded relevance from the labels (2: a finding matches the
whole query, 1: same finding type only); P@10, mAP and nDCG@10.

Volumes are encoded by the model from pixels only; labels serve solely to
build queries and judge answers.  Every number has its chance level beside it.
"""

from __future__ import annotations

import json
import logging
import random
import tempfile
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from medsearch.models import phrases
from medsearch.models.data import GRANULARITIES, Study
from medsearch.models.metrics import ranking_chance, ranking_metrics, recall_at_k, recall_chance
from medsearch.models.preprocess import hu_windows

log = logging.getLogger(__name__)
#: Synthetic-archive seeds reserved for evaluation and benchmarks; training must never use them.
EVAL_SEEDS = range(9000, 10000)
#: Seeds the shipped model's training archives are drawn from.
TRAIN_SEEDS = range(1000, 2000)
#: The benchmark's held-out pool (bench/bench_model.py).
BENCH_EVAL_SEED = 9001
RECALL_KS = (1, 5, 10, 50)
#: Protocol (b) uses at most this many distinct queries (sampled with a fixed seed).
MAX_PHRASE_QUERIES = 300


def check_seed_disjoint(train_seeds, eval_seeds=EVAL_SEEDS) -> None:
    from medsearch.errors import InputError

    overlap = sorted(set(train_seeds) & set(eval_seeds))
    if overlap:
        raise InputError(f"Training seeds {overlap[:5]} are reserved for evaluation.",
                         f"Generate training archives with seeds in {TRAIN_SEEDS.start}..{TRAIN_SEEDS.stop - 1}.")


@torch.no_grad()
def encode_studies(encoder, studies: list[Study], batch: int = 8, progress: bool = False) -> np.ndarray:
    """Image embeddings (N, D) of canonical volumes, through the model's image side."""
    out = []
    windows = encoder.config.get("windows_hu") or None  # the model's own input channels (ctseg has five)
    for i in tqdm(range(0, len(studies), batch), desc="encode", disable=not progress):
        x = torch.stack([hu_windows(torch.from_numpy(s.hu.astype(np.float32)), *([windows] if windows else []))
                         for s in studies[i:i + batch]])
        nodules = [s.nodules for s in studies[i:i + batch]]
        out.append(encoder.encode_image_tensor(x, nodules if any(n is not None for n in nodules) else None)
                   ["embedding"].numpy())
    return np.concatenate(out).astype(np.float32)


def phrase_specs(studies: list[Study], seed: int = 0) -> list[dict]:
    """Distinct protocol-(b) query specs from the pool's labels (up to MAX_PHRASE_QUERIES)."""
    specs = {}
    for s in studies:
        for f in s.findings:
            for fields in GRANULARITIES:
                spec = phrases.spec_of(f, fields)
                if fields and len(spec) == 1:
                    continue  # the granularity does not apply (no site/density/size)
                specs[json.dumps(spec, sort_keys=True)] = spec
    keys = sorted(specs)
    random.Random(seed).shuffle(keys)
    return [specs[k] for k in keys[:MAX_PHRASE_QUERIES]]


def _rounded(d: dict) -> dict:
    return {k: round(v, 4) for k, v in d.items()}


def evaluate_embeddings(encoder, studies: list[Study], image: np.ndarray, seed: int = 0) -> dict:
    """Both protocols, given the pool's image embeddings (N, D) in ``studies`` order."""
    img = torch.from_numpy(image)
    keys = [phrases.study_key(s.findings) for s in studies]
    same = torch.tensor([[a == b for b in keys] for a in keys])
    result: dict = {"pool": len(studies), "report_to_volume": {}, "phrase_to_volume": {},
                    "chance": {"report_to_volume": {f"R@{k}": round(recall_chance(same, k), 4) for k in RECALL_KS}}}
    for lang in ("en", "zh"):
        texts = [phrases.normalise(getattr(s, f"report_{lang}")) for s in studies]
        sim = torch.from_numpy(encoder.encode_texts(texts)) @ img.T
        result["report_to_volume"][lang] = {f"R@{k}": round(recall_at_k(sim, same, k), 4) for k in RECALL_KS}
    specs = phrase_specs(studies, seed)
    if specs:
        rel = torch.tensor([[phrases.relevance(s.findings, spec) for s in studies] for spec in specs])
        result["chance"]["phrase_to_volume"] = _rounded(ranking_chance(rel))
        for lang in ("en", "zh"):
            texts = [phrases.normalise(phrases.spec_text(spec, lang)) for spec in specs]
            sim = torch.from_numpy(encoder.encode_texts(texts)) @ img.T
            result["phrase_to_volume"][lang] = _rounded(ranking_metrics(sim, rel))
    result["phrase_queries"] = len(specs)
    return result


def _ingest_embeddings(archive: Path, records: list[dict], model_dir: Path, int8: bool,
                       progress: bool) -> np.ndarray:
    """Ingest the archive into a temporary instance (real de-identification and encoding) and
    read back each labelled study's main-series embedding, matched by its keyed pseudonym."""
    from sqlalchemy import select

    from medsearch.dicom.ingest import ingest_paths
    from medsearch.dicom.pseudonym import pseudonym
    from medsearch.errors import InputError
    from medsearch.instance import Instance
    from medsearch.store.models import Series, Volume

    with tempfile.TemporaryDirectory(prefix="medsearch-eval-") as tmp:
        settings = {"model_dir": str(Path(model_dir).resolve()), "model_int8": bool(int8)}
        inst = Instance.create(Path(tmp) / "instance", settings=settings)
        try:
            ingest_paths(inst, [archive / "dicom"], source="cli", progress=progress)
            secret = inst.keyring.secret("pseudonym")
            rows = []
            with inst.sessions() as session:
                for rec in records:
                    key = pseudonym(secret, "series", rec["main_series_uid"])
                    vol = session.scalar(select(Volume).join(Series).where(Series.pseudonym == key))
                    if vol is None or vol.embedding is None:
                        raise InputError("A study of the archive was not ingested and encoded.",
                                         "Run 'medsearch ingest' on the archive to see why, then evaluate again.")
                    rows.append(np.frombuffer(vol.embedding, dtype=np.float32).copy())
        finally:
            inst.close()
    return np.stack(rows)


def evaluate_archive(archive: Path, model_dir: Path | None = None, via_ingest: bool = True,
                     progress: bool = True, seed: int = 0, int8: bool | None = None) -> dict:
    """Evaluate a model on a synthetic archive (labels.jsonl + DICOM).

    Args:
        via_ingest: encode through a temporary instance's ingest (de-identification, storage,
            encoding), as in production; False encodes the archive's volumes directly.
        int8: run the towers in INT8; None follows the ``model_int8`` setting's default.
    """
    from medsearch.errors import InputError
    from medsearch.models.data import load_archive
    from medsearch.models.registry import DEFAULT_MODEL_DIR, load_encoder

    archive = Path(archive)
    if not (archive / "labels.jsonl").exists():
        raise InputError("The evaluation archive has no labels.jsonl.",
                         "Evaluate on a synthetic archive: 'medsearch synth OUT --studies N --seed S' "
                         f"with S in {EVAL_SEEDS.start}..{EVAL_SEEDS.stop - 1}.")
    if int8 is None:
        from medsearch.settings import BY_NAME

        int8 = bool(BY_NAME["model_int8"].default)
    model_dir = Path(model_dir) if model_dir else DEFAULT_MODEL_DIR
    encoder = load_encoder(model_dir, int8=int8)
    records = [json.loads(x) for x in (archive / "labels.jsonl").read_text(encoding="utf-8").splitlines() if x]
    # the tower's training studies, and those later stages were fitted on ('medsearch fit-region-merge')
    train_keys = set(encoder.config.get("train_study_keys", [])) | set(encoder.config.get("fit_study_keys", []))
    if via_ingest:
        from medsearch.models.data import _study_key, scrub_report

        image = _ingest_embeddings(archive, records, model_dir, int8, progress)
        studies = [Study(_study_key(r["study_uid"]), np.zeros((1, 1, 1), np.int16),
                         [{k: f.get(k) for k in ("type", "site", "laterality", "density", "diameter_mm")}
                          for f in r["findings"]], scrub_report(r["report_en"]), scrub_report(r["report_zh"]))
                   for r in records]
    else:
        studies = load_archive(archive, progress=progress, spacing_mm=encoder.config["canonical_spacing_mm"],
                               shape=encoder.config["canonical_shape"])
        image = encode_studies(encoder, studies, progress=progress)
    overlap = sum(s.key in train_keys for s in studies)
    if overlap:
        raise InputError(f"{overlap} studies of the evaluation archive were used in training.",
                         "Evaluate on an archive generated with an evaluation seed (9000-9999).")
    result = evaluate_embeddings(encoder, studies, image, seed)
    result["model_version"] = encoder.model_version
    result["int8"] = int8
    return result


def format_table(result: dict) -> str:
    """A short table: each metric with its chance level."""
    lines = [f"pool {result['pool']} studies, {result.get('phrase_queries', 0)} phrase queries"]
    chance = result["chance"]
    for proto in ("report_to_volume", "phrase_to_volume"):
        for lang, metrics in result[proto].items():
            cells = [f"{k} {v:.3f} (chance {chance[proto][k]:.3f})" for k, v in metrics.items()]
            lines.append(f"{proto:17s} {lang}: " + ", ".join(cells))
    return "\n".join(lines)

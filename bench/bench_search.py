"""End-to-end search: single-query latency at 100k series, and quality of the hybrid pipeline vs the dual tower.

1. A synthetic archive (``--studies``, generated once under bench/.cache/) is
   ingested into a fresh instance through the real de-identification, encoding
   (the shipped model) and index.
2. **Quality** (before tiling) on that pool: protocol (a) report -> volume and
   (b) phrase -> volumes, English and Chinese, for the dual tower alone (ANN on
   the text embedding) and for the hybrid pipeline (attributes, reranker,
   rules); plus key-slice localisation against the labels' slice ranges.
3. **Latency**: the real series (embeddings, predicted findings, spatial maps)
   are tiled to ``--series`` rows in the database and the index, then every
   query runs through ``medsearch.search.search`` (parse, encode, ANN, rerank,
   attribute match, rules, aggregation, audit) with the cache off.  Baseline in
   the same run: the dual tower alone (parse, encode, ANN top-10).
   Target: p50 <= 50 ms and p99 <= 150 ms at 100k series on 2 cores.

    .venv/bin/python bench/bench_search.py [--series 100000] [--studies 40] [--queries 200]

Writes bench/results/search.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "search.json"
CACHE = ROOT / ".cache"
TARGET_P50_MS, TARGET_P99_MS = 50.0, 150.0


def archive(studies: int, seed: int) -> Path:
    out = CACHE / f"synth-{studies}-{seed}"
    if not (out / "labels.jsonl").exists():
        from medsearch.synth.archive import generate_archive

        shutil.rmtree(out, ignore_errors=True)
        generate_archive(out, studies, seed)
    return out


def ingest(inst, arch: Path) -> None:
    from medsearch.dicom.ingest import ingest_paths

    report = ingest_paths(inst, [arch / "dicom"], progress=True)
    print("ingest:", report.counts())


def tile(inst, n_series: int, seed: int = 0) -> int:
    """Copy the encoded series (rows, findings, spatial maps) until the archive holds ``n_series`` series."""
    import datetime as dt

    from sqlalchemy import insert, select

    from medsearch.models.spatial_store import spatial_path
    from medsearch.store.models import Finding, Patient, Series, Study, Volume

    rng = np.random.default_rng(seed)
    with inst.sessions() as s:
        base = s.execute(select(Volume.id, Volume.embedding, Volume.shape, Volume.spacing, Series.pseudonym,
                                Study.study_date, Study.modality, Study.body_part, Study.site)
                         .join(Series, Series.id == Volume.series_id).join(Study, Study.id == Series.study_id)
                         .where(Volume.vector_id.is_not(None))).all()
        findings = {}
        for f in s.scalars(select(Finding)):
            findings.setdefault(f.volume_id, []).append(
                {k: getattr(f, k) for k in ("finding_type", "site", "laterality", "density", "size_mm", "probability",
                                            "key_slice", "bbox")})
        n0 = s.scalar(select(Volume.id).order_by(Volume.id.desc()).limit(1)) or 0
    need = n_series - len(base)
    if need <= 0:
        return len(base)
    dim = len(base[0].embedding) // 4
    batch = 5000
    next_id = n0 + 1
    with inst.engine.begin() as conn:
        for start in tqdm(range(0, need, batch), desc="tile", unit="k series", unit_scale=batch / 1000):
            m = min(batch, need - start)
            src = [base[i] for i in rng.integers(0, len(base), m)]
            pats, studs, sers, vols, finds = [], [], [], [], []
            for j, b in enumerate(src):
                i = next_id + j
                emb = np.frombuffer(b.embedding, np.float32) + rng.normal(scale=0.02, size=dim).astype(np.float32)
                emb /= np.linalg.norm(emb)
                pats.append({"id": i, "pseudonym": f"TP{i}", "created_at": dt.datetime.now(dt.timezone.utc)})
                studs.append({"id": i, "pseudonym": f"TS{i}", "patient_id": i, "uid": f"2.25.9{i}",
                              "study_date": b.study_date, "modality": b.modality, "body_part": b.body_part,
                              "site": b.site, "created_at": dt.datetime.now(dt.timezone.utc)})
                sers.append({"id": i, "pseudonym": f"TE{i}", "study_id": i, "uid": f"2.25.8{i}", "modality": "CT",
                             "body_part": b.body_part, "n_instances": 0,
                             "created_at": dt.datetime.now(dt.timezone.utc)})
                vols.append({"id": i, "series_id": i, "path": "tiled", "shape": b.shape, "spacing": b.spacing,
                             "sha256": "0" * 64, "status": "encoded", "vector_id": i, "embedding": emb.tobytes(),
                             "model_version": "tiled", "created_at": dt.datetime.now(dt.timezone.utc)})
                finds += [{**f, "volume_id": i} for f in findings.get(b.id, [])]
                src_map = spatial_path(inst, b.pseudonym)
                if src_map.exists():
                    dst = spatial_path(inst, f"TE{i}")
                    if not dst.exists():
                        os.link(src_map, dst)  # a hard link: the same map, no extra disk
            conn.execute(insert(Patient), pats)
            conn.execute(insert(Study), studs)
            conn.execute(insert(Series), sers)
            conn.execute(insert(Volume), vols)
            if finds:
                conn.execute(insert(Finding), finds)
            next_id += m
    from medsearch.index import forget_index, rebuild

    rebuild(inst, progress=True)
    forget_index(inst)
    return n_series


def queries(labs: list[dict], n: int, seed: int = 0) -> list[str]:
    import random

    from medsearch.models.data import GRANULARITIES
    from medsearch.models import phrases

    rng = random.Random(seed)
    out = ["nodule", "结节", "no pleural effusion", "无胸腔积液", "LLL GGN 2cm", "左肺下叶2cm磨玻璃结节", "右下肺实变",
           "sub-centimeter nodule", "pneumothorax", "emphysema in both lungs"]
    findings = [f for lab in labs for f in lab["findings"]]
    while len(out) < n and findings:
        spec = phrases.spec_of(rng.choice(findings), rng.choice(GRANULARITIES))
        out.append(phrases.spec_text(spec, rng.choice(("en", "zh"))))
    return out[:n]


def pct(values, q) -> float:
    return float(np.percentile(np.asarray(values), q))


def latency(inst, texts: list[str]) -> dict:
    from medsearch import search as S

    for t in texts[:5]:  # warm-up: model loading, first index touch
        S.search(inst, t)
    full, dual, stages = [], [], {"parse": [], "encode": [], "ann": []}
    index = S._index(inst)
    encoder = S._encoder(inst)
    for t in tqdm(texts, desc="queries"):
        t0 = time.perf_counter()
        S.search(inst, t, k=10)
        full.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        parsed = S._parse(t)
        t1 = time.perf_counter()
        vec = encoder.encode_text(parsed.canonical or t)
        t2 = time.perf_counter()
        index.search(np.asarray(vec, np.float32)[None], 10)
        t3 = time.perf_counter()
        dual.append((t3 - t0) * 1000)
        for name, a, b in (("parse", t0, t1), ("encode", t1, t2), ("ann", t2, t3)):
            stages[name].append((b - a) * 1000)
    return {"queries": len(texts),
            "hybrid_ms": {"p50": pct(full, 50), "p99": pct(full, 99), "mean": statistics.fmean(full)},
            "dual_tower_ms": {"p50": pct(dual, 50), "p99": pct(dual, 99)},
            "stage_p50_ms": {k: pct(v, 50) for k, v in stages.items()},
            "ratio_p50_hybrid_to_dual": pct(full, 50) / max(pct(dual, 50), 1e-9)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--series", type=int, default=100_000)
    ap.add_argument("--studies", type=int, default=40)
    ap.add_argument("--seed", type=int, default=70_001)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--quality-queries", type=int, default=60, help="phrase queries per language for quality")
    ap.add_argument("--keep", type=Path, default=None, help="keep the instance in this folder")
    ap.add_argument("--model", type=Path, default=None, help="model folder (default: the shipped model)")
    ap.add_argument("--skip-quality", action="store_true", help="latency only")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from medsearch.instance import Instance
    from medsearch.search_eval import localisation, map_labels, quality, read_labels

    arch = archive(args.studies, args.seed)
    home = args.keep or Path(tempfile.mkdtemp(prefix="bench-search-"))
    settings = {"search_cache_size": 0}
    if args.model:
        settings["model_dir"] = str(args.model.resolve())
    reuse = (home / "config.toml").exists()  # --keep of an earlier run: already ingested, not yet tiled
    inst = Instance.create(home, settings=settings)
    try:
        if not reuse:
            ingest(inst, arch)
        labs = map_labels(inst, read_labels(arch))
        t0 = time.perf_counter()
        if args.skip_quality:
            qual, loc = {"pool": len(labs), "phrase_to_volume": {}, "report_to_volume": {}}, {
                "relevant_hits": 0, "key_slice_within": 0, "rate": None}
        else:
            qual = quality(inst, labs, max_queries=args.quality_queries)
            loc = localisation(inst, labs, max_queries=args.quality_queries)
        qual_s = time.perf_counter() - t0
        n = tile(inst, args.series)
        lat = latency(inst, queries(labs, args.queries))
        result = {"cores": os.cpu_count(), "series": n, "pool_studies": len(labs), "latency": lat,
                  "quality": qual, "localisation": loc, "quality_seconds": round(qual_s, 1),
                  "targets": {"p50_ms": TARGET_P50_MS, "p99_ms": TARGET_P99_MS, "key_slice_within": 0.9},
                  "meets": {"p50": lat["hybrid_ms"]["p50"] <= TARGET_P50_MS,
                            "p99": lat["hybrid_ms"]["p99"] <= TARGET_P99_MS,
                            "localisation": (loc["rate"] or 0) >= 0.9}}
    finally:
        inst.close()
        if args.keep is None:
            shutil.rmtree(home, ignore_errors=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    h, d = lat["hybrid_ms"], lat["dual_tower_ms"]
    print(f"\nsearch latency at {n} series ({os.cpu_count()} cores, {lat['queries']} queries)")
    print(f"  {'pipeline':<22}{'p50 ms':>10}{'p99 ms':>10}")
    print(f"  {'hybrid (full)':<22}{h['p50']:>10.1f}{h['p99']:>10.1f}   target {TARGET_P50_MS:.0f}/{TARGET_P99_MS:.0f}")
    print(f"  {'dual tower (baseline)':<22}{d['p50']:>10.1f}{d['p99']:>10.1f}   ratio {lat['ratio_p50_hybrid_to_dual']:.1f}x")
    print(f"quality on a pool of {qual['pool']} studies (dual -> hybrid)")
    for lang, res in qual["phrase_to_volume"].items():
        print(f"  phrase {lang} nDCG@10 {res['dual']['nDCG@10']:.3f} -> {res['hybrid']['nDCG@10']:.3f}   "
              f"P@10 {res['dual']['P@10']:.3f} -> {res['hybrid']['P@10']:.3f}")
    for lang, res in qual["report_to_volume"].items():
        print(f"  report {lang} R@10 {res['dual']['R@10']:.3f} -> {res['hybrid']['R@10']:.3f}")
    print(f"key slice within the finding's slices: {loc['key_slice_within']}/{loc['relevant_hits']}"
          f" = {loc['rate'] if loc['rate'] is None else round(loc['rate'], 3)} (target 0.9; middle-slice "
          f"baseline {loc.get('middle_slice_baseline')})")
    if loc.get("misses_by_type"):
        print("  misses by the query's finding type: "
              + ", ".join(f"{t} {n}" for t, n in loc["misses_by_type"].items()))
    if loc.get("by_source"):
        print("  within / hits by what located the key slice: "
              + ", ".join(f"{k} {v['within']}/{v['hits']}" for k, v in loc["by_source"].items()))
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Search quality against ground truth: the hybrid pipeline vs the dual tower alone, and key slices.

Used by ``bench/bench_search.py`` and the end-to-end tests.  Ground truth is a
synthetic archive's ``labels.jsonl``; its original UIDs are mapped to the
instance's pseudonyms with the instance's keyed pseudonym function (the same
HMAC ingest uses), so no identifier is decrypted or stored.

* Protocol (a), report -> volume: each study's report (English, Chinese) is the
  query; R@1/5/10 of that study (studies with identical finding sets count).
* Protocol (b), phrase -> volumes: short phrases from the labels (a finding
  alone; with site; with site and density; with size), graded relevance;
  P@10, mAP, nDCG@10.
* Localisation: among relevant top-10 hits on a study's main series, the share
  whose key slice lies within a matching finding's ``slice_range``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from medsearch import search as S
from medsearch.models import phrases
from medsearch.models.metrics import ranking_metrics, recall_at_k


def read_labels(archive: Path) -> list[dict]:
    with open(Path(archive) / "labels.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def map_labels(inst, labels: list[dict]) -> list[dict]:
    """Labels of the studies present in ``inst``, each with ``_study`` and ``_main_series`` pseudonyms."""
    from sqlalchemy import select

    from medsearch.dicom.pseudonym import pseudonym
    from medsearch.store.models import Study

    secret = inst.keyring.secret("pseudonym")
    with inst.sessions() as s:
        present = set(s.scalars(select(Study.pseudonym)))
    out = []
    for lab in labels:
        study = pseudonym(secret, "study", lab["study_uid"])
        if study in present:
            out.append({**lab, "_study": study, "_main_series": pseudonym(secret, "series", lab["main_series_uid"])})
    return out


def dual_ranking(inst, text: str, n: int) -> list[str]:
    """Studies ranked by the dual tower alone: canonical phrase -> text embedding -> ANN, best series per study."""
    from medsearch.search_rules import candidate_rows

    parsed = S._parse(text)
    canonical = parsed.canonical or text
    vec = S._encoder(inst).encode_text(canonical)
    sims, ids = S._index(inst).search(np.asarray(vec, np.float32)[None], n)
    with inst.sessions() as s:
        rows = candidate_rows(s, ids[0][ids[0] >= 0])
    order: dict[str, None] = {}
    for vid in ids[0]:
        if int(vid) in rows:
            order.setdefault(rows[int(vid)]["study"], None)
    return list(order)


def hybrid_ranking(inst, text: str, k: int) -> list[str]:
    return [r["study"] for r in S.search(inst, text, k=k)["results"]]


def _scores(ranking: list[str], pool: list[str]) -> list[float]:
    pos = {s: i for i, s in enumerate(ranking)}
    return [-(pos[s]) if s in pos else -1e9 for s in pool]


def protocol_queries(labs: list[dict], lang: str) -> tuple[list[str], list[dict]]:
    """Protocol (b) phrases of a pool in ``lang``, with their specs (deduplicated)."""
    from medsearch.models.data import GRANULARITIES

    specs: dict[str, dict] = {}
    for lab in labs:
        for f in lab["findings"]:
            for fields in GRANULARITIES:
                spec = phrases.spec_of(f, fields)
                specs.setdefault(phrases.spec_text(spec, lang), spec)
    texts = sorted(specs)
    return texts, [specs[t] for t in texts]


def quality(inst, labs: list[dict], langs=("en", "zh"), max_queries: int | None = None) -> dict:
    """Dual tower vs hybrid on both protocols over the studies of ``labs``."""
    pool = [lab["_study"] for lab in labs]
    n = len(pool)
    k_search = min(n, S.MAX_K)
    out: dict = {"pool": n, "report_to_volume": {}, "phrase_to_volume": {}}
    keys = [phrases.study_key(lab["findings"]) for lab in labs]
    same = torch.tensor([[a == b for b in keys] for a in keys])
    for lang in langs:
        res = {}
        for name, rank in (("dual", lambda t: dual_ranking(inst, t, 4 * n)),
                           ("hybrid", lambda t: hybrid_ranking(inst, t, k_search))):
            sims = [_scores(rank(lab[f"report_{lang}"][:S.MAX_QUERY_CHARS]), pool) for lab in labs]
            sim = torch.tensor(sims, dtype=torch.float32)
            res[name] = {f"R@{k}": recall_at_k(sim, same, k) for k in (1, 5, 10)}
        out["report_to_volume"][lang] = res
        texts, specs = protocol_queries(labs, lang)
        if max_queries:
            texts, specs = texts[:max_queries], specs[:max_queries]
        rel = torch.tensor([[phrases.relevance(lab["findings"], spec) for lab in labs] for spec in specs])
        res = {}
        for name, rank in (("dual", lambda t: dual_ranking(inst, t, 4 * n)),
                           ("hybrid", lambda t: hybrid_ranking(inst, t, k_search))):
            sim = torch.tensor([_scores(rank(t), pool) for t in texts], dtype=torch.float32)
            res[name] = ranking_metrics(sim, rel)
        out["phrase_to_volume"][lang] = res
    return out


def localisation(inst, labs: list[dict], lang: str = "en", k: int = 10, max_queries: int | None = None) -> dict:
    """Share of relevant top-k hits on a main series whose key slice falls in a matching finding's slices."""
    by_study = {lab["_study"]: lab for lab in labs}
    texts, specs = protocol_queries(labs, lang)
    if max_queries:
        texts, specs = texts[:max_queries], specs[:max_queries]
    hits = total = middle = 0
    misses: dict[str, int] = {}
    by_source: dict[str, list[int]] = {}  # what located the key slice -> [hits, total]
    shapes = _shapes(inst)
    for text, spec in zip(texts, specs):
        for r in S.search(inst, text, k=k)["results"]:
            lab = by_study.get(r["study"])
            if lab is None or r["series"] != lab["_main_series"] or r["key_slice"] is None:
                continue
            matching = [f for f in lab["findings"] if phrases.finding_matches(f, spec) and f.get("slice_range")]
            if not matching:
                continue
            total += 1
            within = any(f["slice_range"][0] <= r["key_slice"] <= f["slice_range"][1] for f in matching)
            hits += within
            if not within:
                misses[spec["type"]] = misses.get(spec["type"], 0) + 1
            tally = by_source.setdefault(str(r.get("located_by")), [0, 0])
            tally[0] += within
            tally[1] += 1
            # baseline in the same run: the middle slice of the series
            mid = shapes[r["series"]][0] // 2
            middle += any(f["slice_range"][0] <= mid <= f["slice_range"][1] for f in matching)
    return {"relevant_hits": total, "key_slice_within": hits, "rate": hits / total if total else None,
            "middle_slice_baseline": middle / total if total else None,
            "misses_by_type": dict(sorted(misses.items(), key=lambda kv: -kv[1])),
            "by_source": {k: {"within": v[0], "hits": v[1]} for k, v in sorted(by_source.items())}}


def _shapes(inst) -> dict[str, list]:
    from sqlalchemy import select

    from medsearch.store.models import Series, Volume

    with inst.sessions() as s:
        return dict(s.execute(select(Series.pseudonym, Volume.shape)
                              .join(Volume, Volume.series_id == Series.id)).all())

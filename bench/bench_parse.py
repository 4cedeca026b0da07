"""Query parsing: accuracy on the phrase set and parse speed, against a dictionary-lookup baseline.

Set: ``tests/query/phrases.jsonl`` (English, Chinese, mixed; abbreviations, negation, report sentences).
Accuracy is the share of phrases whose parse is an *exact structured match* (the same multiset of
findings, every attribute equal; see ``medsearch.query.evaluate``).  Target: >= 98%.

Speed: each phrase is parsed ``--repeats`` times with the public ``medsearch.query.parse`` after a warm-up (the automaton and jieba are built
once, lazily); median and p99 of the per-query times.  Target: median <= 1 ms.  No result cache exists,
so every call does the full work.

Baseline, measured in the same run on the same phrases: the naive parser most projects start with —
a plain dictionary lookup (every surface form of the same terminology tried with ``str.find``, longest
first, no Chinese segmentation, no typo tolerance), a regex for "<number> mm|cm", negation when a
negation cue appears anywhere before the finding, and every site/qualifier given to every finding.

Held-out check: whole bilingual reports written by the synthetic archive (``medsearch.synth.reports``)
for ``--reports`` fresh seeds (not the ones the tests use) are parsed, and the share of labelled findings
recovered (type, site/side, nodule density, size within 1 mm; ``medsearch.query.evaluate.recovered``) is
reported for both parsers, with the time per report.

    .venv/bin/python bench/bench_parse.py [--repeats 20] [--reports 300]

Writes bench/results/parse.json.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from pathlib import Path

from tqdm import tqdm

from medsearch.query import parse
from medsearch.query.evaluate import exact_match, load_phrases, recovered, synthetic_report_labels
from medsearch.query.normalize import normalize
from medsearch.query.parser import default_parser

ROOT = Path(__file__).resolve().parents[1]
PHRASES = ROOT / "tests" / "query" / "phrases.jsonl"
RESULTS = ROOT / "bench" / "results" / "parse.json"
TARGET_ACCURACY = 0.98
TARGET_MEDIAN_MS = 1.0


class DictionaryBaseline:
    """Plain dictionary lookup + regex sizes over the same terminology (see module doc)."""

    _SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(mm|cm|毫米|厘米)")

    def __init__(self, term):
        from medsearch.query.terminology import surface_meanings

        self.term = term
        self.surfaces = sorted(((s, next(iter(m))) for s, m in surface_meanings(term).items()),
                               key=lambda x: -len(x[0]))
        self.negations = sorted((s for s, roles in term.cues.items() if "negation_pre" in roles), key=len, reverse=True)

    def parse(self, text: str) -> dict:
        norm = normalize(text)
        taken = bytearray(len(norm))
        hits = []
        for surface, meaning in self.surfaces:
            start = norm.find(surface)
            while start >= 0:
                end = start + len(surface)
                if not any(taken[start:end]):
                    taken[start:end] = b"\x01" * len(surface)
                    hits.append((start, meaning))
                start = norm.find(surface, end)
        hits.sort()
        neg_at = min((norm.find(n) for n in self.negations if n in norm), default=-1)
        sizes = [float(v) * (10 if u in ("cm", "厘米") else 1) for v, u in self._SIZE.findall(norm)]
        site = lat = None
        quals: dict[str, str] = {}
        findings = []
        for pos, (kind, ref, extra) in hits:
            if kind == "qualifier":
                if ref == "laterality":
                    lat = lat or extra
                else:
                    quals.setdefault(ref, extra)
            elif self.term.concepts[ref].kind == "anatomy":
                site = site or ref
            else:
                findings.append((pos, ref, dict(extra)))
        out = []
        for pos, ref, fixed in findings:
            c = self.term.concepts[ref]
            s = self.term.concepts[site] if site else None
            q = {**quals, **fixed}
            out.append({"concept": {"id": c.id, "term": c.term}, "site": {"id": s.id, "term": s.term} if s else None,
                        "laterality": (s.laterality if s and s.laterality else lat),
                        "size_mm": {"min": max(sizes), "max": max(sizes)} if sizes else None,
                        "density": q.get("density"), "shape": q.get("shape"), "count": q.get("count"),
                        "change": q.get("change"), "negated": 0 <= neg_at < pos})
        return {"findings": out}


def _time(fn, phrases, repeats: int, desc: str) -> list[float]:
    times = []
    for item in tqdm(phrases, desc=desc, unit="phrase", leave=False):
        text = item["text"]
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(text)
            times.append((time.perf_counter() - t0) * 1000.0)
    return times


def _report_recall(parsers: dict, n: int) -> dict:
    """Recall of labelled findings in whole synthetic reports, seeds 10000.. (held out from the tests)."""
    from types import SimpleNamespace

    import numpy as np

    from medsearch.synth.reports import write_reports

    acq = SimpleNamespace(thickness=1.25, kernel="B70f")
    hits = {name: {"en": [], "zh": []} for name in parsers}
    times = {name: [] for name in parsers}
    for seed in tqdm(range(10000, 10000 + n), desc="reports", unit="report", leave=False):
        labels = synthetic_report_labels(seed)
        en, zh = write_reports(labels, acq, np.random.default_rng(seed))
        for name, fn in parsers.items():
            for lang, text in (("en", en), ("zh", zh)):
                t0 = time.perf_counter()
                parsed = fn(text)
                times[name].append((time.perf_counter() - t0) * 1000.0)
                hits[name][lang] += [recovered(f, parsed) for f in labels["findings"]]
    return {name: {"recall": sum(h["en"] + h["zh"]) / len(h["en"] + h["zh"]),
                   "recall_en": sum(h["en"]) / len(h["en"]), "recall_zh": sum(h["zh"]) / len(h["zh"]),
                   "median_ms_per_report": statistics.median(times[name])} for name, h in hits.items()}


def _p(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=20, help="Timed parses per phrase.")
    ap.add_argument("--reports", type=int, default=300, help="Synthetic reports for the held-out recall.")
    args = ap.parse_args()
    phrases = load_phrases(PHRASES)

    t0 = time.perf_counter()
    parser = default_parser()
    parser.parse("右肺下叶结节")  # builds jieba too
    build_s = time.perf_counter() - t0
    baseline = DictionaryBaseline(parser.term)

    rows = {}
    for name, fn in (("medsearch", parse), ("baseline", baseline.parse)):
        ok = {"all": [], "en": [], "zh": [], "mixed": []}
        for item in phrases:
            hit = exact_match(fn(item["text"]), item["findings"])
            ok["all"].append(hit)
            ok[item["lang"]].append(hit)
        times = _time(fn, phrases, args.repeats, name)
        rows[name] = {
            "accuracy": sum(ok["all"]) / len(ok["all"]),
            "accuracy_by_lang": {k: round(sum(v) / len(v), 4) for k, v in ok.items() if v and k != "all"},
            "median_ms": statistics.median(times), "p99_ms": _p(times, 0.99), "mean_ms": statistics.fmean(times),
        }
    reports = _report_recall({"medsearch": parse, "baseline": baseline.parse}, args.reports)
    ours, base = rows["medsearch"], rows["baseline"]
    result = {
        "phrases": len(phrases), "repeats": args.repeats, "build_s": round(build_s, 3),
        "medsearch": ours, "baseline": base,
        "median_ratio_vs_baseline": ours["median_ms"] / base["median_ms"],
        "synthetic_reports": {"reports": args.reports, **reports},
        "targets": {"accuracy": TARGET_ACCURACY, "median_ms": TARGET_MEDIAN_MS},
        "meets_targets": ours["accuracy"] >= TARGET_ACCURACY and ours["median_ms"] <= TARGET_MEDIAN_MS,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")

    print(f"{len(phrases)} phrases, {args.repeats} timed parses each; parser built in {build_s:.2f} s")
    print(f"{'parser':<10} {'accuracy':>9} {'en':>7} {'zh':>7} {'mixed':>7} {'median ms':>10} {'p99 ms':>8}")
    for name, r in rows.items():
        by = r["accuracy_by_lang"]
        print(f"{name:<10} {r['accuracy']:>9.1%} {by.get('en', 0):>7.1%} {by.get('zh', 0):>7.1%} "
              f"{by.get('mixed', 0):>7.1%} {r['median_ms']:>10.3f} {r['p99_ms']:>8.3f}")
    print(f"held out: {args.reports} synthetic reports (EN + ZH), labelled findings recovered:")
    for name, r in reports.items():
        print(f"  {name:<10} {r['recall']:.1%} (en {r['recall_en']:.1%}, zh {r['recall_zh']:.1%}), "
              f"median {r['median_ms_per_report']:.2f} ms per report")
    print(f"median time ratio medsearch/baseline: {result['median_ratio_vs_baseline']:.2f}; "
          f"targets (accuracy >= {TARGET_ACCURACY:.0%}, median <= {TARGET_MEDIAN_MS} ms): "
          f"{'met' if result['meets_targets'] else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

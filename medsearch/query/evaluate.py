"""Scoring parses against a phrase set (``tests/query/phrases.jsonl``), for the tests and the benchmark.

A phrase set is JSON lines: ``{"text", "lang": "en"|"zh"|"mixed", "findings": [compact finding, ...],
"canonical"?: str}``.  A compact finding names terms, not IDs, and leaves out what is empty:
``{"concept": "nodule", "site": "left lower lobe", "laterality": "left", "size": [20, 20],
"density": "ground-glass", "negated": true}``.  An exact structured match is the same multiset of
compact findings.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from medsearch import vocab
from medsearch.errors import InputError
from medsearch.query.model import ParsedQuery

KEYS = ("concept", "site", "laterality", "size", "density", "shape", "count", "change", "negated")


def compact_finding(f: dict) -> dict:
    """A finding of ``ParsedQuery.to_dict()`` (or a compact one) in canonical compact form."""
    out = {}
    for k in KEYS:
        if k == "size":
            size = f.get("size")
            if size is None and f.get("size_mm"):
                size = [f["size_mm"]["min"], f["size_mm"]["max"]]
            v = None if size is None else [None if x is None else round(float(x), 2) for x in size]
        elif k in ("concept", "site"):
            v = f.get(k)
            v = v["term"] if isinstance(v, dict) else v
        else:
            v = f.get(k)
        if v not in (None, False):
            out[k] = v
    return out


def compact(parsed: ParsedQuery | dict) -> list[dict]:
    d = parsed.to_dict() if isinstance(parsed, ParsedQuery) else parsed
    return [compact_finding(f) for f in d["findings"]]


def _key(f: dict) -> str:
    return json.dumps(f, sort_keys=True, ensure_ascii=False)


def exact_match(parsed: ParsedQuery | dict, expected: list[dict]) -> bool:
    return sorted(map(_key, compact(parsed))) == sorted(_key(compact_finding(f)) for f in expected)


def load_phrases(path: Path) -> list[dict]:
    items = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path} line {n} is not JSON ({exc.msg}).", "Fix the line; one JSON object per line.") from None
        if not isinstance(item.get("text"), str) or not isinstance(item.get("findings"), list):
            raise InputError(f"{path} line {n} lacks 'text' or 'findings'.", "Each line needs text and findings.")
        items.append(item)
    return items


# ------------------------------------------------------------ synthetic reports (a held-out check)
REPORT_TYPES = ("nodule", "mass", "cavity", "consolidation", "ground-glass opacity", "atelectasis",
                "pleural effusion", "pneumothorax", "emphysema")


def synthetic_report_labels(seed: int) -> dict:
    """Study labels with 1-3 random findings (the synthetic archive's samplers), some with a prior."""
    import numpy as np

    from medsearch.synth.findings import sample_finding, split_bilateral

    rng = np.random.default_rng(seed)
    findings = []
    kinds = rng.choice(REPORT_TYPES, size=int(rng.integers(1, 4)), replace=False)
    prior = "2024-03-01" if seed % 2 else None
    for k, t in enumerate(kinds):
        for spec in split_bilateral(sample_finding(rng, str(t))):
            f = asdict(spec)
            f["sides_mm"] = f.pop("sides") or None
            if t in ("nodule", "mass", "cavity"):
                f["short_axis_mm"] = round(f["diameter_mm"] * float(rng.uniform(0.75, 0.95)), 1)
            if prior and t in ("nodule", "mass") and k == 0:
                f["change"] = ("new", "growing", "stable")[seed % 3]
                f["prior_diameter_mm"] = round(f["diameter_mm"] * (0.7 if f["change"] == "growing" else 1.0), 1)
            f["key_image_number"] = int(rng.integers(10, 120))
            findings.append(f)
    return {"findings": findings, "prior_study_date": prior, "contrast": bool(seed % 3 == 0), "resolved": []}


def recovered(label: dict, parsed: ParsedQuery | dict) -> bool:
    """True when a non-negated parsed finding agrees with a labelled one: type, site (lobes) or side,
    density for nodules, and size within 1 mm where the parse has one."""
    for g in parsed.to_dict()["findings"] if isinstance(parsed, ParsedQuery) else parsed["findings"]:
        site = (g.get("site") or {}).get("term")
        size = (g.get("size_mm") or {}).get("max")
        if g["negated"] or g["concept"]["term"] != label["type"]:
            continue
        if label["site"] in vocab.LOBES + (vocab.LINGULA,):
            if site != label["site"]:
                continue
        elif label["type"] == "emphysema":
            if g["laterality"] not in (label["laterality"], "bilateral"):
                continue
        elif g["laterality"] != label["laterality"]:
            continue
        if label["type"] == "nodule" and g["density"] != label["density"]:
            continue
        if size is not None and label["diameter_mm"] is not None and label["type"] != "pleural effusion":
            if abs(size - label["diameter_mm"]) > 1.0:
                continue
        return True
    return False

"""Scoring parses against a phrase set (``tests/query/phrases.jsonl``), for the tests and the benchmark.

A phrase set is JSON lines: ``{"text", "lang": "en"|"zh"|"mixed", "findings": [compact finding, ...],
"canonical"?: str}``.  A compact finding names terms, not IDs, and leaves out what is empty:
``{"concept": "nodule", "site": "left lower lobe", "laterality": "left", "size": [20, 20],
"density": "ground-glass", "negated": true}``.  An exact structured match is the same multiset of
compact findings.
"""

from __future__ import annotations

import json
from pathlib import Path

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

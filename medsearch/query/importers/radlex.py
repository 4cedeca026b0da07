"""RadLex CSV importer (the BioPortal "CSV" download of RADLEX).

Columns used: ``Class ID`` (``http://radlex.org/RID/RID1301`` or a bare ``RID1301``),
``Preferred Label``, ``Synonyms`` and ``Parents`` (``|``-separated), ``Obsolete``,
and a part-of column where present (a header ending in ``Part_Of`` or ``Part Of``).
Other columns are ignored.  Like the SNOMED CT importer it adds the labels and
synonyms of every concept our terminology cross-references (``radlex = "RID..."``)
and the narrower concepts below them to ``--depth`` levels.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from medsearch.errors import InputError
from medsearch.query.importers.common import ImportResult, descendants, roots, uniq, write_layer
from medsearch.query.terminology import Terminology

_RID = re.compile(r"(RID\d+)$")
REQUIRED = ("Class ID", "Preferred Label")


def _rid(value: str) -> str:
    m = _RID.search(value.strip().rstrip("/"))
    return m.group(1) if m else ""


def _split(value: str) -> list[str]:
    return [v.strip() for v in (value or "").split("|") if v.strip()]


def import_radlex(csv_path: Path, term: Terminology, out: Path, depth: int = 2, limit: int = 20000) -> ImportResult:
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise InputError(f"The RadLex export {csv_path} does not exist.", "Pass the CSV downloaded from BioPortal.")
    rows: dict[str, dict] = {}
    try:
        with open(csv_path, encoding="utf-8-sig", newline="") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            missing = [c for c in REQUIRED if c not in header]
            if missing:
                raise InputError(f"{csv_path.name} lacks the column(s) {', '.join(missing)}.",
                                 "Export RadLex from BioPortal as CSV; it has 'Class ID' and 'Preferred Label'.")
            part_col = next((h for h in header if h.replace(" ", "_").lower().endswith("part_of")), None)
            for row in reader:
                rid = _rid(row.get("Class ID") or "")
                if not rid or (row.get("Obsolete") or "").strip().lower() == "true":
                    continue
                rows[rid] = {
                    "label": (row.get("Preferred Label") or "").strip(),
                    "synonyms": _split(row.get("Synonyms")),
                    "parents": [p for p in map(_rid, _split(row.get("Parents"))) if p],
                    "part_of": [p for p in map(_rid, _split(row.get(part_col) if part_col else "")) if p],
                }
    except UnicodeDecodeError:
        raise InputError(f"{csv_path.name} is not UTF-8.", "Download the CSV again; BioPortal exports UTF-8.") from None
    except csv.Error as exc:
        raise InputError(f"{csv_path.name} is not valid CSV ({exc}).", "Download the CSV again.") from None
    children: dict[str, set[str]] = {}
    parts: dict[str, set[str]] = {}
    for rid, r in rows.items():
        for p in r["parents"]:
            children.setdefault(p, set()).add(rid)
        for p in r["part_of"]:
            parts.setdefault(p, set()).add(rid)
    result = ImportResult(Path(out), "RadLex")
    start = {}
    for rid, cid in sorted(roots(term, "radlex").items()):
        if rid in rows:
            start[rid] = cid
        else:
            result.missing.append(f"{cid}={rid}")
    result.matched = len(start)
    kinds = {r: term.concepts[c].kind for r, c in start.items()}
    found = descendants(start, children, parts, kinds, depth, limit)
    extend = []
    for rid, cid in start.items():
        en = uniq([rows[rid]["label"], *rows[rid]["synonyms"]])
        if en:
            extend.append({"concept": cid, "en": en})
            result.synonyms += len(en)
    concepts = []
    for rid, (isa, partof) in found.items():
        r = rows[rid]
        label = r["label"] or rid
        concepts.append({"id": f"rid:{rid}", "kind": kinds[rid], "term": label, "en": uniq([label, *r["synonyms"]]),
                         "radlex": rid, "is_a": [start.get(p, f"rid:{p}") for p in isa],
                         "part_of": [start.get(p, f"rid:{p}") for p in partof]})
    result.concepts = len(concepts)
    write_layer(out, {"name": "RadLex", "file": csv_path.name, "depth": depth}, extend, concepts)
    return result

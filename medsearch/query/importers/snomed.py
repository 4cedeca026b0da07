"""SNOMED CT RF2 snapshot importer.

Reads the Concept, Description and (inferred) Relationship snapshot files of a
release, and optionally its language reference sets, and writes a terminology
layer that:

- adds the active synonyms of every concept our terminology cross-references
  (``snomed = "..."``) to that concept (English; Chinese where the release or an
  extension has ``languageCode`` zh);
- adds the narrower concepts below them, to ``--depth`` levels: is-a children, and
  for anatomy also part-of (123005000) parts, each linked to its parent, so that a
  parse of "Solitary nodule of lung" rolls up to our "nodule";
- reports cross-references that the release lacks or has inactivated.

Format: RF2 text files, tab-separated, UTF-8, a header row, no quoting
(SNOMED CT Release File Specifications, section 4.2).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from medsearch.errors import InputError
from medsearch.query.importers.common import ImportResult, descendants, roots, strip_semantic_tag, uniq, write_layer
from medsearch.query.terminology import Terminology

IS_A = "116680003"
PART_OF = "123005000"
FSN = "900000000000003001"
SYNONYM = "900000000000013009"
PREFERRED = "900000000000548007"

CONCEPT_COLUMNS = ["id", "effectiveTime", "active", "moduleId", "definitionStatusId"]
DESCRIPTION_COLUMNS = ["id", "effectiveTime", "active", "moduleId", "conceptId", "languageCode", "typeId", "term",
                       "caseSignificanceId"]
RELATIONSHIP_COLUMNS = ["id", "effectiveTime", "active", "moduleId", "sourceId", "destinationId", "relationshipGroup",
                        "typeId", "characteristicTypeId", "modifierId"]
LANGUAGE_COLUMNS = ["id", "effectiveTime", "active", "moduleId", "refsetId", "referencedComponentId", "acceptabilityId"]

_PATTERNS = {
    "concept": re.compile(r"sct2_Concept_.*Snapshot.*\.txt$"),
    "description": re.compile(r"sct2_(Description|TextDefinition)_.*Snapshot.*\.txt$"),
    "relationship": re.compile(r"sct2_Relationship_.*Snapshot.*\.txt$"),
    "language": re.compile(r"der2_cRefset_Language.*Snapshot.*\.txt$"),
}


def _files(root: Path) -> dict[str, list[Path]]:
    if not root.is_dir():
        raise InputError(f"The SNOMED CT release folder {root} does not exist.",
                         "Pass the unzipped release folder (the one holding Snapshot/Terminology/).")
    found: dict[str, list[Path]] = {k: [] for k in _PATTERNS}
    for p in sorted(root.rglob("*.txt")):
        for kind, pat in _PATTERNS.items():
            if pat.search(p.name) and "TextDefinition" not in p.name:
                found[kind].append(p)
    for kind in ("concept", "description", "relationship"):
        if not found[kind]:
            raise InputError(f"No RF2 {kind} snapshot file (sct2_{kind.title()}_...Snapshot...txt) under {root}.",
                             "Pass the folder of an RF2 release; the Snapshot files are required.")
    return found


def _rows(path: Path, columns: list[str]):
    """Rows of an RF2 file as dicts, after checking its header."""
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
            header = next(reader, None)
            if header != columns:
                raise InputError(f"{path.name} does not have the RF2 header {' '.join(columns)}.",
                                 "Pass unmodified RF2 snapshot files (tab-separated, UTF-8).")
            for n, row in enumerate(reader, start=2):
                if len(row) != len(columns):
                    raise InputError(f"{path.name} line {n} has {len(row)} fields, not {len(columns)}.",
                                     "The file is truncated or not tab-separated; re-extract the release.")
                yield dict(zip(columns, row))
    except UnicodeDecodeError:
        raise InputError(f"{path.name} is not UTF-8.", "RF2 files are UTF-8; re-extract the release.") from None


def import_snomed(release: Path, term: Terminology, out: Path, depth: int = 2, limit: int = 20000) -> ImportResult:
    """Import a SNOMED CT RF2 snapshot into the terminology layer ``out`` (see module doc)."""
    release = Path(release)
    files = _files(release)
    active = set()
    for path in files["concept"]:
        for r in _rows(path, CONCEPT_COLUMNS):
            if r["active"] == "1":
                active.add(r["id"])
    children: dict[str, set[str]] = {}
    parts: dict[str, set[str]] = {}
    for path in files["relationship"]:
        for r in _rows(path, RELATIONSHIP_COLUMNS):
            if r["active"] != "1" or r["sourceId"] not in active or r["destinationId"] not in active:
                continue
            if r["typeId"] == IS_A:
                children.setdefault(r["destinationId"], set()).add(r["sourceId"])
            elif r["typeId"] == PART_OF:
                parts.setdefault(r["destinationId"], set()).add(r["sourceId"])
    mapped = roots(term, "snomed")
    result = ImportResult(Path(out), "SNOMED CT")
    start = {}
    for sctid, cid in sorted(mapped.items()):
        if sctid in active:
            start[sctid] = cid
        else:
            (result.inactive if sctid in _all_ids(files["concept"]) else result.missing).append(f"{cid}={sctid}")
    result.matched = len(start)
    kinds = {s: term.concepts[c].kind for s, c in start.items()}
    found = descendants(start, children, parts, kinds, depth, limit)
    wanted = set(start) | set(found)
    names: dict[str, dict[str, list[tuple[str, str]]]] = {}  # concept -> lang -> [(description id, term)]
    fsn: dict[str, str] = {}
    for path in files["description"]:
        for r in _rows(path, DESCRIPTION_COLUMNS):
            if r["active"] != "1" or r["conceptId"] not in wanted:
                continue
            if r["typeId"] == FSN:
                fsn[r["conceptId"]] = strip_semantic_tag(r["term"])
            elif r["typeId"] == SYNONYM:
                lang = "zh" if r["languageCode"].startswith("zh") else "en" if r["languageCode"] == "en" else ""
                if lang:
                    names.setdefault(r["conceptId"], {}).setdefault(lang, []).append((r["id"], r["term"]))
    preferred = set()
    for path in files["language"]:
        for r in _rows(path, LANGUAGE_COLUMNS):
            if r["active"] == "1" and r["acceptabilityId"] == PREFERRED:
                preferred.add(r["referencedComponentId"])

    def terms(sctid: str, lang: str) -> list[str]:
        items = names.get(sctid, {}).get(lang, [])
        items = sorted(items, key=lambda d: (d[0] not in preferred, d[1].lower()))
        return uniq(t for _, t in items)

    extend = []
    for sctid, cid in start.items():
        en, zh = terms(sctid, "en"), terms(sctid, "zh")
        if en or zh:
            extend.append({"concept": cid, "en": en, "zh_hans": zh})
            result.synonyms += len(en) + len(zh)

    def ref(ext: str) -> str:
        return start.get(ext) or f"sct:{ext}"

    concepts = []
    for sctid, (isa, partof) in found.items():
        en = terms(sctid, "en")
        preferred_term = en[0] if en else fsn.get(sctid, sctid)
        concepts.append({"id": f"sct:{sctid}", "kind": kinds[sctid], "term": preferred_term,
                         "en": uniq([preferred_term, *en]), "zh_hans": terms(sctid, "zh"), "snomed": sctid,
                         "is_a": [ref(p) for p in isa], "part_of": [ref(p) for p in partof]})
    result.concepts = len(concepts)
    write_layer(out, {"name": "SNOMED CT", "release": release.name, "depth": depth}, extend, concepts)
    return result


def _all_ids(paths: list[Path]) -> set[str]:
    return {r["id"] for p in paths for r in _rows(p, CONCEPT_COLUMNS)}

"""What the SNOMED CT and RadLex importers share: walking a release's hierarchy
from the concepts our terminology cross-references, and writing the layer file."""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w

from medsearch.errors import InputError
from medsearch.query.terminology import Terminology

_SEMANTIC_TAG = re.compile(r"\s*\([^()]*\)\s*$")


def strip_semantic_tag(fsn: str) -> str:
    """'Pleural effusion (disorder)' -> 'Pleural effusion'."""
    return _SEMANTIC_TAG.sub("", fsn).strip()


@dataclass
class ImportResult:
    """Counts of an import; ``path`` is the layer written."""

    path: Path
    source: str
    matched: int = 0  # our concepts found (active) in the release
    missing: list[str] = field(default_factory=list)  # our cross-references absent from the release
    inactive: list[str] = field(default_factory=list)  # ... present but inactive
    synonyms: int = 0  # synonyms added to our concepts
    concepts: int = 0  # new (narrower) concepts added

    def to_dict(self) -> dict:
        return {"path": str(self.path), "source": self.source, "matched": self.matched, "missing": self.missing,
                "inactive": self.inactive, "synonyms": self.synonyms, "concepts": self.concepts}


def roots(term: Terminology, field_name: str) -> dict[str, str]:
    """External ID -> our concept ID, for every core concept that cross-references the release."""
    out: dict[str, str] = {}
    for c in term.concepts.values():
        ext = getattr(c, field_name)
        if c.core and ext:
            out[ext] = c.id
    return out


def descendants(start: dict[str, str], children: dict[str, set[str]], parts: dict[str, set[str]],
                kinds: dict[str, str], depth: int, limit: int) -> dict[str, tuple[list[str], list[str]]]:
    """Narrower concepts (is-a children; for anatomy also parts) of the mapped ones, breadth first.

    Returns external ID -> (is_a parents, part_of wholes) as external IDs within the result or ``start``.
    ``kinds`` maps each start ID to "finding" or "anatomy"; found concepts inherit it.
    """
    found: dict[str, tuple[list[str], list[str]]] = {}
    queue = deque((ext, 0) for ext in start)
    while queue and len(found) < limit:
        ext, d = queue.popleft()
        if d >= depth:
            continue
        links = [(c, "is_a") for c in sorted(children.get(ext, ()))]
        if kinds[ext] == "anatomy":
            links += [(p, "part_of") for p in sorted(parts.get(ext, ()))]
        for child, how in links:
            if child in start:
                continue
            if child not in found:
                if len(found) >= limit:
                    break
                found[child] = ([], [])
                kinds[child] = kinds[ext]
                queue.append((child, d + 1))
            isa, partof = found[child]
            target = isa if how == "is_a" else partof
            if ext not in target:
                target.append(ext)
    return found


def write_layer(path: Path, source: dict, extend: list[dict], concepts: list[dict]) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text("# Written by medsearch terms import; do not edit, re-run the import.\n"
                       + tomli_w.dumps({"source": source, "extend": extend, "concept": concepts}), encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        raise InputError(f"Cannot write the terminology layer {path} ({exc.strerror}).",
                         "Choose a writable --out path.") from None


def uniq(items) -> list[str]:
    seen: set[str] = set()
    return [x for x in items if x and not (x.lower() in seen or seen.add(x.lower()))]

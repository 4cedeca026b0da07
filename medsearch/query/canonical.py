"""The canonical phrase: one English phrase per finding, for the text encoder.

Grammar (every part optional except the concept; parts in this fixed order)::

    phrase  = ["no"] [count] [change] [place] [size] [shape] [density] concept
    place   = site                      if the site's own side is the laterality
            | laterality site           otherwise ("right hilum"; "bilateral lower lobes",
                                        with the site's plural for bilateral)
            | laterality                without a site ("left pleural effusion")
    size    = "20 mm" | "20-30 mm" | "over 20 mm" | "under 10 mm"
    concept = the preferred term; its plural when count is multiple

- Negated findings drop the count: "no pleural effusion", "no new nodule".
- A site the concept already names (pleura for pleural effusion) is not repeated.
- Numbers are millimetres, rounded to 0.1 and written without a trailing ".0".
- Several findings are joined with ", " in the order of the text.

Examples: "right lower lobe 20 mm ground-glass nodule", "multiple bilateral lower lobes nodules",
"left pleural effusion", "no new nodule", "stable under 10 mm calcified nodule".
"""

from __future__ import annotations

from typing import Any

from medsearch.errors import InputError
from medsearch.query.terminology import Terminology


def _num(x: float) -> str:
    return f"{round(float(x), 1):g}"


def size_text(lo: float | None, hi: float | None) -> str:
    if lo is None and hi is None:
        return ""
    if lo is not None and hi is not None:
        return f"{_num(lo)} mm" if round(lo, 1) == round(hi, 1) else f"{_num(lo)}-{_num(hi)} mm"
    return f"over {_num(lo)} mm" if lo is not None else f"under {_num(hi)} mm"


def phrase(term: Terminology, concept_id: str | None, site_id: str | None = None, laterality: str | None = None,
           size_min: float | None = None, size_max: float | None = None, density: str | None = None,
           shape: str | None = None, count: str | None = None, change: str | None = None,
           negated: bool = False) -> str:
    """The canonical phrase of one finding (or, without a concept, of its attributes)."""
    concept = term.concepts[concept_id] if concept_id else None
    parts: list[str] = []
    if negated:
        parts.append("no")
    elif count:
        parts.append(count)
    if change:
        parts.append(change)
    if site_id and concept is not None and site_id == concept.default_site:
        site_id = None
    if site_id:
        site = term.concepts[site_id]
        own = term.laterality_of(site_id)
        if laterality and laterality != own:
            parts.append(laterality)
            parts.append(site.plural if laterality == "bilateral" and site.plural else site.term)
        else:
            parts.append(site.term)
    elif laterality:
        parts.append(laterality)
    size = size_text(size_min, size_max)
    if size:
        parts.append(size)
    for p in (shape, density):
        if p:
            parts.append(p)
    if concept is not None:
        plural = count == "multiple" and not negated and concept.plural
        parts.append(concept.plural if plural else concept.term)
    return " ".join(parts)


def _ref_id(term: Terminology, value: Any, what: str) -> str | None:
    if value in (None, ""):
        return None
    key = value.get("id") or value.get("term") if isinstance(value, dict) else value
    c = term.find(key) if isinstance(key, str) else None
    if c is None:
        raise InputError(f"Unknown {what} {key!r} for the canonical phrase.",
                         "Use a preferred term of terminology/ (see medsearch/vocab.py) or a concept ID.")
    return c.id


def canonical_phrase(finding: dict, term: Terminology | None = None) -> str:
    """The canonical phrase of a structured finding.

    Accepts a label finding (``type``, ``site``, ``laterality``, ``diameter_mm``,
    ``density``, ``shape``, ``count``, ``change``, ``negated``; strings are preferred
    terms) or a parsed finding (``concept``/``site`` as ``{"id", "term"}``,
    ``size_mm`` as ``{"min", "max"}`` or a number).  ``count`` may be an integer.
    """
    if term is None:
        from medsearch.query.parser import default_parser

        term = default_parser().term
    if not isinstance(finding, dict):
        raise InputError("A finding must be a dict.", "Pass a label finding or a parsed finding dict.")
    concept = finding.get("concept", finding.get("type"))
    if concept in (None, ""):
        raise InputError("The finding has no 'type' (or 'concept').", "Give the finding type, e.g. 'nodule'.")
    lo = hi = None
    size = finding.get("size_mm", finding.get("diameter_mm"))
    if isinstance(size, dict):
        lo, hi = size.get("min"), size.get("max")
    elif isinstance(size, (int, float)) and not isinstance(size, bool):
        lo = hi = float(size)
    elif size is not None:
        raise InputError("The finding's size must be a number of mm or {'min', 'max'}.",
                         "Give diameter_mm / size_mm as a number, or size_mm as {'min': x, 'max': y}.")
    count = finding.get("count")
    if isinstance(count, int) and not isinstance(count, bool):
        count = "single" if count == 1 else "multiple" if count > 1 else None
    return phrase(term, _ref_id(term, concept, "finding type"), _ref_id(term, finding.get("site"), "site"),
                  finding.get("laterality") or None, lo, hi, finding.get("density") or None,
                  finding.get("shape") or None, count or None, finding.get("change") or None,
                  bool(finding.get("negated", False)))

"""Search input from a request: the text, the filters, and the editable chips.

The chips are the parse of the query (finding, site, size, density,
negation), shown as form fields over the closed vocabulary; submitting them
rewrites the query as a phrase the parser reads back the same way.
"""

from __future__ import annotations

import datetime as dt

from medsearch.errors import InputError
from medsearch.vocab import DENSITIES, FINDING_TYPES, SITES

MAX_QUERY = 500
MAX_K = 100
MODALITIES = ("CT", "MR")
MAX_CHIPS = 5


def _date(value: str | None, name: str) -> str | None:
    if not value:
        return None
    try:
        return dt.date.fromisoformat(value).isoformat()
    except ValueError:
        raise InputError(f"'{name}' is not a date.", "Use the form YYYY-MM-DD.") from None


def parse_filters(args) -> dict:
    """Filters for the search pipeline: {modality, body_part, date_from, date_to} (only those set)."""
    out = {}
    modality = (args.get("modality") or "").strip().upper()
    if modality:
        if modality not in MODALITIES:
            raise InputError(f"Unknown modality '{modality[:8]}'.", f"Use one of: {', '.join(MODALITIES)}.")
        out["modality"] = modality
    body_part = (args.get("body_part") or "").strip().upper()
    if body_part:
        if len(body_part) > 32 or not body_part.replace("_", "").replace(" ", "").isalnum():
            raise InputError("The body part is not valid.", "Use a DICOM Body Part Examined term like CHEST.")
        out["body_part"] = body_part
    for key in ("date_from", "date_to"):
        value = _date(args.get(key), key)
        if value:
            out[key] = value
    if out.get("date_from") and out.get("date_to") and out["date_from"] > out["date_to"]:
        raise InputError("'date_from' is after 'date_to'.", "Swap the two dates.")
    return out


def parse_k(value, default: int = 10) -> int:
    if value in (None, ""):
        return default
    try:
        k = int(value)
    except (TypeError, ValueError):
        raise InputError("'k' must be a whole number.", f"Use 1..{MAX_K}.") from None
    if not 1 <= k <= MAX_K:
        raise InputError(f"'k' must be between 1 and {MAX_K}.", f"Use 1..{MAX_K}.")
    return k


def check_text(text: str | None) -> str:
    text = (text or "").strip()
    if not text:
        raise InputError("The query is empty.", "Type what you are looking for, e.g. 'nodule right upper lobe'.")
    if len(text) > MAX_QUERY:
        raise InputError(f"The query is longer than {MAX_QUERY} characters.", "Shorten the query.")
    return text


def _num(value: str | None) -> float | None:
    if value in (None, ""):
        return None
    try:
        v = float(value)
    except ValueError:
        raise InputError("A size must be a number of millimetres.", "Type e.g. 20 for 2 cm.") from None
    if not 0 < v < 1000:
        raise InputError("A size must be between 0 and 1000 mm.", "Type e.g. 20 for 2 cm.")
    return v


def _fmt(v: float) -> str:
    return f"{v:g}"


def compose_query(form) -> str | None:
    """Rebuild a query phrase from chip fields ``c<i>_finding`` etc.; None when no chip was sent."""
    phrases = []
    for i in range(MAX_CHIPS):
        finding = form.get(f"c{i}_finding")
        if finding is None:
            continue
        if finding not in FINDING_TYPES:
            raise InputError("The finding is not in the vocabulary.", "Pick a finding from the list.")
        site = form.get(f"c{i}_site") or ""
        density = form.get(f"c{i}_density") or ""
        if site and site not in SITES:
            raise InputError("The site is not in the vocabulary.", "Pick a site from the list.")
        if density and density not in DENSITIES:
            raise InputError("The density is not in the vocabulary.", "Pick a density from the list.")
        lo, hi = _num(form.get(f"c{i}_size_min")), _num(form.get(f"c{i}_size_max"))
        words = []
        if form.get(f"c{i}_negated"):
            words.append("no")
        if lo is not None and hi is not None:
            words.append(f"{_fmt(lo)} mm" if lo == hi else f"{_fmt(lo)}-{_fmt(hi)} mm")
        elif lo is not None:
            words.append(f">{_fmt(lo)} mm")
        elif hi is not None:
            words.append(f"<{_fmt(hi)} mm")
        if density and density != finding:
            words.append(density)
        words.append(finding)
        if site:
            words += ["in", "the", site]
        phrases.append(" ".join(words))
    return ", ".join(phrases) if phrases else None


def chips_from_parse(parse: dict | None) -> list[dict]:
    """Editable chip values from a parse dict (issue 5 schema)."""
    chips = []
    for f in (parse or {}).get("findings", [])[:MAX_CHIPS]:
        size = f.get("size_mm") or {}
        chips.append({"finding": (f.get("concept") or {}).get("term"), "site": (f.get("site") or {}).get("term"),
                      "size_min": size.get("min"), "size_max": size.get("max"), "density": f.get("density"),
                      "negated": bool(f.get("negated"))})
    return chips

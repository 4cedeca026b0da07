"""The terminology's ``medsearch doctor`` check."""

from __future__ import annotations

from medsearch.errors import MedsearchError


def doctor_check(inst, Check):
    """Load the configured terminology (core and imports) and report its size, or why it does not load."""
    from medsearch.query.parser import get_parser

    try:
        term = get_parser(inst.settings).term
    except MedsearchError as exc:
        return Check("terminology", "fail", exc.problem, exc.fix or "")
    core = sum(c.core for c in term.concepts.values())
    imported = len(term.concepts) - core
    detail = f"{core} concepts, {len(term.qualifiers)} qualifier values"
    if imported or term.skipped_imports:
        detail += f"; {imported} imported concepts, {term.skipped_imports} imported synonyms skipped (clashes)"
    return Check("terminology", "ok", detail)

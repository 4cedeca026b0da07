"""Query understanding: radiology phrases (English, Chinese, mixed) to structured findings.

    >>> from medsearch.query import parse
    >>> parse("LLL 磨玻璃结节 2cm").canonical
    'left lower lobe 20 mm ground-glass nodule'

Nothing is built at import: the terminology, the automaton and jieba load on the
first call and are cached.
"""

from __future__ import annotations

from medsearch.query.model import ParsedFinding, ParsedQuery, Ref

__all__ = ["ParsedFinding", "ParsedQuery", "Ref", "canonical_phrase", "get_parser", "parse", "site_within"]


def parse(text: str) -> ParsedQuery:
    """Parse ``text`` with the configured terminology (see :func:`get_parser`)."""
    from medsearch.query.parser import default_parser

    return default_parser().parse(text)


def get_parser(settings=None):
    from medsearch.query.parser import get_parser as _get

    return _get(settings)


def canonical_phrase(finding: dict) -> str:
    """The canonical phrase of a label finding or a parsed finding (see medsearch.query.canonical)."""
    from medsearch.query.canonical import canonical_phrase as _phrase

    return _phrase(finding)


def site_within(site: str, query_site: str) -> bool:
    """True when ``site`` is ``query_site``, a kind of it or a part of it, by the terminology's
    is-a and part-of links: "right lower lobe" is within "right lung", "lung" and "lower lobe".
    Sites are preferred terms or concept IDs; an unknown site is within nothing but itself."""
    from medsearch.query.parser import default_parser

    term = default_parser().term
    a, b = term.find(site), term.find(query_site)
    if a is None or b is None:
        return site == query_site
    return term.within(a.id, b.id)

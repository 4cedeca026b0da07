"""Sizes in English and Chinese radiology text, as millimetre bounds.

Grammar (on normalised text):

- a measurement: ``2 cm``, ``20mm``, ``2.1 x 1.8 cm``, ``1.2cm×1.0cm``, ``2-cm`` — several
  dimensions keep the largest; min = max;
- a range: ``2-3 cm``, ``2 to 3 cm``, ``2~3cm``, ``2至3厘米``, ``between 2 and 3 cm`` — min and max;
- a comparison: ``>2 cm``, ``大于2厘米``, ``at least 8 mm``, ``2cm以上`` set min;
  ``<5 mm``, ``小于5毫米``, ``up to 6 mm``, ``5mm以下`` set max;
- ``sub-centimeter`` / ``subcentimetre`` / ``亚厘米`` set max 10.

Units: mm, cm and their long forms, 毫米, 厘米, 公分, 釐米.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_NUM = r"\d+(?:\.\d+)?"
_UNIT = r"(?:millimet(?:er|re)s?|centimet(?:er|re)s?|mm|cm|毫米|厘米|公分|釐米)"
_DIM_SEP = r"\s*(?:x|×|\*|by)\s*"
_RANGE_SEP = r"\s*(?:-|~|to|至|到)\s*"
_MIN_WORDS = (r"(?:>=|≥|>|greater than|larger than|bigger than|more than|over|above|exceeding|at least|"
              r"大于或等于|大于等于|大于|超过|不小于|至少|大於|超過|不小於)")
_MAX_WORDS = (r"(?:<=|≤|<|less than|smaller than|under|below|up to|no more than|"
              r"小于或等于|小于等于|小于|不超过|不大于|小於|不超過|不大於)")

_MEASURE = re.compile(
    rf"(?P<cmp_min>{_MIN_WORDS}\s*)?(?P<cmp_max>{_MAX_WORDS}\s*)?(?P<between>between\s+)?(?P<from>from\s+)?"
    rf"(?P<a>{_NUM})(?:\s*-?\s*(?P<ua>{_UNIT}))?"
    rf"(?:(?P<range>{_RANGE_SEP}|(?(between)\s+and\s+|(?!)))(?P<b>{_NUM})(?:\s*-?\s*(?P<ub>{_UNIT}))?)?"
    rf"(?P<dims>(?:{_DIM_SEP}{_NUM}(?:\s*-?\s*{_UNIT})?){{0,2}})"
    rf"(?P<suffix>\s*(?:以上|以下|以内|或以上|或更大|或更小|or more|or larger|or greater|or less|or smaller))?"
)
_DIM_NUM = re.compile(rf"({_NUM})(?:\s*-?\s*({_UNIT}))?")
_SUBCM = re.compile(r"sub ?centimet(?:er|re)|sub ?cm|subcentimet(?:er|re)|亚厘米|亞厘米|亚公分|亞公分|亚釐米")


@dataclass(frozen=True)
class SizeSpan:
    start: int
    end: int
    min: float | None
    max: float | None


def _mm(value: str, unit: str | None) -> float:
    v = float(value)
    if unit and (unit.startswith("c") or unit in ("厘米", "公分", "釐米")):
        v *= 10.0
    return round(v, 2)


def find_sizes(text: str) -> list[SizeSpan]:
    """All size expressions in normalised ``text``, left to right."""
    out: list[SizeSpan] = []
    for m in _SUBCM.finditer(text):
        out.append(SizeSpan(m.start(), m.end(), None, 10.0))
    taken = [(s.start, s.end) for s in out]
    for m in _MEASURE.finditer(text):
        if any(s <= m.start("a") < e for s, e in taken):
            continue
        dims = _DIM_NUM.findall(m.group("dims") or "")
        units = [m.group("ua"), m.group("ub"), *[u for _, u in dims]]
        unit = next((u for u in reversed(units) if u), None)
        if unit is None:
            continue  # a bare number is not a size
        if m.start("a") > 0 and (text[m.start("a") - 1].isalpha() and text[m.start("a") - 1].isascii()):
            continue  # "s6", "t12": an identifier, not a measurement
        start = m.start() if (m.group("cmp_min") or m.group("cmp_max")) else m.start("a")
        a = _mm(m.group("a"), m.group("ua") or unit)
        if m.group("b") is not None:
            b = _mm(m.group("b"), m.group("ub") or unit)
            # "grown from 6 mm to 9 mm" is a change; the size is the current one
            lo, hi = (b, b) if m.group("from") else (min(a, b), max(a, b))
        else:
            vals = [a] + [_mm(v, u or unit) for v, u in dims]
            lo = hi = max(vals)
        suffix = (m.group("suffix") or "").strip()
        if m.group("cmp_min") or suffix in ("以上", "或以上", "或更大", "or more", "or larger", "or greater"):
            hi = None
        elif m.group("cmp_max") or suffix in ("以下", "以内", "或更小", "or less", "or smaller"):
            lo = None
        out.append(SizeSpan(start, m.end(), lo, hi))
    return sorted(out, key=lambda s: s.start)

"""The structured parse: findings with decoupled attributes, a canonical phrase, leftovers."""

from __future__ import annotations

from dataclasses import dataclass, field


def _mm(x: float | None) -> float | int | None:
    """Whole millimetres as integers in JSON ("2 cm" gives 20), others as they are (12.5)."""
    return int(x) if x is not None and float(x).is_integer() else x


@dataclass(frozen=True)
class Ref:
    """A concept by stable ID and preferred term."""

    id: str
    term: str

    def to_dict(self) -> dict:
        return {"id": self.id, "term": self.term}


@dataclass
class ParsedFinding:
    concept: Ref
    site: Ref | None = None
    laterality: str | None = None
    size_min: float | None = None
    size_max: float | None = None
    density: str | None = None
    shape: str | None = None
    count: str | None = None
    change: str | None = None
    negated: bool = False

    @property
    def has_size(self) -> bool:
        return self.size_min is not None or self.size_max is not None

    def to_dict(self) -> dict:
        return {
            "concept": self.concept.to_dict(),
            "site": self.site.to_dict() if self.site else None,
            "laterality": self.laterality,
            "size_mm": {"min": _mm(self.size_min), "max": _mm(self.size_max)} if self.has_size else None,
            "density": self.density,
            "shape": self.shape,
            "count": self.count,
            "change": self.change,
            "negated": self.negated,
        }


@dataclass
class ParsedQuery:
    findings: list[ParsedFinding] = field(default_factory=list)
    canonical: str = ""
    unmatched: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"findings": [f.to_dict() for f in self.findings], "canonical": self.canonical,
                "unmatched": list(self.unmatched)}

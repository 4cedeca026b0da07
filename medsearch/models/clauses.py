"""Canonical clauses: splitting a canonical text, and generating labelled clauses for training.

The terminology writes one canonical phrase per finding and joins several with
", " (:mod:`medsearch.query.canonical`).  The ``ctseg`` text side encodes each
clause on its own and sums them, so a report is the *set* of its findings; a
negated clause ("no pneumothorax") says what is absent and adds nothing.

:func:`clause_examples` writes clauses from random finding specs through the
terminology's own phrase writer, with the lobes, density and size range each
clause is compatible with: the clause head's training data.
"""

from __future__ import annotations

import functools
import math
import random

from medsearch import vocab
from medsearch.models.heads import DENSITY_TYPES
from medsearch.models.phrases import NORMAL_PHRASE, SIZED_TYPES


def split_clauses(canonical: str) -> list[str]:
    """The positive clauses of a canonical text (negated ones and the normal phrase dropped)."""
    out = []
    for part in (canonical or "").split(","):
        part = part.strip()
        if not part or part == NORMAL_PHRASE or part == "no" or part.startswith("no "):
            continue
        out.append(part)
    return out


def negated_clauses(canonical: str) -> list[str]:
    """The findings a canonical text negates ("no pneumothorax" -> "pneumothorax"), for the likelihood scorer
    (:mod:`medsearch.models.likelihood`), which counts them as absent."""
    out = []
    for part in (canonical or "").split(","):
        part = part.strip()
        if part.startswith("no ") and part != NORMAL_PHRASE and part[3:].strip():
            out.append(part[3:].strip())
    return out


def is_complete(canonical: str) -> bool:
    """Whether a canonical text describes a whole study (a report): it says what is absent, or that nothing
    is there.  A short query ("right lower lobe nodule") says nothing about the rest of the chest."""
    parts = [p.strip() for p in (canonical or "").split(",")]
    return any(p == NORMAL_PHRASE or p.startswith("no ") for p in parts)


@functools.lru_cache(maxsize=1)
def _site_lobes() -> dict[str, tuple[int, ...]]:
    """Lobes (indices in vocab.LOBES) each anatomy concept of the terminology covers; () = no lobe of its own."""
    from medsearch.query.parser import default_parser

    term = default_parser().term
    out: dict[str, tuple[int, ...]] = {}
    for c in term.concepts.values():
        if c.kind != "anatomy":
            continue
        node, seen = c, set()
        lobes: tuple[int, ...] = ()
        while node is not None and node.id not in seen:
            seen.add(node.id)
            name = "left upper lobe" if node.term == vocab.LINGULA else node.term
            if name in vocab.LOBES:
                lobes = (vocab.LOBES.index(name),)
                break
            if name in ("right lung", "left lung"):
                side = name.split()[0]
                lobes = tuple(i for i, lobe in enumerate(vocab.LOBES) if vocab.LOBE_SIDE[lobe] == side)
                break
            if name in ("upper lobe", "lower lobe"):
                lobes = tuple(i for i, lobe in enumerate(vocab.LOBES) if lobe.endswith(name))
                break
            node = term.concepts.get(node.part_of[0]) if node.part_of else None
        out[c.term] = lobes
    return out


def lobes_for(site: str | None, laterality: str | None) -> list[int]:
    """Lobes a clause's site and laterality cover (every lobe when they say nothing)."""
    lobes = list(_site_lobes().get(site or "", ()))
    if laterality == "bilateral" and lobes:
        # "bilateral lower lobes": the same lobe on both sides
        names = {vocab.LOBES[i].split(" ", 1)[1] for i in lobes}
        lobes = [i for i, lobe in enumerate(vocab.LOBES) if lobe.split(" ", 1)[1] in names]
    elif laterality in ("left", "right"):
        same_side = [i for i in lobes if vocab.LOBE_SIDE[vocab.LOBES[i]] == laterality]
        lobes = same_side or [i for i, lobe in enumerate(vocab.LOBES) if vocab.LOBE_SIDE[lobe] == laterality]
    return sorted(set(lobes)) or list(range(len(vocab.LOBES)))


_LUNG_SITES = ("right upper lobe", "right middle lobe", "right lower lobe", "left upper lobe", "left lower lobe",
               "lingula", "right lung", "left lung", "upper lobe", "lower lobe")


def _random_size(rng: random.Random) -> tuple[float | None, float | None]:
    r = rng.random()
    mm = round(math.exp(rng.uniform(math.log(2.5), math.log(80))), rng.choice([0, 0, 1]))
    if r < 0.7:
        return mm, mm
    if r < 0.85:
        return mm, round(mm * rng.uniform(1.2, 2.0))
    return (mm, None) if r < 0.93 else (None, mm)


def random_clause(rng: random.Random) -> tuple[str, dict]:
    """One canonical clause and its spec (type or None, lobes, density, size_min, size_max)."""
    from medsearch.query.canonical import phrase
    from medsearch.query.parser import default_parser

    term = default_parser().term
    others = sorted(c.term for c in term.concepts.values() if c.kind == "finding" and c.term not in vocab.FINDING_TYPES)
    anatomy = sorted(_site_lobes())
    ftype = rng.choice(vocab.FINDING_TYPES) if rng.random() < 0.88 else rng.choice(others)
    site = laterality = density = shape = count = change = None
    if ftype in ("pleural effusion", "pneumothorax"):
        site = rng.choice([None, None, "pleura"])
        laterality = rng.choice(["left", "right", "bilateral", None])
    elif ftype == "emphysema":
        site = rng.choice([None, "lung", "right lung", "left lung", "upper lobe"])
        laterality = "bilateral" if site in ("lung", "upper lobe") and rng.random() < 0.6 else None
    elif rng.random() < 0.85:
        site = rng.choice(_LUNG_SITES) if rng.random() < 0.8 else rng.choice(anatomy)
        own = vocab.LOBE_SIDE.get(site)
        laterality = "bilateral" if rng.random() < 0.1 and site in ("upper lobe", "lower lobe", "lung") else \
            rng.choice([own, own, "left", "right"]) if own is None and rng.random() < 0.5 else None
    if ftype in DENSITY_TYPES and rng.random() < 0.55:
        density = rng.choice(vocab.DENSITIES)
    lo = hi = None
    if (ftype in SIZED_TYPES and rng.random() < 0.6) or rng.random() < 0.08:
        lo, hi = _random_size(rng)
    if ftype in ("nodule", "mass") and rng.random() < 0.25:
        shape = rng.choice(vocab.SHAPES)
    if rng.random() < 0.12:
        count = "multiple"
    if rng.random() < 0.1:
        change = rng.choice(["new", "growing", "stable"])
    cid = term.find(ftype).id
    sid = term.find(site).id if site else None
    text = phrase(term, cid, sid, laterality, lo, hi, density, shape, count, change)
    spec = {"type": ftype if ftype in vocab.FINDING_TYPES else None, "lobes": lobes_for(site, laterality),
            "density": density, "size_min": lo, "size_max": hi}
    return text, spec


def clause_examples(n: int, seed: int) -> list[tuple[str, dict]]:
    """``n`` random labelled clauses (deterministic for ``seed``)."""
    rng = random.Random(seed)
    return [random_clause(rng) for _ in range(n)]

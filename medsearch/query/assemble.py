"""From matched tokens to findings: negation scope, attaching qualifiers, sites and sides.

Per sentence (split at . ; : ! ? 。 ； and new lines):

1. **Negation.** A pre-negation cue ("no", "without", 无, 未见) negates the findings
   after it until a scope break ("but", 但, "there is", 见), the sentence end, or a
   comma that is not followed by another finding ("no effusion, pneumothorax or
   consolidation" stays negated; "无胸腔积液，右下肺结节" does not).  A post-negation
   cue ("is absent", "not seen") negates the findings of its clause before it.
2. **Attachment.** The sentence is cut into chunks at commas and conjunctions.  In a chunk, qualifiers before the first finding belong to it; after the
   last finding, to the last.  Between two findings, postmodifiers (size, shape,
   change) and anything after a link word ("in", "measuring", 位于) belong to the
   finding before, the rest to the finding after.  A chunk without a finding
   ("，大小约1.2cm×1.0cm") belongs to the last finding of the sentence, else to the next.
3. **Sites and sides.** "right" + "lower lobe" is "right lower lobe"; "bilateral" +
   "lower lobe" stays "lower lobe", bilateral; "left" and "right" together are
   bilateral.  A finding with several sites becomes one finding per site, except that a
   site containing another one of them is dropped ("双肺结节，右肺下叶较大" → right lower lobe).
4. **Merging.** Across the text, a finding that agrees with an earlier one on every
   attribute the two both have (same concept, same negation) is folded into it, so the
   impression repeating the findings adds nothing.

Sites in a chunk with a distribution cue ("upper lobe predominant", "以上叶为著") are dropped, and a
finding with a ``default_site`` (pleural effusion, pneumothorax: the pleura) keeps only sites within it,
taking the side of the others ("right apical pneumothorax" is right, not right upper lobe).

"钙化结节": a concept with ``as_density`` directly before a countable finding is that
finding's density.  A bare number before a countable finding is its count ("2 nodules").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from medsearch.query.model import ParsedFinding, Ref
from medsearch.query.terminology import Terminology

POSTMOD_AXES = ("size", "shape", "change")


@dataclass
class Tok:
    start: int
    end: int
    kind: str  # F finding, S site, Q qualifier, Z size, N number, CUE, SEP, END
    data: Any = None


@dataclass
class _Builder:
    concept: str
    negated: bool = False
    fixed: dict = field(default_factory=dict)  # qualifiers fixed by the surface form ("GGN")
    quals: dict = field(default_factory=dict)
    lats: list = field(default_factory=list)
    sites: list = field(default_factory=list)  # (concept id, fixed qualifiers)
    size: tuple | None = None

    def attach(self, tok: Tok) -> None:
        if tok.kind == "S":
            self.sites.append(tok.data)
        elif tok.kind == "Z":
            self.size = self.size or tok.data
        elif tok.kind == "Q":
            axis, value = tok.data
            if axis == "laterality":
                self.lats.append(value)
            else:
                self.quals.setdefault(axis, value)


def _axis(tok: Tok) -> str:
    if tok.kind == "Z":
        return "size"
    if tok.kind == "Q":
        return tok.data[0]
    return tok.kind


def _is_qual(tok: Tok) -> bool:
    return tok.kind in ("S", "Q", "Z")


def _roles(tok: Tok) -> frozenset:
    return tok.data if tok.kind == "CUE" else frozenset()


def _negate(sent: list[Tok], builders: dict[int, _Builder]) -> None:
    active = False
    clause: list[int] = []
    for k, tok in enumerate(sent):
        roles = _roles(tok)
        if "negation_pre" in roles:
            active = True
        elif "scope_break" in roles:
            active, clause = False, []
        if "negation_post" in roles:
            for i in clause:
                builders[i].negated = True
        if tok.kind == "SEP":
            clause = []
            nxt = next((t for t in sent[k + 1:] if t.kind != "CUE" or _roles(t) - {"stopwords"}), None)
            if nxt is None or not (nxt.kind == "F" or "conjunction" in _roles(nxt) or "negation_pre" in _roles(nxt)):
                active = False
        if tok.kind == "F":
            builders[id(tok)].negated = active or builders[id(tok)].negated
            clause.append(id(tok))


def _attach(sent: list[Tok], builders: dict[int, _Builder]) -> list[Tok]:
    """Attach qualifiers to findings; return the qualifiers left over (sentences without findings)."""
    chunks: list[list[Tok]] = [[]]
    joined: list[bool] = []  # chunk k is joined to chunk k+1 by a conjunction ("RLL and LUL nodules")
    for tok in sent:
        roles = _roles(tok)
        # a scope break ("见", "there is") ends a negation, not a noun phrase: it does not cut chunks
        if tok.kind == "SEP" or "conjunction" in roles:
            joined.append(tok.kind != "SEP")
            chunks.append([])
        elif tok.kind in ("F", "S", "Q", "Z") or roles & {"link_back", "distribution"}:
            chunks[-1].append(tok)
    joined.append(False)
    last: _Builder | None = None
    pending: list[Tok] = []
    orphans: list[Tok] = []
    for chunk, to_next in zip(chunks, joined):
        if any("distribution" in _roles(t) for t in chunk):
            chunk = [t for t in chunk if t.kind != "S"]  # "upper lobe predominant": not the extent
        fs = [k for k, t in enumerate(chunk) if t.kind == "F"]
        quals = [t for t in chunk if _is_qual(t)]
        if not fs:
            if last is not None:
                for t in quals:
                    last.attach(t)
            else:
                pending.extend(quals)
                if not to_next:  # "heart size normal, no effusion": the heart is not the effusion's site
                    orphans.extend(pending)
                    pending = []
            continue
        first = builders[id(chunk[fs[0]])]
        for t in pending + [t for t in chunk[:fs[0]] if _is_qual(t)]:
            first.attach(t)
        pending = []
        for a, b in zip(fs, fs[1:]):
            before, after = builders[id(chunk[a])], builders[id(chunk[b])]
            back, prev_link = True, False
            for t in chunk[a + 1:b]:
                if "link_back" in _roles(t):
                    back = prev_link = True
                    continue
                if back and (_axis(t) in POSTMOD_AXES or prev_link):
                    before.attach(t)
                else:
                    back = False
                    after.attach(t)
                prev_link = False
        last = builders[id(chunk[fs[-1]])]
        for t in chunk[fs[-1] + 1:]:
            if _is_qual(t):
                last.attach(t)
    return orphans + pending


def _resolve(b: _Builder, term: Terminology) -> list[ParsedFinding]:
    quals = dict(b.fixed)
    for k, v in b.quals.items():
        quals.setdefault(k, v)
    if b.negated and "count" in b.fixed and "count" not in b.quals:
        quals.pop("count")  # "no nodules" is not "no multiple nodules"
    lats = b.lats + ([quals.pop("laterality")] if "laterality" in quals else [])
    lat = "bilateral" if {"left", "right"} <= set(lats) else (lats[0] if lats else None)
    concept = term.concepts[term.core_of(b.concept)]
    sites = b.sites
    if concept.default_site:
        # a pleural finding is in the pleura: "right apical pneumothorax" keeps the side, not the lobe
        inside = [s for s in sites if term.within(term.core_of(s[0]), concept.default_site)]
        for cid, fixed in sites:
            if (cid, fixed) not in inside and lat is None:
                lat = dict(fixed).get("laterality") or term.laterality_of(cid) or None
        sites = inside
    resolved: list[tuple[str, str | None]] = []
    for cid, fixed in sites:
        own = term.laterality_of(cid)  # its own side, or a sided whole's (an imported part of the RLL)
        fixed_lat = dict(fixed).get("laterality")
        if own:
            site_lat = own
        elif fixed_lat:
            site_lat = fixed_lat
        elif lat in ("left", "right"):
            cid, site_lat = term.sided.get((cid, lat), cid), lat
        else:
            site_lat = lat
        cid = term.core_of(cid)
        if all(r[0] != cid for r in resolved):
            resolved.append((cid, site_lat))
    # a site that contains another site of the same finding is the vaguer mention of it
    resolved = [r for r in resolved if not any(o[0] != r[0] and term.within(o[0], r[0]) for o in resolved)]
    if not resolved:
        resolved = [(None, lat)]
    out = []
    for cid, site_lat in resolved:
        out.append(ParsedFinding(
            concept=Ref(concept.id, concept.term),
            site=Ref(cid, term.concepts[cid].term) if cid else None,
            laterality=site_lat, size_min=b.size[0] if b.size else None, size_max=b.size[1] if b.size else None,
            density=quals.get("density"), shape=quals.get("shape"), count=quals.get("count"),
            change=quals.get("change"), negated=b.negated))
    return out


_FIELDS = ("site", "laterality", "size_min", "size_max", "density", "shape", "count", "change")


def merge(findings: list[ParsedFinding]) -> list[ParsedFinding]:
    """Fold each finding into an earlier one it does not contradict (same concept and negation)."""
    out: list[ParsedFinding] = []
    for f in findings:
        for g in out:
            if g.concept != f.concept or g.negated != f.negated:
                continue
            if all(getattr(g, k) is None or getattr(f, k) is None or getattr(g, k) == getattr(f, k) for k in _FIELDS):
                for k in _FIELDS:
                    if getattr(g, k) is None:
                        setattr(g, k, getattr(f, k))
                break
        else:
            out.append(f)
    return out


def assemble(sentences: list[list[Tok]], term: Terminology) -> tuple[list[ParsedFinding], list[Tok]]:
    """Findings of all sentences (merged), and the qualifiers no finding took."""
    findings: list[ParsedFinding] = []
    orphans: list[Tok] = []
    for sent in sentences:
        builders: dict[int, _Builder] = {}
        for tok in sent:
            if tok.kind == "F":
                cid, fixed = tok.data
                builders[id(tok)] = _Builder(cid, fixed=dict(fixed))
        _negate(sent, builders)
        orphans.extend(_attach(sent, builders))
        for tok in sent:
            if tok.kind == "F":
                findings.extend(_resolve(builders[id(tok)], term))
    return merge(findings), orphans

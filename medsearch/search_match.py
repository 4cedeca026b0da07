"""Attribute matching of a parsed query against a series' predicted findings,
and the adaptive weights that combine it with the embedding scores.

This is the seed's "feature decoupling" and "dynamic weighting": the query is
decomposed (by :mod:`medsearch.query`) into findings with a site, laterality,
size, density and negation, and each attribute is matched on its own against
the findings the attribute heads predicted for a series (``findings`` rows).

* A site matches through the part-of hierarchy (:func:`medsearch.vocab.site_within`):
  a finding in the right lower lobe matches "right lung".  A query site finer
  than the model predicts (a segment within a lobe) gets partial credit, since
  the heads cannot tell segments apart.
* A negated finding ("no pleural effusion") **excludes** every series in which
  the model predicts it (probability >= ``NEGATION_THRESHOLD``).  In a query of
  ``REPORT_FINDINGS`` findings or more (a pasted report, whose pertinent
  negatives "no pneumothorax, no nodules" are said as a matter of form) only a
  confident prediction (>= ``NEGATION_EXCLUDE``) excludes; a weaker one counts
  against the series, so that a weak detector's false positive does not drop
  the very study the report describes (docs/index-and-search.md).
* Weights adapt to the query: a one-word query relies on the global embedding;
  each further attribute moves weight to attribute and region matching.

All functions are pure: they take plain dicts (the parse's ``to_dict()`` and
finding rows as dicts), so they are tested without a database or a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from medsearch import vocab

#: A predicted finding at or above this probability contradicts a negated query finding ...
NEGATION_THRESHOLD = 0.5
#: ... and excludes the series, unless the query is a report (this many findings or more) ...
REPORT_FINDINGS = 4
#: ... where only a prediction at or above this probability excludes.
NEGATION_EXCLUDE = 0.9
#: Attribute weight of a report-length query (``REPORT_FINDINGS`` findings or more).  The ``ctseg``
#: embedding is itself the projection of the tower's per-(type, lobe) attribute slots, so a report's
#: findings are already in the global similarity; matching them again against the thresholded
#: findings lost reports (R@10 0.800 against the dual tower's 0.839 over three benchmark archives;
#: 0.836 at this weight; docs/index-and-search.md, "Report queries").
REPORT_ATTRIBUTE_WEIGHT = 0.1
#: Relative tolerance on size bounds: predictions are size *bins*, and reports round.
SIZE_TOLERANCE = 0.15
#: Credit for a query site finer than the predicted one (a segment inside the predicted lobe).
FINER_SITE_CREDIT = 0.5
#: Query finding concepts that the heads predict as a density, not as a type.
DENSITY_CONCEPTS = {"calcification": "calcified"}
#: Attributes of a query finding that are matched one by one.
ATTRIBUTES = ("site", "laterality", "size", "density")


@dataclass
class Match:
    """The attribute match of one series.

    Attributes:
        score: in [0, 1], the mean over positive query findings of ``probability x fraction of attributes
            met``, times the share of negated query findings that the series does not contradict.
        excluded: True when a negated query finding is predicted in the series (in a report-length query:
            predicted confidently).
        matched / unmatched: human-readable attribute values ("nodule", "left lower lobe", "no pleural effusion").
        best: for each positive query finding, the predicted finding row that matched it best (or None).
        placed: for each positive query finding, whether that row also lies where the query says (its site
            and side, where the query names them): only then is its key slice the query's.
    """

    score: float = 0.0
    excluded: bool = False
    matched: list[str] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)
    best: list[dict | None] = field(default_factory=list)
    placed: list[bool] = field(default_factory=list)


def _term(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, dict):
        return value.get("term")
    return str(value)


def query_findings(parsed: dict) -> tuple[list[dict], list[dict]]:
    """Split a parse into (positive, negated) findings, flattened to plain terms."""
    pos, neg = [], []
    for f in parsed.get("findings") or []:
        flat = {
            "concept": _term(f.get("concept")),
            "site": _term(f.get("site")),
            "laterality": f.get("laterality"),
            "size_mm": f.get("size_mm"),
            "density": f.get("density"),
        }
        if not flat["concept"]:
            continue
        if flat["laterality"] and flat["site"] and vocab.LOBE_SIDE.get(flat["site"]) == flat["laterality"]:
            # the parser fills the side of a lobe in; it is implied by the site, not a second attribute
            flat["laterality"] = None
        (neg if f.get("negated") else pos).append(flat)
    return pos, neg


def n_attributes(qf: dict) -> int:
    """How many attributes a query finding constrains (besides its concept)."""
    size = qf.get("size_mm") or {}
    return sum([bool(qf.get("site")), bool(qf.get("laterality")),
                size.get("min") is not None or size.get("max") is not None, bool(qf.get("density"))])


def complexity(parsed: dict) -> int:
    """Query complexity: attribute constraints, plus one per finding beyond the first, plus negations."""
    pos, neg = query_findings(parsed)
    return sum(n_attributes(q) for q in pos) + max(0, len(pos) - 1) + len(neg)


def weights(parsed: dict, have_region: bool = True) -> dict[str, float]:
    """Weights of the score components, adapted to the query's complexity.

    * no recognised finding (free text): the global embedding (and region) only;
    * one bare concept ("nodule"): mostly global, a little attribute evidence;
    * each further attribute moves weight from the global embedding to attribute
      matching, up to 0.6; region matching (the cross-attention reranker) holds 0.25;
    * a report-length query (``REPORT_FINDINGS`` findings or more, negated ones included) gives
      attribute matching only :data:`REPORT_ATTRIBUTE_WEIGHT`: its many findings are what the
      global embedding already encodes, one slot each.

    Returns:
        {"global", "region", "attributes"} summing to 1 (region 0 when ``have_region`` is False).
    """
    pos, neg = query_findings(parsed)
    if not pos and not neg:
        w = {"global": 0.8, "region": 0.2, "attributes": 0.0}
    else:
        c = complexity(parsed)
        attrs = min(0.6, 0.2 + 0.15 * c) if len(pos) + len(neg) < REPORT_FINDINGS else REPORT_ATTRIBUTE_WEIGHT
        region = 0.2 if c == 0 else 0.25
        w = {"global": 1.0 - attrs - region, "region": region, "attributes": attrs}
    if not have_region:
        w["global"] += w["region"]
        w["region"] = 0.0
    return {k: round(v, 6) for k, v in w.items()}


# --------------------------------------------------------------------------- one attribute at a time
def _concept_ok(concept: str, pred: dict) -> bool:
    if concept in DENSITY_CONCEPTS:
        return pred.get("density") == DENSITY_CONCEPTS[concept]
    return pred.get("finding_type", pred.get("type")) == concept


def site_score(pred_site: str | None, query_site: str) -> float:
    """1 when the predicted site lies within the query site, partial when the query is finer."""
    if not pred_site:
        return 0.0
    if vocab.site_within(pred_site, query_site):
        return 1.0
    if query_site not in vocab.SITES and query_site.endswith(f"of {pred_site}"):
        # a segment "... of right lower lobe" within the predicted lobe
        return FINER_SITE_CREDIT
    if vocab.site_within(query_site, pred_site) and query_site != pred_site:
        return FINER_SITE_CREDIT
    return 0.0


def _side(pred: dict) -> str | None:
    return pred.get("laterality") or vocab.LOBE_SIDE.get(pred.get("site") or "")


def laterality_score(pred: dict, query_lat: str) -> float:
    side = _side(pred)
    if side is None:
        return 0.0
    if query_lat == "bilateral":
        return 1.0 if side == "bilateral" else 0.0
    return 1.0 if side in (query_lat, "bilateral") else 0.0


def size_score(pred_mm: float | None, bounds: dict) -> float:
    """1 inside the (tolerant) bounds, decaying linearly to 0 at 50% outside them."""
    if pred_mm is None:
        return 0.0
    lo, hi = bounds.get("min"), bounds.get("max")
    miss = 0.0
    if lo is not None and pred_mm < lo * (1 - SIZE_TOLERANCE):
        miss = (lo * (1 - SIZE_TOLERANCE) - pred_mm) / max(lo, 1e-6)
    if hi is not None and pred_mm > hi * (1 + SIZE_TOLERANCE):
        miss = (pred_mm - hi * (1 + SIZE_TOLERANCE)) / max(hi, 1e-6)
    return max(0.0, 1.0 - 2.0 * miss)


def size_label(bounds: dict) -> str:
    lo, hi = bounds.get("min"), bounds.get("max")
    fmt = lambda v: f"{v:g}"  # noqa: E731
    if lo is not None and hi is not None:
        return f"{fmt(lo)} mm" if lo == hi else f"{fmt(lo)}-{fmt(hi)} mm"
    return f">= {fmt(lo)} mm" if lo is not None else f"<= {fmt(hi)} mm"


def _attribute_scores(qf: dict, pred: dict) -> dict[str, float]:
    out = {}
    if qf.get("site"):
        out["site"] = site_score(pred.get("site"), qf["site"])
    if qf.get("laterality"):
        out["laterality"] = laterality_score(pred, qf["laterality"])
    size = qf.get("size_mm") or {}
    if size.get("min") is not None or size.get("max") is not None:
        out["size"] = size_score(pred.get("size_mm"), size)
    if qf.get("density"):
        out["density"] = 1.0 if pred.get("density") == qf["density"] else 0.0
    return out


def _label(qf: dict, attr: str) -> str:
    if attr == "size":
        return size_label(qf["size_mm"])
    return str(qf[attr])


def match_finding(qf: dict, preds: list[dict]) -> tuple[float, dict | None, dict[str, float]]:
    """Best predicted finding for one positive query finding.

    Returns:
        (score in [0, 1], the best predicted row or None, its per-attribute scores).
    """
    best, best_score, best_attrs = None, 0.0, {}
    n = n_attributes(qf)
    for pred in preds:
        if not _concept_ok(qf["concept"], pred):
            continue
        attrs = _attribute_scores(qf, pred)
        score = float(pred.get("probability", 1.0)) * (1.0 + sum(attrs.values())) / (1.0 + n)
        if best is None or score > best_score:
            best, best_score, best_attrs = pred, score, attrs
    return best_score, best, best_attrs


def prepare(parsed: dict) -> tuple[list[dict], list[dict]]:
    """The flattened (positive, negated) findings of a parse, computed once for many series."""
    return query_findings(parsed)


def match(parsed: dict | tuple, preds: list[dict]) -> Match:
    """Match a parse (``ParsedQuery.to_dict()``, or :func:`prepare` of it) against one series' predicted findings."""
    pos, neg = parsed if isinstance(parsed, tuple) else query_findings(parsed)
    m = Match()
    kept = []
    exclude_at = NEGATION_EXCLUDE if len(pos) + len(neg) >= REPORT_FINDINGS else NEGATION_THRESHOLD
    for qf in neg:
        p_hit = max((float(p.get("probability", 1.0)) for p in preds if _concept_ok(qf["concept"], p)
                     and (not qf.get("site") or site_score(p.get("site"), qf["site"]) > 0)), default=0.0)
        hit = p_hit >= NEGATION_THRESHOLD
        (m.unmatched if hit else m.matched).append(f"no {qf['concept']}")
        m.excluded = m.excluded or p_hit >= exclude_at
        kept.append(0.0 if hit else 1.0)
    scores = []
    for qf in pos:
        score, best, attrs = match_finding(qf, preds)
        scores.append(score)
        m.best.append(best)
        m.placed.append(best is not None and all(attrs[a] >= 0.5 for a in ("site", "laterality") if a in attrs))
        (m.matched if best is not None else m.unmatched).append(qf["concept"])
        for attr in ATTRIBUTES:
            if attr == "size" and not n_attributes({"size_mm": qf.get("size_mm")}):
                continue
            if attr != "size" and not qf.get(attr):
                continue
            (m.matched if attrs.get(attr, 0.0) >= 0.5 else m.unmatched).append(_label(qf, attr))
    if (pos or neg) and not m.excluded:
        # the positive findings' mean, scaled by the share of negated findings the series does not contradict
        m.score = (sum(scores) / len(scores) if pos else 1.0) * (sum(kept) / len(kept) if neg else 1.0)
    return m

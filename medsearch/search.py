"""The search pipeline: from a radiologist's phrase to ranked, explained studies.

Steps of :func:`search` (issue 7, the seed's coarse-to-fine path):

1. parse the text with the terminology (:func:`medsearch.query.parse`);
2. rewrite it as the canonical English phrase;
3. embed the phrase with the text tower;
4. take the ANN top-N (``search_candidates``) from the index; when the user
   filters (modality, dates, body part) the index search is restricted to the
   ids that pass, so a selective filter still fills the page;
5. match each candidate's predicted findings attribute by attribute
   (:mod:`medsearch.search_match`; a negated finding excludes), and apply the
   business rules (restricted patients, the user's allowed sites) and filters
   (:mod:`medsearch.search_rules`);
6. rerank the best ``RERANK_DEPTH`` with the cross-attention model
   (:mod:`medsearch.models.reranker`) when one is installed and was kept (it is
   kept only where it beat the dual tower, see docs/index-and-search.md);
   where no predicted finding located the key slice and region, the slot the query names does (located
   when the series was encoded, :mod:`medsearch.models.slot_locations`); failing that the reranker's
   attention (:mod:`medsearch.models.localize`), or the stored type and region maps conditioned on the
   query's findings, do;
7. combine global, region and attribute scores with weights adapted to the
   query's complexity;
8. aggregate series to studies (a study scores as its best series);
9. return the top k, each with its score components, matched and unmatched
   attributes, key slice and region; record a SearchEvent (pseudonyms only).

The cheap attribute stage runs before the reranker (not after, as listed in the
issue) so that the expensive model sees only candidates that survive negation
and the rules; the final score still combines all three components.

Answers are cached (:mod:`medsearch.search_cache`) and dropped whenever the
index changes.  :func:`similar` and :func:`similar_to_upload` are "more like
this" from an indexed series or from an uploaded series that is de-identified
in memory and never stored.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medsearch import search_match, search_rules
from medsearch.audit.events import SearchEvent
from medsearch.errors import InputError, NotFoundError
from medsearch.search_cache import cache_for, cache_key, rows_for

log = logging.getLogger(__name__)

MAX_QUERY_CHARS = 4000
MAX_K = 200
#: Candidates (after rules and attribute matching) that the cross-attention model rescores.
RERANK_DEPTH = 64


# --------------------------------------------------------------------------- components
@dataclass
class _Reranker:
    model: object  # CrossAttentionReranker
    tokens: object  # TextTokens
    keep: dict  # {"phrase": bool, "report": bool}: where it beat the dual tower

    def helps(self, parsed: dict) -> bool:
        """Whether the reranker was kept for this kind of query (one finding: phrase; several: report)."""
        positive, _ = search_match.query_findings(parsed)
        return bool(self.keep.get("report" if len(positive) >= 2 else "phrase"))


_rerankers: dict[str, _Reranker | None] = {}
_rerankers_lock = threading.Lock()


def model_dir(inst) -> Path | None:
    """The folder of the instance's model (setting ``model_dir``, else the bundled model), if any."""
    try:
        from medsearch.models.registry import model_dir_for
    except ImportError:
        return inst.path(inst.settings.model_dir) if inst.settings.model_dir else None
    return Path(model_dir_for(inst))


def reranker_for(inst) -> _Reranker | None:
    """The instance's reranker, loaded once per process; None when none is installed or it was not kept."""
    from medsearch.models.reranker import RERANKER_FILE, TextTokens, load_reranker

    folder = model_dir(inst)
    key = str(folder)
    with _rerankers_lock:
        if key in _rerankers:
            return _rerankers[key]
        found = None
        if folder is not None and (folder / RERANKER_FILE).exists():
            model, metrics = load_reranker(folder / RERANKER_FILE)
            # "keep only where it helps": training records, per query kind, whether it beat the dual tower
            keep = metrics.get("keep", False)
            keep = keep if isinstance(keep, dict) else {"phrase": bool(keep), "report": bool(keep)}
            # the encoder's MiniLM serves the reranker's tokens too: one copy of the weights in memory
            found = _Reranker(model, TextTokens(minilm=getattr(_encoder(inst), "minilm", None)), keep)
        _rerankers[key] = found
        return found


_settled = False
_settled_lock = threading.Lock()


def _settle_once() -> None:
    """After the first search of a process, move everything loaded so far out of the cyclic GC's way.

    The first search loads what a process keeps for good: the terminology and jieba's dictionary, torch,
    MiniLM, the towers, the reranker and the index, millions of objects in all.  CPython's full (oldest
    generation) collection walks every one of them: about 0.3 s, a few times per hundred queries, which
    was the whole of the search p99 (bench_search: 336 ms; 64 ms once frozen).  ``gc.freeze`` moves
    them to a permanent generation that collections skip; reference counting still frees them as usual.
    """
    global _settled
    with _settled_lock:
        if _settled:
            return
        _settled = True
    import gc

    gc.collect()
    gc.freeze()


def _threads(inst) -> None:
    """Query-time inference threads (setting ``search_threads``).

    The text tower and the reranker multiply small matrices; splitting them over threads costs more in
    hand-offs than it saves, and badly so on a busy machine, so one thread per query is fastest.  The
    server runs queries in parallel on its own threads instead.  torch's setting is process-wide.
    """
    import torch

    want = int(inst.settings.search_threads)
    if want > 0 and torch.get_num_threads() != want:
        torch.set_num_threads(want)


def _encoder(inst):
    from medsearch.models.registry import get_encoder

    return get_encoder(inst)


def _index(inst):
    from medsearch.index import get_index

    return get_index(inst)


def _parse(text: str):
    from medsearch.query import parse

    return parse(text)


# --------------------------------------------------------------------------- input checks
def _check_text(text) -> str:
    if not isinstance(text, str) or not text.strip():
        raise InputError("The search text is empty.", "Type a finding, e.g. 'LLL nodule 2 cm' or '左肺下叶磨玻璃结节'.")
    if len(text) > MAX_QUERY_CHARS:
        raise InputError(f"The search text is longer than {MAX_QUERY_CHARS} characters.",
                         "Shorten it to the findings you look for.")
    return text.strip()


def _check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= MAX_K:
        raise InputError(f"k must be an integer from 1 to {MAX_K}.", "Ask for e.g. k=10.")
    return int(k)


def _actor(user) -> str:
    return str(getattr(user, "name", None) or "anonymous")[:64]


# --------------------------------------------------------------------------- ranking
def _minmax(x: np.ndarray) -> np.ndarray:
    if len(x) == 0:
        return x
    lo, hi = float(x.min()), float(x.max())
    return np.ones_like(x) if hi - lo < 1e-9 else (x - lo) / (hi - lo)


@dataclass
class _Cand:
    vector_id: int
    similarity: float
    row: dict
    match: search_match.Match
    global_: float = 0.0
    region: float | None = None
    heat: np.ndarray | None = None
    score: float = 0.0


def _text_features(inst, canonical: str, want_tokens: bool):
    """(sentence vector, token states, mask) of the canonical phrase.

    With the registry's encoder, MiniLM runs once: its token states feed the reranker and their masked mean
    is the sentence vector that the text projection maps into the shared space (as ``encode_text`` does).
    """
    import torch

    enc = _encoder(inst)
    minilm, model = getattr(enc, "minilm", None), getattr(enc, "model", None)
    if not want_tokens or minilm is None or model is None:
        return enc.encode_text(canonical), None, None
    with torch.inference_mode():
        tok = minilm.tokenizer([canonical], padding=True, truncation=True, max_length=minilm.max_length,
                               return_tensors="pt")
        hidden = minilm.hidden_states(tok)
        mask = tok["attention_mask"]
        w = mask.unsqueeze(-1).to(hidden.dtype)
        if hasattr(model, "encode_text"):
            pooled = (hidden * w).sum(1) / w.sum(1).clamp(min=1e-6)
            vector = model.encode_text(pooled)[0].float().numpy()
    if not hasattr(model, "encode_text"):
        # ctseg encodes each clause of the canonical text on its own (models.slot_model); the whole
        # phrase's token states still feed the reranker
        vector = enc.encode_text(canonical)
    return vector, hidden, mask.bool()


def _rerank(inst, rr: _Reranker, canonical: str, cands: list[_Cand], tokens=None, heat_only: bool = False) -> None:
    """Region component and heatmap of each candidate from the cross-attention model (``heat_only``: the map)."""
    import torch

    from medsearch.models.spatial_store import load_spatial

    recs = [(c, load_spatial(inst, c.row["series"])) for c in cands]
    recs = [(c, r) for c, r in recs if r is not None]
    if not recs:
        return
    tok, mask = tokens if tokens is not None and tokens[0] is not None else rr.tokens([canonical])
    by_shape: dict[tuple, list] = {}
    for c, r in recs:
        by_shape.setdefault(r.spatial.shape, []).append((c, r))
    with torch.inference_mode():
        for group in by_shape.values():
            spatial = torch.from_numpy(np.stack([r.spatial for _, r in group]).astype(np.float32))
            logits, heat = rr.model(tok, mask, spatial)
            probs = torch.sigmoid(logits).numpy()
            for (c, _), p, h in zip(group, probs, heat.numpy()):
                c.heat = h
                if not heat_only:
                    c.region = float(p)


def _score(cands: list[_Cand], w: dict[str, float]) -> None:
    for c in cands:
        region = c.region if c.region is not None else 0.0
        wr = w["region"] if c.region is not None else 0.0
        total = w["global"] + w["attributes"] + wr
        c.score = (w["global"] * c.global_ + w["attributes"] * c.match.score + wr * region) / total


def _wanted_slots(parsed: dict | None) -> list[tuple[int, np.ndarray]]:
    """(finding-type index, lobe weights) of the query's positive findings whose type the image tower knows."""
    from medsearch import vocab
    from medsearch.models.localize import query_lobe_weights

    if not parsed:
        return []
    pos, _neg = search_match.query_findings(parsed)
    return [(vocab.FINDING_TYPES.index(q["concept"]), query_lobe_weights(q.get("site"), q.get("laterality")))
            for q in pos if q["concept"] in vocab.FINDING_TYPES]


def _key_slice(inst, c: _Cand, located: dict, wanted=()) -> tuple[int | None, list[int] | None, str | None]:
    """Key slice, region and what located them, from the first of: the best-matching predicted finding,
    where it lies where the query says (``finding``); the slot the query names, located when the series
    was encoded (``slot``, ctseg: :mod:`medsearch.models.slot_locations`); the reranker's heatmap
    (``reranker``); the query-conditioned heatmap of the stored type and region maps (``maps``); the
    middle slice (``middle``).  A predicted finding in another lobe than the query names comes after the
    slot, before the heatmaps."""
    found = [(best, placed) for best, placed in zip(c.match.best, c.match.placed)
             if best is not None and best.get("id") in located]
    for best, placed in found:
        if placed:
            key, bbox = located[best["id"]]
            return int(key), bbox, "finding"
    shape = c.row.get("shape") or None
    if c.heat is not None or wanted or found:
        from medsearch.models.localize import localize, slot_heatmap
        from medsearch.models.slot_locations import best_location
        from medsearch.models.spatial_store import load_spatial

        rec = load_spatial(inst, c.row["series"])
        if rec is not None and rec.locations is not None and wanted:
            where = best_location(rec.locations, wanted)
            if where is not None:
                return where[0], where[1], "slot"
        if found:
            # a predicted finding of the queried type, though not where the query says: still on the scan's
            # own slices, unlike a heatmap
            key, bbox = located[found[0][0]["id"]]
            return int(key), bbox, "finding"
        heat = None if rec is None else (c.heat if c.heat is not None else slot_heatmap(rec.spatial, wanted))
        if heat is not None:
            key, region = localize(heat, rec.canon_shape, rec.canon_affine, rec.native_affine, rec.native_shape)
            return key, region, "reranker" if c.heat is not None else "maps"
    if shape:
        z, y, x = (int(n) for n in shape)
        return z // 2, [0, 0, x - 1, y - 1], "middle"
    return None, None, None


def _components(c: _Cand, w: dict[str, float]) -> dict:
    return {"similarity": round(c.similarity, 6), "global": round(c.global_, 6),
            "region": None if c.region is None else round(c.region, 6),
            "attributes": round(c.match.score, 6), "weights": w}


def _aggregate(inst, cands: list[_Cand], k: int, w: dict[str, float], heat_from=None,
               parsed: dict | None = None) -> tuple[list[dict], int]:
    """Series -> studies (best series per study), top k as result dicts; also the number of studies.

    ``heat_from`` = (reranker, canonical, tokens): the shown results that were not reranked still get the
    reranker's heatmap for their key slice (localisation is a separate use from ranking; k maps are cheap).
    ``parsed`` (the query's parse) conditions the stored maps' heatmap where neither is available.
    """
    best: dict[str, _Cand] = {}
    for c in sorted(cands, key=lambda c: (-c.score, c.vector_id)):
        best.setdefault(c.row["study"], c)
    top = list(best.values())[:k]
    model, canonical, tokens = heat_from or (None, None, None)
    unheated = [c for c in top if c.heat is None]
    if model is not None and unheated:
        _rerank(inst, model, canonical, unheated, tokens, heat_only=True)
    with inst.sessions() as s:
        located = search_rules.finding_locations(
            s, [b["id"] for c in top for b in c.match.best if b is not None and "id" in b])
    wanted = _wanted_slots(parsed)
    results = []
    for c in top:
        key, region, located_by = _key_slice(inst, c, located, wanted)
        date = c.row.get("study_date")
        results.append({
            "study": c.row["study"], "series": c.row["series"], "score": round(float(c.score), 6),
            "components": _components(c, w), "matched": list(c.match.matched), "unmatched": list(c.match.unmatched),
            "key_slice": key, "region": region, "located_by": located_by,
            "study_date": date.isoformat() if date is not None else None,
            "modality": c.row.get("modality"), "body_part": c.row.get("body_part"),
        })
    return results, len(best)


def _candidates(inst, index, vector, filters, restricted, sites, n, exclude_study=None):
    """ANN top-n (pre-filtered when the user filters), then rows that pass the rules."""
    with inst.sessions() as s:
        allowed = search_rules.allowed_vector_ids(s, filters, restricted, sites) if filters else None
        if allowed is not None and len(allowed) == 0:
            return [], {}
        sims, ids = index.search(np.asarray(vector, dtype=np.float32)[None], n, allowed)
        ids, sims = ids[0], sims[0]
        keep = ids >= 0
        ids, sims = ids[keep], sims[keep]
        # rows are cached per index generation: repeated candidates cost no database round trip
        generation = (id(index), getattr(index, "generation", None))
        row_cache = rows_for(inst)
        rows, missing = row_cache.lookup(ids.tolist(), generation)
        if missing:
            fetched = search_rules.candidate_rows(s, missing)
            row_cache.store(fetched, generation)
            rows.update(fetched)
    out = []
    for vid, sim in zip(ids.tolist(), sims.tolist()):
        row = rows.get(vid)
        if row is None or row["study"] == exclude_study:
            continue  # a vector the database no longer lists (erasure in flight), or the query's own study
        if search_rules.passes(row, filters, restricted, sites):
            out.append((vid, float(sim), row))
    return out, rows


def _rank(inst, parsed: dict, canonical: str | None, vector, k: int, filters: dict, user,
          exclude_study: str | None = None, use_reranker: bool = True, tokens=None) -> tuple[list[dict], int, dict]:
    index = _index(inst)
    restricted = frozenset(inst.settings.restricted_patients)
    sites = search_rules.user_sites(user)
    n = max(int(inst.settings.search_candidates), 4 * k)
    _threads(inst)
    raw, _rows = _candidates(inst, index, vector, filters, restricted, sites, n, exclude_study)
    cands = []
    prepared = search_match.prepare(parsed)
    for vid, sim, row in raw:
        m = search_match.match(prepared, row["findings"])
        if not m.excluded:
            cands.append(_Cand(vid, sim, row, m))
    globals_ = _minmax(np.asarray([c.similarity for c in cands], dtype=np.float64))
    for c, g in zip(cands, globals_):
        c.global_ = float(g)
    rr = reranker_for(inst) if (use_reranker and canonical) else None
    rr = rr if rr is not None and rr.helps(parsed) else None
    w = search_match.weights(parsed, have_region=rr is not None)
    _score(cands, search_match.weights(parsed, have_region=False))
    if rr is not None and cands:
        cands.sort(key=lambda c: (-c.score, c.vector_id))
        head = cands[:max(RERANK_DEPTH, 3 * k)]
        _rerank(inst, rr, canonical, head, tokens)
        _score(head, w)
        # the reranked head stays above the tail: the tail was not rescored
        floor = min(c.score for c in head) if head else 0.0
        for c in cands[len(head):]:
            c.score = min(c.score, floor - 1e-6)
    # localisation uses the heatmap only where the reranker is kept: on the synthetic benchmark a reranker
    # that did not beat the dual tower also localised worse than the middle slice (docs/index-and-search.md)
    results, total = _aggregate(inst, cands, k, w, heat_from=(rr, canonical, tokens), parsed=parsed)
    return results, total, w


def _audit(inst, user, text: str, filters: dict, out: dict) -> None:
    inst.track(SearchEvent(actor=_actor(user), query=text, filters=filters, result_count=out["total"],
                           results=[r["study"] for r in out["results"]]))


# --------------------------------------------------------------------------- public API
def search(inst, text: str, k: int = 10, filters: dict | None = None, user=None) -> dict:
    """Search the archive with an English or Chinese phrase.

    Args:
        inst: the instance.
        text: the query (at most 4000 characters: a pasted report works).
        k: studies to return (1..200).
        filters: optional {"modality", "date_from", "date_to", "body_part"}.
        user: the acting principal (``name``, ``role``, ``allowed_sites``); None for an internal call.

    Returns:
        {"query": <parse dict>, "results": [...], "total": studies that matched among the candidates,
        "took_ms": float}; each result as in docs/index-and-search.md.
    """
    t0 = time.perf_counter()
    text = _check_text(text)
    k = _check_k(k)
    filters = search_rules.normalise_filters(filters)
    index = _index(inst)
    generation = (id(index), getattr(index, "generation", None))
    key = cache_key("search", text, k, filters, search_rules.user_sites(user),
                    sorted(inst.settings.restricted_patients))
    cache = cache_for(inst)
    out = cache.get(key, generation)
    if out is None:
        parsed = _parse(text)
        pd = parsed.to_dict()
        canonical = getattr(parsed, "canonical", None) or pd.get("canonical") or text
        _threads(inst)
        rr = reranker_for(inst)
        vector, tok, mask = _text_features(inst, canonical, want_tokens=rr is not None and rr.helps(pd))
        results, total, w = _rank(inst, pd, canonical, vector, k, filters, user, tokens=(tok, mask))
        out = {"query": pd, "results": results, "total": total, "weights": w}
        cache.put(key, out, generation)
        out["cached"] = False
        _settle_once()
    else:
        out["cached"] = True
    out["took_ms"] = round((time.perf_counter() - t0) * 1000.0, 3)
    _audit(inst, user, text, filters, out)
    return out


def _series_vector(inst, series_pseudonym: str) -> tuple[np.ndarray, str, list[dict], str | None]:
    from sqlalchemy import select

    from medsearch.store.models import Series, Study, Volume

    if not isinstance(series_pseudonym, str) or not series_pseudonym or len(series_pseudonym) > 64:
        raise InputError("The series identifier is not valid.", "Pass a series pseudonym from a search result.")
    with inst.sessions() as s:
        row = s.execute(select(Volume.vector_id, Volume.embedding, Study.pseudonym, Volume.model_version)
                        .join(Series, Series.id == Volume.series_id).join(Study, Study.id == Series.study_id)
                        .where(Series.pseudonym == series_pseudonym)).first()
        if row is None or row.embedding is None:
            raise NotFoundError("No encoded series with that identifier.",
                                "Pick a series from a search result; new series are searchable once encoded.")
        rows = search_rules.candidate_rows(s, [row.vector_id]) if row.vector_id is not None else {}
    findings = rows.get(row.vector_id, {}).get("findings", [])
    return np.frombuffer(row.embedding, dtype=np.float32), row[2], findings, row.model_version


def findings_query(findings: list[dict], threshold: float = 0.5) -> dict:
    """A parse-shaped query from a series' predicted findings (for "more like this")."""
    out = []
    for f in findings:
        if float(f.get("probability", 1.0)) < threshold:
            continue
        size = f.get("size_mm")
        out.append({"concept": {"term": f.get("finding_type") or f.get("type")},
                    "site": {"term": f["site"]} if f.get("site") else None,
                    "laterality": None, "density": f.get("density"),
                    "size_mm": {"min": size * 0.7, "max": size * 1.3} if size else None, "negated": False})
    return {"findings": out, "canonical": None, "unmatched": []}


def _similarity_query(inst, vector: np.ndarray, findings: list[dict], model_version: str | None) -> np.ndarray:
    """The query vector of "more like this": the series' own vector, unless the model that made it scores by
    likelihood, whose image vectors only a text's weights read (then the text vector of a report of its
    predicted findings, :meth:`~medsearch.models.registry.Encoder.similarity_query`)."""
    from medsearch.models.registry import scored_by_likelihood

    if not scored_by_likelihood(model_version):
        return vector
    encoder = _encoder(inst)
    if encoder.model_version != model_version:
        raise InputError("The series was encoded by another model than the one now configured.",
                         "Re-encode the archive with the configured model ('medsearch ingest --encode-pending' "
                         "after clearing the old embeddings; docs/model.md, \"Retraining\"), then ask again.")
    return encoder.similarity_query(vector, findings)


def _similar(inst, vector, findings, k, user, source: dict, exclude_study: str | None, audit_text: str,
             filters: dict | None, model_version: str | None = None) -> dict:
    t0 = time.perf_counter()
    k = _check_k(k)
    filters = search_rules.normalise_filters(filters)
    parsed = findings_query(findings)
    vector = _similarity_query(inst, vector, findings, model_version)
    results, total, w = _rank(inst, parsed, None, vector, k, filters, user, exclude_study=exclude_study,
                              use_reranker=False)
    out = {"query": {"similar_to": source, **parsed}, "results": results, "total": total, "weights": w,
           "cached": False, "took_ms": round((time.perf_counter() - t0) * 1000.0, 3)}
    _audit(inst, user, audit_text, filters, out)
    return out


def similar(inst, series_pseudonym: str, k: int = 10, user=None, filters: dict | None = None) -> dict:
    """Studies like an indexed series ("more like this"); the series' own study is left out.

    The rules and ``filters`` apply as in :func:`search`.  Returns the same shape as
    :func:`search`, with ``query`` = {"similar_to": {"series": ...}, "findings": [...]}.
    """
    vector, study, findings, version = _series_vector(inst, series_pseudonym)
    return _similar(inst, vector, findings, k, user, {"series": series_pseudonym}, study,
                    f"similar:{series_pseudonym}", filters, version)


def similar_to_upload(inst, dicom_files, k: int = 10, user=None, filters: dict | None = None) -> dict:
    """Studies like an uploaded DICOM series, which is de-identified in memory and never stored.

    Args:
        dicom_files: the series' files, as bytes or binary file objects.

    Returns the same shape as :func:`search`, with ``query`` = {"similar_to": {"upload": n_files}, findings...}.
    """
    from medsearch.search_upload import encode_upload

    vector, findings, n = encode_upload(inst, dicom_files)
    return _similar(inst, vector, findings, k, user, {"upload": n}, None, f"similar:upload({n} files)", filters,
                    _encoder(inst).model_version)

"""Training the reranker on a trained dual encoder, and measuring whether it helps.

``medsearch train`` calls :func:`train_for_model` after the dual encoder is
trained: the frozen image tower gives each training study's spatial map, the
reranker learns image-text matching on hard negatives
(:func:`medsearch.models.reranker.train_reranker`), and its gain over the dual
tower alone is measured on the held-out validation studies with both
evaluation protocols:

* (a) report -> volume: R@1/5/10 of each study's report text;
* (b) phrase -> volumes: P@10, mAP, nDCG@10 of short single-finding phrases.

The hybrid score is ``(1 - w) * minmax(dual) + w * sigmoid(ITM)`` with the
query-time region weight.  The reranker is **kept per protocol**: the saved
``keep`` says, for "phrase" queries (one finding) and "report" queries (several
findings), whether the hybrid beat the dual tower; the search pipeline uses it
only for the kind of query where it helped.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from medsearch.models import phrases
from medsearch.models.metrics import ranking_metrics, recall_at_k
from medsearch.models.reranker import RERANKER_FILE, TextTokens, save_reranker, train_reranker

log = logging.getLogger(__name__)
#: Weight of the reranker in the hybrid score of the gain measurement (the query-time region weight).
REGION_WEIGHT = 0.25
#: A protocol keeps the reranker when the hybrid beats the dual tower by at least this much.
MIN_GAIN = 0.005


@torch.no_grad()
def image_outputs(model, studies, device, batch: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """(embeddings (N, D), spatial maps (N, C, X, Y, Z) float16) of studies, with the frozen tower."""
    from medsearch.models.preprocess import hu_windows

    model.eval()
    embs, maps = [], []
    for i in range(0, len(studies), batch):
        x = torch.stack([hu_windows(torch.from_numpy(s.hu.astype(np.float32))) for s in studies[i:i + batch]])
        out = model.encode_image(x.to(device))
        embs.append(out["embedding"].float().cpu())
        maps.append(out["spatial"].half().cpu())
    return torch.cat(embs), torch.cat(maps)


@torch.no_grad()
def itm_matrix(reranker, tokens, texts: list[str], spatial: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """sigmoid(ITM) of every text against every study: (len(texts), N)."""
    out = torch.zeros(len(texts), spatial.shape[0])
    for q, text in enumerate(texts):
        tok, mask = tokens([text])
        for j in range(0, spatial.shape[0], chunk):
            logits, _ = reranker(tok, mask, spatial[j:j + chunk].float())
            out[q, j:j + chunk] = torch.sigmoid(logits)
    return out


def _minmax_rows(sim: torch.Tensor) -> torch.Tensor:
    lo, hi = sim.min(1, keepdim=True).values, sim.max(1, keepdim=True).values
    return (sim - lo) / (hi - lo).clamp(min=1e-9)


def hybrid(dual: torch.Tensor, itm: torch.Tensor, weight: float = REGION_WEIGHT) -> torch.Tensor:
    return (1 - weight) * _minmax_rows(dual) + weight * itm


def phrase_queries(studies) -> tuple[list[str], torch.Tensor]:
    """Protocol (b) queries of a pool: specs of its findings at every granularity, with graded relevance."""
    from medsearch.models.data import GRANULARITIES

    specs = {}
    for s in studies:
        for f in s.findings:
            for fields in GRANULARITIES:
                spec = phrases.spec_of(f, fields)
                specs.setdefault(phrases.canonical_phrase(spec), spec)
    texts = sorted(specs)
    rel = torch.tensor([[phrases.relevance(s.findings, specs[t]) for s in studies] for t in texts])
    return texts, rel


def report_queries(studies) -> tuple[list[str], torch.Tensor]:
    """Protocol (a) queries: each study's report text (canonical from labels) and its equivalent studies."""
    texts = [phrases.report_canonical_from_labels(s.findings) for s in studies]
    keys = [phrases.study_key(s.findings) for s in studies]
    return texts, torch.tensor([[a == b for b in keys] for a in keys])


def measure_gain(model, reranker, tokens, text_vectors, studies, device) -> dict:
    """Dual tower alone vs hybrid on both protocols, over ``studies`` as the pool."""
    emb, spatial = image_outputs(model, studies, device)
    out = {"pool": len(studies)}
    p_texts, rel = phrase_queries(studies)
    if p_texts:
        dual = model.encode_text(text_vectors(p_texts)).float().cpu() @ emb.T
        itm = itm_matrix(reranker, tokens, p_texts, spatial)
        out["phrase_to_volume"] = {"dual": ranking_metrics(dual, rel), "hybrid": ranking_metrics(hybrid(dual, itm), rel)}
    r_texts, same = report_queries(studies)
    dual = model.encode_text(text_vectors(r_texts)).float().cpu() @ emb.T
    itm = itm_matrix(reranker, tokens, r_texts, spatial)
    both = hybrid(dual, itm)
    out["report_to_volume"] = {
        "dual": {f"R@{k}": recall_at_k(dual, same, k) for k in (1, 5, 10)},
        "hybrid": {f"R@{k}": recall_at_k(both, same, k) for k in (1, 5, 10)},
    }
    return out


def keep_decision(gain: dict) -> dict[str, bool]:
    """Per query kind, whether the reranker helped (nDCG@10 for phrases, R@10 for reports)."""
    keep = {"phrase": False, "report": False}
    p = gain.get("phrase_to_volume")
    if p:
        keep["phrase"] = p["hybrid"]["nDCG@10"] >= p["dual"]["nDCG@10"] + MIN_GAIN
    r = gain["report_to_volume"]
    keep["report"] = r["hybrid"]["R@10"] >= r["dual"]["R@10"] + MIN_GAIN
    return keep


def train_for_model(model, train_set, val_set, out: Path, text_vectors, device=None, epochs: int = 8,
                    seed: int = 0, progress: bool = True) -> dict:
    """Train the reranker on ``train_set``, measure it on ``val_set``, save it to ``out/reranker.pt``.

    Args:
        model: the trained DualEncoder (frozen here).
        train_set, val_set: :class:`medsearch.models.data.Study` lists.
        text_vectors: canonical texts -> MiniLM sentence vectors (the training TextCache).

    Returns:
        {"epochs", "gain": {...both protocols, dual vs hybrid}, "keep": {"phrase", "report"}}.
    """
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = model.to(dev)
    _, spatial = image_outputs(model, train_set, dev)
    tokens = TextTokens(minilm=getattr(text_vectors, "minilm", None))  # share the training TextCache's MiniLM
    reranker = train_reranker(spatial, [s.findings for s in train_set], tokens=tokens, epochs=epochs, seed=seed,
                              progress=progress, device=dev)
    gain = measure_gain(model, reranker, tokens, text_vectors, val_set, dev) if val_set else {}
    keep = keep_decision(gain) if gain else {"phrase": False, "report": False}
    save_reranker(reranker, Path(out) / RERANKER_FILE, {"keep": keep, "gain": gain, "epochs": epochs})
    log.info("reranker kept for: %s", ", ".join(k for k, v in keep.items() if v) or "nothing")
    return {"epochs": epochs, "gain": gain, "keep": keep}

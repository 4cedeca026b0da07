"""What a perfect image tower would score: the ceiling of the ``ctseg`` design, and which type bounds it.

A ``ctseg`` study embedding is a projection of an attribute vector (finding slots:
:mod:`medsearch.models.slots`).  The text side fills the same vector from a canonical text,
so the vector a *perfect* image tower would give a study is the text side's vector of the
canonical report written from its labels (:func:`label_attributes`).  Evaluating those
vectors with the model's own projection and text side gives the design's ceiling on a pool;
putting one type's columns from the labels into the model's own vectors
(:func:`with_types_from`) gives what detecting that type perfectly would be worth.  That is
the question every training run answers slowly: which type to work on next.

Plain functions over tensors; ``bench/bench_ceiling.py`` runs them on the benchmark's pool.
"""

from __future__ import annotations

import torch

from medsearch import vocab
from medsearch.models import phrases
from medsearch.models.metrics import ranking_metrics
from medsearch.models.slots import D, L, T, Z


def type_columns(ftype: str) -> list[int]:
    """Columns of the attribute vector (:func:`~medsearch.models.slots.attribute_vector`) that belong to
    ``ftype``: its type entry, its presence per lobe, and its density and size blocks."""
    if ftype not in vocab.FINDING_TYPES:
        raise ValueError(f"unknown finding type {ftype!r}; use one of {', '.join(vocab.FINDING_TYPES)}")
    t = vocab.FINDING_TYPES.index(ftype)
    dens, size = T + T * L, T + T * L + T * L * D
    return ([t] + [T + t * L + lobe for lobe in range(L)]
            + [dens + (t * L + lobe) * D + d for lobe in range(L) for d in range(D)]
            + [size + (t * L + lobe) * Z + z for lobe in range(L) for z in range(Z)])


@torch.no_grad()
def label_attributes(encoder, studies) -> torch.Tensor:
    """(N, FULL_ATTR_DIM) the attribute vectors a perfect image tower would give ``studies``: the text
    side's vectors of the canonical reports written from their labels, with the "no finding" entry
    computed as the image side computes it."""
    texts = [phrases.report_canonical_from_labels(s.findings) for s in studies]
    return image_like(encoder.text_attributes(texts))


def with_types_from(attributes: torch.Tensor, source: torch.Tensor, types) -> torch.Tensor:
    """``attributes`` (N, FULL_ATTR_DIM) with the columns of ``types`` taken from ``source`` (same shape),
    and the "no finding" entry recomputed from the result."""
    out = attributes.clone()
    for ftype in types:
        cols = type_columns(ftype)
        out[:, cols] = source[:, cols]
    return _image_normal(out)


def image_like(attributes: torch.Tensor) -> torch.Tensor:
    """Text-side attribute vectors (N, FULL_ATTR_DIM) made ones an image tower can give: a text's
    clauses are summed, so two nodules in one lobe make a presence of 2, where the image side's slot
    presence is a probability.  Each slot's presence is clipped to 1 and its density and size blocks
    scaled with it (they are presence x distribution); the type entries are the slots' maximum."""
    n = attributes.shape[0]
    dens, size = T + T * L, T + T * L + T * L * D
    presence = attributes[:, T:dens].reshape(n, T, L)
    clipped = presence.clamp(max=1.0)
    factor = torch.where(presence > 0, clipped / presence.clamp_min(1e-9), torch.zeros_like(presence))
    out = attributes.clone()
    out[:, T:dens] = clipped.reshape(n, -1)
    out[:, dens:size] = (attributes[:, dens:size].reshape(n, T, L, D) * factor[..., None]).reshape(n, -1)
    out[:, size:size + T * L * Z] = (attributes[:, size:size + T * L * Z].reshape(n, T, L, Z)
                                     * factor[..., None]).reshape(n, -1)
    out[:, :T] = clipped.amax(dim=2)
    return _image_normal(out)


def _image_normal(attributes: torch.Tensor) -> torch.Tensor:
    # the image side's rule (SlotModel.image_attributes): 1 - the surest type, clipped to [0, 1]
    out = attributes.clone()
    out[:, -1] = (1.0 - out[:, :T].amax(dim=1).clamp(max=1.0)).clamp(0.0, 1.0)
    return out


@torch.no_grad()
def phrase_metrics_by_type(encoder, studies, image: torch.Tensor, specs: list[dict], lang: str = "en") -> dict:
    """Protocol (b)'s P@10, mAP and nDCG@10 for each finding type's queries alone.

    Args:
        image: (N, dim) the pool's image embeddings in ``studies`` order.
        specs: the phrase queries (:func:`~medsearch.models.evaluate.phrase_specs`).
    """
    out = {}
    for ftype in vocab.FINDING_TYPES:
        mine = [s for s in specs if s["type"] == ftype]
        if not mine:
            continue
        rel = torch.tensor([[phrases.relevance(st.findings, s) for st in studies] for s in mine])
        texts = [phrases.normalise(phrases.spec_text(s, lang)) for s in mine]
        sim = torch.from_numpy(encoder.encode_texts(texts)) @ image.T
        out[ftype] = {"queries": len(mine), **{k: round(v, 4) for k, v in ranking_metrics(sim, rel).items()}}
    return out


__all__ = ["image_like", "label_attributes", "phrase_metrics_by_type", "type_columns", "with_types_from"]

"""Retrieval metrics and their chance levels (plain functions over tensors)."""

from __future__ import annotations

import torch


def recall_at_k(sim: torch.Tensor, same: torch.Tensor, k: int) -> float:
    """Share of queries whose answer is within the top ``k``.

    Args:
        sim: (Q, N) similarity of each query to each pool item.
        same: (Q, N) bool; True where the item is a correct answer (identical finding sets count).
    """
    k = min(k, sim.shape[1])
    top = sim.topk(k, dim=1).indices
    return same.gather(1, top).any(dim=1).float().mean().item()


def recall_chance(same: torch.Tensor, k: int) -> float:
    """Expected R@k of a random ranking: 1 - C(N - m, k) / C(N, k) per query."""
    n = same.shape[1]
    k = min(k, n)
    out = []
    for m in same.sum(1).tolist():
        miss = 1.0
        for i in range(k):  # product form of C(N - m, k) / C(N, k)
            miss *= max(0.0, (n - m - i) / (n - i))
        out.append(1.0 - miss)
    return sum(out) / len(out)


def ranking_metrics(sim: torch.Tensor, rel: torch.Tensor, k: int = 10) -> dict[str, float]:
    """P@k and mAP (relevant: grade 2) and nDCG@k (graded, gain 2^rel - 1), averaged over queries.

    Args:
        sim: (Q, N) similarities; rel: (Q, N) integer relevance grades 0..2.
    """
    order = sim.argsort(dim=1, descending=True)
    ranked = rel.gather(1, order).float()
    binary = (ranked >= 2).float()
    kk = min(k, sim.shape[1])
    p_at_k = binary[:, :kk].mean(1)
    hits = binary.cumsum(1)
    ranks = torch.arange(1, sim.shape[1] + 1, dtype=torch.float32)
    n_rel = binary.sum(1).clamp(min=1)
    ap = ((hits / ranks) * binary).sum(1) / n_rel
    discounts = 1.0 / torch.log2(torch.arange(2, kk + 2, dtype=torch.float32))
    dcg = ((2 ** ranked[:, :kk] - 1) * discounts).sum(1)
    ideal = rel.float().sort(dim=1, descending=True).values[:, :kk]
    idcg = ((2 ** ideal - 1) * discounts).sum(1).clamp(min=1e-9)
    return {"P@10": p_at_k.mean().item(), "mAP": ap.mean().item(), "nDCG@10": (dcg / idcg).mean().item()}


def ranking_chance(rel: torch.Tensor, k: int = 10, draws: int = 20, seed: int = 0) -> dict[str, float]:
    """The metrics of :func:`ranking_metrics` for random rankings (mean of ``draws`` draws)."""
    g = torch.Generator().manual_seed(seed)
    runs = [ranking_metrics(torch.rand(rel.shape, generator=g), rel, k) for _ in range(draws)]
    return {key: sum(r[key] for r in runs) / draws for key in runs[0]}

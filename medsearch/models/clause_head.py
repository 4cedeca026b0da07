"""The text tower's trained part for ``ctseg``: a clause head over frozen MiniLM.

Each canonical clause ("right upper lobe 8 mm solid nodule") is one MiniLM
sentence vector; this head reads from it which finding the clause names and
which lobes, densities and size bins it is compatible with.  Those fill the
finding slots (:func:`medsearch.models.slots.clause_slots`), the structured space
the image tower also fills.

Targets come from the spec the clause was written from
(:func:`clause_targets`), so the head learns the terminology's canonical grammar
in both directions: what a clause says, and that what it leaves out (no site,
no size) is compatible with everything.
"""

from __future__ import annotations

import torch
from torch import nn

from medsearch import vocab
from medsearch.models.slots import D, L, T, Z

#: Output split: type (T + 1: the last is "not a finding type"), lobes, densities, size bins.
CLAUSE_SPLIT = (T + 1, L, D, Z)


class ClauseHead(nn.Module):
    """MLP from a MiniLM sentence vector to clause attributes.

    Args:
        in_dim: MiniLM width (384).
        hidden: hidden width.

    Shapes:
        input (N, in_dim); returns logits ``type`` (N, T + 1), ``lobes`` (N, L), ``density`` (N, D),
        ``size`` (N, Z).
    """

    def __init__(self, in_dim: int = 384, hidden: int = 512):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, sum(CLAUSE_SPLIT)))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.mlp(x)
        ty, lo, de, si = torch.split(out, CLAUSE_SPLIT, dim=-1)
        return {"type": ty, "lobes": lo, "density": de, "size": si}


def site_lobes(site: str | None, laterality: str | None) -> list[int]:
    """Indices of the lobes a site (with its laterality) covers; every lobe when neither is given."""
    if site == vocab.LINGULA:
        site = "left upper lobe"
    if site in vocab.LOBES:
        return [vocab.LOBES.index(site)]
    side = vocab.LOBE_SIDE.get(site or "") or laterality
    if side in ("left", "right"):
        return [i for i, lobe in enumerate(vocab.LOBES) if vocab.LOBE_SIDE[lobe] == side]
    return list(range(L))


def size_bins_between(lo: float | None, hi: float | None) -> list[int]:
    """Size bins a diameter range [lo, hi] (mm; None = open) overlaps; every bin when both are None."""
    if lo is None and hi is None:
        return list(range(Z))
    a = vocab.size_bin(lo) if lo is not None else 0
    b = vocab.size_bin(hi) if hi is not None else Z - 1
    return list(range(min(a, b), max(a, b) + 1))


def clause_targets(spec: dict) -> dict[str, torch.Tensor]:
    """Targets of one clause written from ``spec`` (type, lobes or site/laterality, density, size_min/size_max).

    ``type`` None (or not a finding type) is the "other" class; then the rest is all-compatible.
    """
    ftype = spec.get("type")
    t = vocab.FINDING_TYPES.index(ftype) if ftype in vocab.FINDING_TYPES else T
    lobes = torch.zeros(L)
    lobes[spec["lobes"] if "lobes" in spec else site_lobes(spec.get("site"), spec.get("laterality"))] = 1.0
    density = torch.ones(D)
    if spec.get("density") in vocab.DENSITIES:
        density = torch.zeros(D)
        density[vocab.DENSITIES.index(spec["density"])] = 1.0
    size = torch.zeros(Z)
    size[size_bins_between(spec.get("size_min"), spec.get("size_max"))] = 1.0
    return {"type": torch.tensor(t), "lobes": lobes, "density": density, "size": size}

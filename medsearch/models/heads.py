"""Attribute heads: the seed's attribute-prediction branch.

From the image tower's pooled features they predict, per study:

- presence of each finding type in each lobe (multi-label, ``len(FINDING_TYPES) x len(LOBES)``);
- densities present (multi-label over ``DENSITIES``);
- size bins present (multi-label over ``SIZE_BINS_MM``).

Label encoding lives here too (:func:`attribute_targets`) so that training and
decoding (:func:`decode_findings`) can never disagree about slot order.
"""

from __future__ import annotations

import torch
from torch import nn

from medsearch import vocab
from medsearch.models.phrases import SIZED_TYPES

#: Types whose density is reported (the others have no density attribute).
DENSITY_TYPES = ("nodule", "mass", "ground-glass opacity", "consolidation", "cavity")
_SIZE_MID_MM = (4.5, 8.0, 15.0, 25.0, 40.0)


def finding_lobes(finding: dict) -> list[str]:
    """The lobes a labelled finding marks in the presence grid.

    A lobe (the lingula within the left upper lobe) marks itself; a lung, the
    pleura or a bilateral finding marks every lobe of its side(s).
    """
    site = finding.get("site") or ""
    if site == vocab.LINGULA:
        return ["left upper lobe"]
    if site in vocab.LOBES:
        return [site]
    side = finding.get("laterality") or vocab.LOBE_SIDE.get(site, "bilateral")
    sides = ("left", "right") if side == "bilateral" else (side,)
    return [lobe for lobe in vocab.LOBES if vocab.LOBE_SIDE[lobe] in sides]


def attribute_targets(findings: list[dict]) -> dict[str, torch.Tensor]:
    """Multi-hot targets of one study: ``presence`` (T, L), ``density`` (4,), ``size`` (5,)."""
    presence = torch.zeros(len(vocab.FINDING_TYPES), len(vocab.LOBES))
    density = torch.zeros(len(vocab.DENSITIES))
    size = torch.zeros(len(vocab.SIZE_BINS_MM))
    for f in findings:
        t = vocab.FINDING_TYPES.index(f["type"])
        for lobe in finding_lobes(f):
            presence[t, vocab.LOBES.index(lobe)] = 1.0
        if f.get("density") in vocab.DENSITIES and f["type"] in DENSITY_TYPES:
            density[vocab.DENSITIES.index(f["density"])] = 1.0
        if f.get("diameter_mm") and f["type"] in SIZED_TYPES:
            size[vocab.size_bin(float(f["diameter_mm"]))] = 1.0
    return {"presence": presence, "density": density, "size": size}


class AttributeHeads(nn.Module):
    """Linear heads on the pooled image features (a shared hidden layer).

    Args:
        in_dim: width of the pooled features.
        hidden: width of the shared hidden layer.

    Shapes:
        input (B, in_dim); returns logits ``presence`` (B, T, L), ``density`` (B, 4), ``size`` (B, 5)
        with T = len(FINDING_TYPES), L = len(LOBES).
    """

    def __init__(self, in_dim: int, hidden: int = 256):
        super().__init__()
        self.t, self.l = len(vocab.FINDING_TYPES), len(vocab.LOBES)
        self.shared = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Dropout(0.1))
        self.presence = nn.Linear(hidden, self.t * self.l)
        self.density = nn.Linear(hidden, len(vocab.DENSITIES))
        self.size = nn.Linear(hidden, len(vocab.SIZE_BINS_MM))

    def forward(self, pooled: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.shared(pooled)
        return {"presence": self.presence(h).view(-1, self.t, self.l),
                "density": self.density(h), "size": self.size(h)}


def decode_findings(logits: dict[str, torch.Tensor], threshold: float = 0.5) -> list[dict]:
    """One study's head logits (unbatched) -> findings in the vocabulary's terms.

    Each (type, lobe) above ``threshold`` becomes a finding; a type present in
    every lobe of a side is reported at that lung (pleura for pleural types).
    """
    pres = torch.sigmoid(logits["presence"]).float()
    dens = torch.sigmoid(logits["density"]).float()
    size = torch.sigmoid(logits["size"]).float()
    density = vocab.DENSITIES[int(dens.argmax())]
    size_mm = _SIZE_MID_MM[int(size.argmax())]
    out: list[dict] = []
    for ti, ftype in enumerate(vocab.FINDING_TYPES):
        hits = [(vocab.LOBES[li], float(pres[ti, li])) for li in range(len(vocab.LOBES)) if pres[ti, li] >= threshold]
        if not hits:
            continue
        if ftype in ("pleural effusion", "pneumothorax", "emphysema"):
            by_side: dict[str, float] = {}
            for lobe, p in hits:
                side = vocab.LOBE_SIDE[lobe]
                by_side[side] = max(p, by_side.get(side, 0.0))
            if ftype == "emphysema":
                groups = [(f"{side} lung", side, p) for side, p in sorted(by_side.items())]
            else:
                lat = next(iter(by_side)) if len(by_side) == 1 else "bilateral"
                groups = [("pleura", lat, max(by_side.values()))]
        else:
            groups = [(lobe, vocab.LOBE_SIDE[lobe], p) for lobe, p in hits]
        for site, lat, prob in groups:
            out.append({"type": ftype, "site": site, "laterality": lat,
                        "density": density if ftype in DENSITY_TYPES else None,
                        "size_mm": size_mm if ftype in SIZED_TYPES else None,
                        "probability": round(prob, 4)})
    return out

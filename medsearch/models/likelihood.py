"""The likelihood scorer: a study's score is the log-probability, under its slots, of what a text says.

The projection scorer (:class:`~medsearch.models.slot_model.SlotModel.project`) compares a study's slot
probabilities with a text's linearly: a nodule the tower gives 0.2 against 0.05 moves the score by a
fraction of one entry among hundreds.  Read as probabilities, that is a factor of four.  This scorer adds
the log-probabilities instead:

- each finding a clause names: ``log P(type somewhere in the clause's lobes)`` plus, where the clause gives
  one density or one size bin, the log-probability of that density and size there;
- each finding type and lobe a text **negates** ("no pneumothorax", "no lung nodule"):
  ``gamma * log(1 - P)``;
- for a *complete* text (a report: one that says what is absent, or the normal phrase), every other slot
  it does not name: ``beta * log(1 - P)``; a short query says nothing about the rest, so it gets none.

All of it is an inner product of a fixed image vector (the log-probabilities, :func:`image_features`) with
a sparse text vector (the weights of the terms, :func:`text_weights`), so the FAISS index serves it as it
serves every model here.  To keep the index's contract (unit vectors, inner product) the image vector gets
one more entry that brings every study to the same norm (the maximum inner product search reduction of
Bachrach et al. 2014), and the text entry there is zero: the ranking is unchanged, and both vectors are
L2-normalised.

Plain functions over tensors; batch dimension first.  Measured in docs/model.md ("The likelihood scorer").
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch.nn import functional as F

from medsearch import vocab
from medsearch.models.heads import DENSITY_TYPES
from medsearch.models.phrases import SIZED_TYPES
from medsearch.models.slots import D, L, T, Z

_RIGHT = tuple(i for i, lobe in enumerate(vocab.LOBES) if vocab.LOBE_SIDE[lobe] == "right")
_LEFT = tuple(i for i, lobe in enumerate(vocab.LOBES) if vocab.LOBE_SIDE[lobe] == "left")
#: The lobe groups a clause can name: one lobe, one lung, or the chest (no site).
GROUPS: tuple[tuple[int, ...], ...] = tuple((i,) for i in range(L)) + (_RIGHT, _LEFT, tuple(range(L)))
G = len(GROUPS)
_DT = [t for t, name in enumerate(vocab.FINDING_TYPES) if name in DENSITY_TYPES]
_ST = [t for t, name in enumerate(vocab.FINDING_TYPES) if name in SIZED_TYPES]
# layout of the feature vector: log P per (type, group), log(1 - P) per (type, lobe), log density per
# (density type, group, density), log size bin per (sized type, group, bin)
_LOGP = 0
_LOG1MP = _LOGP + T * G
_LOGD = _LOG1MP + T * L
_LOGZ = _LOGD + len(_DT) * G * D
#: Entries of the log-probability vector (before the norm entry).
FEATURES = _LOGZ + len(_ST) * G * Z


@dataclass(frozen=True)
class LikelihoodScorer:
    """The scorer's parameters (``config.json``'s ``scorer``).

    Attributes:
        beta: weight of ``log(1 - P)`` for every slot a complete text does not name.
        gamma: weight of ``log(1 - P)`` for the slots a text negates.
        eps: presences are clipped to [eps, 1 - eps], so that no study is ruled out by one term.
        floor: density and size-bin probabilities are clipped below at this: the tower gives one
            distribution per slot, so a report naming two nodules of different sizes in one lobe must not
            rule out the study that holds them.
    """

    beta: float = 1.0
    gamma: float = 0.5
    eps: float = 3e-3
    floor: float = 1e-3
    joint: float = 1.0

    def to_config(self) -> dict:
        return {"kind": "likelihood", **asdict(self)}

    @classmethod
    def from_config(cls, cfg: dict) -> "LikelihoodScorer":
        unknown = set(cfg) - {"kind", "beta", "gamma", "eps", "floor", "joint"}
        if cfg.get("kind") != "likelihood" or unknown:
            raise ValueError(f"not a likelihood scorer's config: {cfg!r}")
        return cls(**{k: float(v) for k, v in cfg.items() if k != "kind"})

    @property
    def radius(self) -> float:
        # every entry lies in [log min(eps, floor), 0], so no study's vector is longer than this
        return math.sqrt(FEATURES) * -math.log(min(self.eps, self.floor))


def group_of(lobes: torch.Tensor, threshold: float = 0.5) -> int:
    """The group (index into :data:`GROUPS`) a clause's lobe probabilities (L,) name; the chest when they
    name none, or a set that is not one lobe or one lung (the nearest group that holds them all)."""
    chosen = tuple(int(i) for i in torch.nonzero(lobes > threshold).flatten())
    if not chosen:
        return G - 1
    for g, members in enumerate(GROUPS):
        if set(chosen) <= set(members):
            return g
    return G - 1


def slots_from_attributes(attr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Presence (B, T, L), density (B, T, L, D) and size (B, T, L, Z) back from attribute vectors
    (:func:`~medsearch.models.slots.attribute_vector`, which stores presence x distribution, i.e. the joint
    probability of the type and each value); a slot without presence gets even distributions."""
    b = attr.shape[0]
    dens, size = T + T * L, T + T * L + T * L * D
    presence = attr[:, T:dens].reshape(b, T, L).clamp(0.0, 1.0)
    pd = attr[:, dens:size].reshape(b, T, L, D)
    pz = attr[:, size:size + T * L * Z].reshape(b, T, L, Z)

    def dist(block: torch.Tensor, k: int) -> torch.Tensor:
        # presence x distribution is a joint probability: the U-Net's distributions sum to one, the nodule
        # detector's per-bin noisy-ORs need not (nodule_detector.nodule_slots), so divide by the presence
        total = block.sum(-1, keepdim=True)
        held = (total > 1e-6) & (presence[..., None] > 1e-6)
        return torch.where(held, (block / presence[..., None].clamp_min(1e-6)).clamp(max=1.0),
                           torch.full_like(block, 1.0 / k))

    return presence, dist(pd, D), dist(pz, Z)


def image_features(presence: torch.Tensor, density: torch.Tensor, size: torch.Tensor,
                   eps: float = 1e-3, floor: float = 1e-3) -> torch.Tensor:
    """The log-probability vector (B, FEATURES) of studies' slots.

    A group's presence is the noisy-OR of its lobes'; its density and size distributions are the lobes',
    weighted by their presence.

    Args:
        presence: (B, T, L) in [0, 1]; density: (B, T, L, D); size: (B, T, L, Z), each summing to 1.
    """
    p = presence.clamp(eps, 1 - eps)
    b = p.shape[0]
    gp, gd, gz = [], [], []
    for members in GROUPS:
        idx = list(members)
        sub = p[:, :, idx]
        gp.append(1 - torch.prod(1 - sub, dim=2))
        w = sub / sub.sum(2, keepdim=True)
        gd.append((w[..., None] * density[:, :, idx]).sum(2))
        gz.append((w[..., None] * size[:, :, idx]).sum(2))
    gp_t = torch.stack(gp, dim=2)                                  # (B, T, G)
    gd_t = torch.stack(gd, dim=2)[:, _DT]                          # (B, |DT|, G, D)
    gz_t = torch.stack(gz, dim=2)[:, _ST]                          # (B, |ST|, G, Z)
    gp_t = gp_t.clamp(eps, 1 - eps)
    # the joint probability that the finding is there *and* has the density (size): clipped as a whole, so
    # that the distributions of a slot the tower does not believe in cannot rule a study out a second time
    pd = (gp_t[:, _DT, :, None] * gd_t).clamp_min(eps)
    pz = (gp_t[:, _ST, :, None] * gz_t).clamp_min(eps)
    return torch.cat([gp_t.log().reshape(b, -1), (1 - p).log().reshape(b, -1),
                      pd.log().reshape(b, -1), pz.log().reshape(b, -1)], dim=1)


def image_embedding(attr: torch.Tensor, scorer: LikelihoodScorer, dim: int) -> torch.Tensor:
    """Unit image vectors (B, dim) from attribute vectors: the log-probabilities, one entry that brings
    every study to the same norm, zero padding."""
    feats = image_features(*slots_from_attributes(attr), eps=scorer.eps, floor=scorer.floor)
    if dim < FEATURES + 1:
        raise ValueError(f"the likelihood scorer needs an embedding of at least {FEATURES + 1} entries, not {dim}")
    r2 = scorer.radius ** 2
    norm_entry = (r2 - (feats ** 2).sum(1, keepdim=True)).clamp_min(0).sqrt()
    out = torch.cat([feats, norm_entry, feats.new_zeros(feats.shape[0], dim - FEATURES - 1)], dim=1)
    return out / math.sqrt(r2)


def _positive_weights(w: torch.Tensor, q: int, t: int, g: int, density: torch.Tensor, size: torch.Tensor,
                      threshold: float, joint: float) -> None:
    # a density or a size bin counts only when the clause gives exactly one (a range would need its own
    # entries; leaving it out ranks by presence alone rather than by a wrong bin)
    dens = torch.nonzero(density > threshold).flatten()
    bins = torch.nonzero(size > threshold).flatten()
    has_d, has_z = t in _DT and len(dens) == 1, t in _ST and len(bins) == 1
    # log P(t, d) + log P(t, z) - log P(t) = log P(t, d, z) for independent density and size
    a = joint if (has_d and has_z) else 1.0
    if has_d:
        w[q, _LOGD + (_DT.index(t) * G + g) * D + int(dens[0])] += a
    if has_z:
        w[q, _LOGZ + (_ST.index(t) * G + g) * Z + int(bins[0])] += a
    w[q, _LOGP + t * G + g] += 1.0 - a * (int(has_d) + int(has_z))


def text_weights(positive: dict, negated: dict, complete: torch.Tensor, scorer: LikelihoodScorer,
                 threshold: float = 0.5) -> torch.Tensor:
    """The weight vectors (n, FEATURES) of n texts.

    Args:
        positive: the clause head's probabilities of the texts' positive clauses: ``type`` (N, T + 1, a
            distribution), ``lobes`` (N, L), ``density`` (N, D), ``size`` (N, Z), and ``owner`` (N,) the text
            of each clause.
        negated: the same for the negated clauses (the finding after "no"); ``density`` and ``size`` unused.
        complete: (n,) bool, the texts that describe a whole study (reports), whose unnamed slots count as
            absent.
    """
    n = complete.shape[0]
    w = torch.zeros(n, FEATURES)
    named = torch.zeros(n, T, L, dtype=torch.bool)
    for c in range(len(positive["owner"])):
        t = int(positive["type"][c].argmax())
        if t == T:  # not one of the finding types
            continue
        q, g = int(positive["owner"][c]), group_of(positive["lobes"][c], threshold)
        _positive_weights(w, q, t, g, positive["density"][c], positive["size"][c], threshold, scorer.joint)
        named[q, t, list(GROUPS[g])] = True
    negated_slots = torch.zeros(n, T, L, dtype=torch.bool)
    for c in range(len(negated["owner"])):
        t = int(negated["type"][c].argmax())
        if t == T:
            continue
        negated_slots[int(negated["owner"][c]), t, list(GROUPS[group_of(negated["lobes"][c], threshold)])] = True
    negated_slots &= ~named
    rest = ~named & ~negated_slots & complete[:, None, None]
    w[:, _LOG1MP:_LOGD] = (scorer.gamma * negated_slots.float() + scorer.beta * rest.float()).reshape(n, -1)
    return w


def text_embedding(positive: dict, negated: dict, complete: torch.Tensor, scorer: LikelihoodScorer,
                   dim: int) -> torch.Tensor:
    """Unit text vectors (n, dim): :func:`text_weights`, zero at the image's norm entry and the padding."""
    w = text_weights(positive, negated, complete, scorer)
    return F.normalize(torch.cat([w, w.new_zeros(w.shape[0], dim - FEATURES)], dim=1), dim=1)


__all__ = ["FEATURES", "GROUPS", "LikelihoodScorer", "group_of", "image_embedding", "image_features",
           "slots_from_attributes", "text_embedding", "text_weights"]

"""The ``ctseg`` dual encoder: U-Net image tower, clause head, shared projection.

Image side: :class:`~medsearch.models.image_tower_seg.SegEncoder` voxel maps ->
finding slots (:func:`~medsearch.models.slots.image_slots`) -> attribute vector.
Text side: each clause of the canonical text through frozen MiniLM and the
:class:`~medsearch.models.clause_head.ClauseHead` -> slots -> attribute vector,
summed over the text's clauses.  Both vectors go through one trained linear
projection (initialised as the identity, then tuned with InfoNCE) and are
L2-normalised; the similarity is the inner product, as for every model here.
A model may instead score with the likelihood of the text under the study's
slots (:mod:`medsearch.models.likelihood`, the model's ``scorer``), also an
inner product of unit vectors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from medsearch import vocab
from medsearch.models.clause_head import ClauseHead
from medsearch.models.image_tower_seg import HEAD_SPLIT, SegEncoder
from medsearch.models.slots import ATTR_DIM, T, attribute_vector, clause_slots, sum_by_owner

#: Embedding width: the attribute vector (plus its "normal" entry) fits in it unprojected.
SLOT_DIM = 512
#: Attribute vector plus one "no finding" entry.
FULL_ATTR_DIM = ATTR_DIM + 1
#: Pooling of the half-resolution maps into the stored spatial map (z, y, x), for models whose config
#: names none (those trained on the coarse grid before grids were selectable).
SPATIAL_POOL = (2, 4, 4)


@dataclass(frozen=True)
class SegGrid:
    """A canonical grid for the ctseg tower and the pooling that keeps its stored map near 1,200 cells.

    Attributes:
        shape: canonical grid (z, y, x); every grid spans about 312 x 344 x 344 mm, a whole adult chest.
        spacing_mm: voxel size (z, y, x), mm.
        spatial_pool: max-pooling of the half-resolution maps into the stored spatial map (z, y, x).
    """

    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    spatial_pool: tuple[int, int, int]


#: ``medsearch train --grid``.  ``coarse`` trains in about 30 CPU minutes; ``fine`` resolves nodules of a
#: few millimetres that the coarse grid averages into lung texture, at about 2.7 times the training cost
#: (docs/model.md, "Canonical grid").
SEG_GRIDS: dict[str, SegGrid] = {
    "coarse": SegGrid((48, 80, 80), (6.5, 4.3, 4.3), (2, 4, 4)),
    "fine": SegGrid((56, 112, 112), (5.6, 3.07, 3.07), (2, 6, 6)),
}
#: Grid of newly trained models.
DEFAULT_GRID = "coarse"
#: Channels of the image tower's detail stage in newly trained models: none, as in the shipped model (a
#: 32-channel stage fine-tuned from it did not beat it on the held-out pool, docs/model.md).
DETAIL_WIDTH = 0


def with_normal(attr: torch.Tensor, finding_mass: torch.Tensor) -> torch.Tensor:
    """Append the "no finding" entry, 1 - (how surely something is there), clipped to [0, 1]."""
    return torch.cat([attr, (1.0 - finding_mass).clamp(0.0, 1.0)[:, None]], dim=1)


def merge_other(slots: dict[str, torch.Tensor], b: int, t: int, own: dict | None,
                explaining: torch.Tensor | None = None) -> None:
    """Fold the detector's slots ``own`` of type ``t`` (a cavity, a ground-glass opacity; the region
    classifier's atelectasis, mass, consolidation) into study ``b``'s U-Net slots, in place, by the type's rule
    (:data:`~medsearch.models.region_classifier.MERGE`, "max" where it names none):

    - "max": the larger of the two presences. The U-Net sees a finding's extent and the detector the native
      pixels of a cavity's wall, a faint opacity or a thin plate, so each finds what the other misses (docs/
      model.md, "Cavities and ground glass from the detector");
    - "geo": their geometric mean, for a type both find but each confuses with another (masses, which the
      U-Net calls consolidations and the region classifier misses at the pleura): a slot needs both. With no
      evidence of the type at all, the presence is zero.

    ``explaining`` (L,), where given, is the detector's presence of the type that explains this one's U-Net
    presence away (:data:`~medsearch.models.region_classifier.EXPLAINED_BY`): the U-Net's presence is first
    multiplied by ``1 - explaining``, since what the classifier calls a mass the U-Net calls a consolidation.

    Density and size stay the U-Net's."""
    from medsearch.models.region_classifier import MERGE

    rule = MERGE.get(vocab.FINDING_TYPES[t], "max")
    unet = slots["presence"][b, t]
    if explaining is not None:
        unet = unet * (1.0 - explaining.clamp(0.0, 1.0))
    if rule == "geo":
        mine = own["presence"] if own is not None else torch.zeros_like(unet)
        slots["presence"][b, t] = (unet * mine).sqrt()
    elif own is not None:
        slots["presence"][b, t] = torch.maximum(unet, own["presence"])
    else:
        slots["presence"][b, t] = unet


class SlotModel(nn.Module):
    """Image tower, clause head and the shared projection of ``ctseg``.

    Args:
        dim: embedding width (256-512; the attribute vector has FULL_ATTR_DIM entries).
        detail_width: the image tower's detail stage (:class:`SegEncoder`); 0 for models saved
            before it existed (their config has no ``detail_width``).
        focal_width: the image tower's focal head (:class:`SegEncoder`); 0 for models saved before it
            existed.
        spatial_pool: pooling (z, y, x) of the half-resolution maps into ``spatial``
            (:attr:`SegGrid.spatial_pool` of the grid the model was trained on).

    Shapes:
        ``encode_image(x)``: x (B, 2, Z, Y, X) -> dict ``embedding`` (B, dim), ``maps``
        (B, 20, Z/2, Y/2, X/2), slot ``presence`` (B, T, L), ``density`` (B, T, L, D), ``size`` (B, T, L, Z),
        ``attributes`` (B, FULL_ATTR_DIM) and ``spatial`` (B, 15, Z/(2*pz), Y/(2*py), X/(2*px)), with
        ``spatial_pool`` (pz, py, px), rounded up: type and region probabilities pooled for storage;
        ``encode_clauses(feats, owner, n)``: MiniLM vectors (N, 384) of N clauses, the text each belongs
        to (N,), n texts -> (n, dim).
    """

    arch = "ctseg"

    def __init__(self, dim: int = SLOT_DIM, detail_width: int = DETAIL_WIDTH,
                 spatial_pool: tuple[int, int, int] = SPATIAL_POOL, focal_width: int = 0):
        super().__init__()
        self.spatial_pool = tuple(int(p) for p in spatial_pool)
        self.image = SegEncoder(detail_width=detail_width, focal_width=focal_width)
        self.clause = ClauseHead()
        self.proj = nn.Linear(FULL_ATTR_DIM, dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(0.0))
        self.dim = dim
        #: None: the projection scores; else a :class:`~medsearch.models.likelihood.LikelihoodScorer`
        #: (``config.json``'s ``scorer``; not a weight, so it is set after loading).
        self.scorer = None
        #: None: the region types' evidence meets the U-Net's slots by the fixed rules of :func:`merge_other`;
        #: else a :class:`~medsearch.models.region_merge.RegionMerge` for the types it was fitted for (the
        #: region classifier's file holds it; set after loading, as the scorer is)
        self.region_merge = None
        self.reset_projection()

    def reset_projection(self) -> None:
        """The identity projection (the attribute vector itself, zero-padded) and the initial temperature."""
        with torch.no_grad():
            self.proj.weight.zero_()
            n = min(self.dim, FULL_ATTR_DIM)
            self.proj.weight[:n, :n] = torch.eye(n)
            self.logit_scale.fill_(math.log(1 / 0.07))

    def project(self, attr: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(attr), dim=-1)

    def embed_image(self, attr: torch.Tensor) -> torch.Tensor:
        """Unit image embeddings (B, dim) of attribute vectors, by the model's scorer."""
        if self.scorer is None:
            return self.project(attr)
        from medsearch.models.likelihood import image_embedding

        return image_embedding(attr, self.scorer, self.dim)

    def clause_probabilities(self, feats: torch.Tensor, owner: torch.Tensor) -> dict[str, torch.Tensor]:
        """What the clause head reads in N clauses (MiniLM vectors (N, 384)): ``type`` (N, T + 1), a
        distribution, and the compatibility ``lobes`` (N, L), ``density`` (N, D), ``size`` (N, Z); with
        ``owner`` (N,), the text each clause belongs to."""
        logits = self.clause(feats)
        return {"type": torch.softmax(logits["type"], dim=-1), "lobes": torch.sigmoid(logits["lobes"]),
                "density": torch.sigmoid(logits["density"]), "size": torch.sigmoid(logits["size"]),
                "owner": owner}

    def embed_texts(self, feats: torch.Tensor, owner: torch.Tensor, neg_feats: torch.Tensor,
                    neg_owner: torch.Tensor, complete: torch.Tensor) -> torch.Tensor:
        """Unit text embeddings (n, dim), by the model's scorer.

        Args:
            feats, owner: MiniLM vectors (N, 384) of the texts' positive clauses and the text of each (N,).
            neg_feats, neg_owner: the same for the findings the texts negate (the projection ignores them).
            complete: (n,) bool, the texts that describe a whole study (reports).
        """
        n = complete.shape[0]
        if self.scorer is None:
            return self.encode_clauses(feats, owner, n)
        from medsearch.models.likelihood import text_embedding

        return text_embedding(self.clause_probabilities(feats, owner), self.clause_probabilities(neg_feats, neg_owner),
                              complete, self.scorer, self.dim)

    def image_attributes(self, slots: dict[str, torch.Tensor]) -> torch.Tensor:
        attr = attribute_vector(slots["presence"], slots["density"], slots["size"])
        return with_normal(attr, attr[:, :T].amax(dim=1))

    def encode_image(self, x: torch.Tensor, nodules: list | None = None) -> dict[str, torch.Tensor]:
        """The image side; ``nodules`` (one :class:`~medsearch.models.nodule_detector.NoduleEvidence` per
        volume, or None) replaces the U-Net's nodule slots and channel with the detector's.  It may be a
        callable returning that list: it is called after the U-Net's forward pass, so that the caller can
        run the detector concurrently with it."""
        maps, _ = self.image(x)
        # the U-Net's own slots first: a caller's detector may still be running
        out = dict(self.image.slots(maps))
        if callable(nodules):
            nodules = nodules()
        if nodules is not None:
            maps, out = self._with_nodules(maps, out, nodules)
        out["maps"] = maps
        out["attributes"] = self.image_attributes(out)
        out["embedding"] = self.embed_image(out["attributes"])
        nr, nt = HEAD_SPLIT[0], HEAD_SPLIT[1]
        probs = torch.cat([torch.sigmoid(maps[:, nr:nr + nt]), torch.softmax(maps[:, :nr], dim=1)], dim=1)
        out["spatial"] = F.max_pool3d(probs, self.spatial_pool, ceil_mode=True)
        return out

    def _with_nodules(self, maps: torch.Tensor, slots: dict[str, torch.Tensor], nodules: list) -> tuple:
        from medsearch.models.nodule_detector import lobes_within, nodule_slots, paint, paint_other
        from medsearch.models.region_classifier import EXPLAINED_BY, LOBE_REACH, REGION_TYPES

        merge = self.region_merge
        regional = [vocab.FINDING_TYPES.index(r) for r in REGION_TYPES]

        nr, nt, nd, _ = HEAD_SPLIT
        t = vocab.FINDING_TYPES.index("nodule")
        region = torch.softmax(maps[:, :nr], dim=1)[:, 1:]
        slots = {k: v.clone() for k, v in slots.items()}
        painted = []
        for b, ev in enumerate(nodules):
            if ev is None:
                painted.append(maps[b])
                continue
            own = nodule_slots(ev, region[b])
            if own is None:
                slots["presence"][b, t] = 0.0
            else:
                for k in ("presence", "density", "size"):
                    slots[k][b, t] = own[k]
            one = paint(maps[b], ev, nr + t, nr + nt, nr + nt + nd)
            # every type's own slots first: a type's U-Net presence may be explained away by another's
            # the region classifier's components take their lobe from within reach of their centroid
            others = ev.others or {}
            lobes = lobes_within(region[b], LOBE_REACH) if any(r in others for r in REGION_TYPES) else None
            owns = {ftype: nodule_slots(other, lobes if ftype in REGION_TYPES else region[b])
                    for ftype, other in others.items()}
            # the learned merge reads every region type's two presences before any is changed; a type the
            # classifier found no component of has none there
            unet = slots["presence"][b, regional].clone()
            for ftype, other in (ev.others or {}).items():
                k = vocab.FINDING_TYPES.index(ftype)
                if merge is None or ftype not in merge.types:
                    by = owns.get(EXPLAINED_BY.get(ftype))
                    merge_other(slots, b, k, owns[ftype], by["presence"] if by is not None else None)
                one = paint_other(one, other, nr + k)
            if merge is not None:
                mine = torch.stack([owns[r]["presence"] if owns.get(r) is not None else torch.zeros_like(unet[0])
                                    for r in REGION_TYPES])
                for ftype in merge.types:
                    slots["presence"][b, vocab.FINDING_TYPES.index(ftype)] = merge.presence(ftype, unet, mine)
            painted.append(one)
        return torch.stack(painted), slots

    def clause_attributes(self, feats: torch.Tensor) -> torch.Tensor:
        """Attribute vectors (N, ATTR_DIM) of clauses from their MiniLM vectors."""
        p = self.clause_probabilities(feats, torch.zeros(len(feats), dtype=torch.long))
        slots = clause_slots(p["type"], p["lobes"], p["density"], p["size"])
        return attribute_vector(slots["presence"], slots["density"], slots["size"])

    def text_attributes(self, feats: torch.Tensor, owner: torch.Tensor, n: int) -> torch.Tensor:
        """Attribute vectors (n, FULL_ATTR_DIM) of n texts from the MiniLM vectors of their clauses."""
        attr = sum_by_owner(self.clause_attributes(feats), owner, n) if len(feats) else \
            torch.zeros(n, ATTR_DIM)
        return with_normal(attr, attr[:, :T].sum(dim=1))

    def encode_clauses(self, feats: torch.Tensor, owner: torch.Tensor, n: int) -> torch.Tensor:
        return self.project(self.text_attributes(feats, owner, n))

"""Finding slots: the structured space both towers of ``ctseg`` meet in.

A *slot* is a (finding type, lobe) pair.  A study fills slots with a presence
probability and, per slot, a distribution over densities and over size bins.
A text clause ("right upper lobe 8 mm solid nodule") fills the same slots:
its type, the lobes it names (all of them when it names none), and its density
and size (spread evenly when it gives none, so that a short query matches every
density and size).  Both become one *attribute vector*:

    a = [T (types), P (types x lobes), P * D (x densities), P * Z (x size bins)]

with ``T_t = max_l P_tl`` (so that a finding of the right type in another lobe
still counts a little) and the density and size blocks only for the types that
have them.  The model's embedding is a trained linear map of ``a``, L2-normalised
(:class:`medsearch.models.slot_model.SlotModel`).

Plain functions over tensors; batch dimension first.
"""

from __future__ import annotations

import math

import torch

from medsearch import vocab
from medsearch.models.heads import DENSITY_TYPES
from medsearch.models.phrases import SIZED_TYPES

T, L, D, Z = len(vocab.FINDING_TYPES), len(vocab.LOBES), len(vocab.DENSITIES), len(vocab.SIZE_BINS_MM)
ATTR_DIM = T + T * L + T * L * D + T * L * Z
#: Which types carry a density / a size (1.0) in the vector.
DENSITY_MASK = torch.tensor([float(t in DENSITY_TYPES) for t in vocab.FINDING_TYPES])
SIZE_MASK = torch.tensor([float(t in SIZED_TYPES) for t in vocab.FINDING_TYPES])
#: Voxel probabilities below this count for nothing in a slot's presence: the default of a tower's
#: per-type ``presence_floor``, which calibration (stage 1b of ``medsearch train``) refits per type,
#: because one type's voxel maps may never reach a floor that suits another's.
VOXEL_FLOOR = 0.3
#: log(mm) edges of the size bins (0 and inf at the ends).
_EDGES = [0.0] + [math.log(b) for b in vocab.SIZE_BINS_MM[:-1]]


def size_bins_of_log(logsize: torch.Tensor, softness: float = 0.08) -> torch.Tensor:
    """Soft membership (..., Z) of log-diameters (...) in the size bins (sums to 1)."""
    x = logsize[..., None]
    lo = torch.tensor(_EDGES, dtype=x.dtype, device=x.device)
    hi = torch.tensor(_EDGES[1:] + [1e6], dtype=x.dtype, device=x.device)
    lo_part = torch.sigmoid((x - lo) / softness)
    lo_part[..., 0] = 1.0
    member = (lo_part - torch.sigmoid((x - hi) / softness)).clamp_min(0)
    return member / member.sum(-1, keepdim=True).clamp_min(1e-6)


def attribute_vector(presence: torch.Tensor, density: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """The attribute vector (B, ATTR_DIM).

    Args:
        presence: (B, T, L) slot presence in [0, 1] (may exceed 1 for summed text clauses).
        density: (B, T, L, D) density distribution per slot.
        size: (B, T, L, Z) size-bin distribution per slot.
    """
    b = presence.shape[0]
    types = presence.amax(dim=2).clamp(max=1.0)
    dm = DENSITY_MASK.to(presence)[None, :, None, None]
    sm = SIZE_MASK.to(presence)[None, :, None, None]
    pd = presence[..., None] * density * dm
    pz = presence[..., None] * size * sm
    return torch.cat([types, presence.reshape(b, -1), pd.reshape(b, -1), pz.reshape(b, -1)], dim=1)


def slot_counts(w: torch.Tensor, floor: torch.Tensor | float = VOXEL_FLOOR) -> torch.Tensor:
    """Soft count (..., T, L) of the voxels whose type-and-lobe probability ``w`` (..., T, L, V) clears
    the floor: a number, or one per type (T,)."""
    if isinstance(floor, torch.Tensor):
        floor = floor.to(w)[:, None, None]
    return ((w - floor).clamp_min(0) / (1 - floor)).sum(dim=-1)


def image_slots(maps: torch.Tensor, scale: torch.Tensor | None = None, offset: torch.Tensor | None = None,
                threshold: float = 0.5, floor: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Study-level slots from the tower's voxel maps.

    A slot's presence follows how many voxels confidently show the type in the lobe (a soft count of
    the voxels above a per-type floor), through a per-type logistic calibration: a count is robust
    to a stray voxel where a peak is not.

    Args:
        maps: (B, 20, z, y, x) raw head outputs of :class:`~medsearch.models.image_tower_seg.SegEncoder`.
        scale, offset: (T,) calibration, ``presence = sigmoid(scale * (log(count + 0.05) - offset))``
            (the tower's ``presence_scale`` / ``presence_offset``; defaults 3 and 0).
        threshold: voxels whose type-and-lobe probability reaches this fraction of the slot's peak
            give the slot's density and size (so that the faint background does not).
        floor: (T,) the voxel probability each type's count starts above (the tower's
            ``presence_floor``; default :data:`VOXEL_FLOOR` for every type).

    Returns:
        ``presence`` (B, T, L) (differentiable), ``density`` (B, T, L, D) and ``size`` (B, T, L, Z)
        (not differentiable).
    """
    from medsearch.models.image_tower_seg import HEAD_SPLIT

    nr, nt, nd, _ = HEAD_SPLIT
    b = maps.shape[0]
    flat = maps.reshape(b, maps.shape[1], -1)
    region = torch.softmax(flat[:, :nr], dim=1)[:, 1:]                       # (B, L, V)
    types = torch.sigmoid(flat[:, nr:nr + nt])                               # (B, T, V)
    w = types[:, :, None] * region[:, None]                                  # (B, T, L, V)
    count = slot_counts(w, VOXEL_FLOOR if floor is None else floor)
    scale = torch.full((nt,), 3.0, device=maps.device) if scale is None else scale
    offset = torch.zeros(nt, device=maps.device) if offset is None else offset
    presence = torch.sigmoid(scale[None, :, None] * (torch.log(count + 0.05) - offset[None, :, None]))
    with torch.no_grad():
        peak = w.amax(dim=-1)
        dens = torch.softmax(flat[:, nr + nt:nr + nt + nd], dim=1)           # (B, D, V)
        logsize = flat[:, -1]                                                # (B, V)
        keep = (w >= threshold * peak[..., None].clamp_min(1e-6)).to(w.dtype) * w
        norm = keep.sum(-1).clamp_min(1e-6)
        density = torch.einsum("btlv,bdv->btld", keep, dens) / norm[..., None]
        size = size_bins_of_log(torch.einsum("btlv,bv->btl", keep, logsize) / norm)
    return {"presence": presence, "density": density, "size": size}


def clause_slots(type_p: torch.Tensor, lobes: torch.Tensor, density: torch.Tensor,
                 size: torch.Tensor) -> dict[str, torch.Tensor]:
    """Slots of text clauses from the clause head's probabilities.

    Args:
        type_p: (N, T + 1) type distribution; the last column is "not one of the finding types".
        lobes: (N, L) probability that the clause's site covers each lobe.
        density, size: (N, D), (N, Z) probability that each value is compatible with the clause.
    """
    presence = type_p[:, :T, None] * lobes[:, None, :]
    dens = density / density.sum(-1, keepdim=True).clamp_min(1e-6)
    sz = size / size.sum(-1, keepdim=True).clamp_min(1e-6)
    n = presence.shape[0]
    return {"presence": presence,
            "density": dens[:, None, None, :].expand(n, T, L, D),
            "size": sz[:, None, None, :].expand(n, T, L, Z)}


def sum_by_owner(vectors: torch.Tensor, owner: torch.Tensor, n: int) -> torch.Tensor:
    """Sum clause vectors (N, K) into their texts (n, K); ``owner`` (N,) gives each clause's text."""
    out = torch.zeros(n, vectors.shape[1], dtype=vectors.dtype, device=vectors.device)
    return out.index_add_(0, owner, vectors)

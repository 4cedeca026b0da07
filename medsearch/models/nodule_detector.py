"""The image tower's nodule detector: candidates on the scan's own grid, a patch classifier, evidence.

The U-Net sees the chest at 4.3 x 4.3 x 6.5 mm and its nodule channel stayed at chance
(docs/model.md).  The detector works on the native pixels instead, in two stages
(LUNA16's): :func:`~medsearch.models.candidates.find_candidates` proposes the blobs of
the lungs, :class:`~medsearch.models.nodule_net.NoduleNet` scores each, and a Platt
calibration fitted on held-out candidates (at their natural, rare, base rate) makes
the scores probabilities.  Its output, :class:`NoduleEvidence`, is placed on the
U-Net's half-resolution grid, where :class:`~medsearch.models.slot_model.SlotModel`
takes the nodule slots from it (:func:`nodule_slots`) and paints the nodule channel
of its maps, so that the embedding, the findings, the stored spatial map and the key
slice all follow the detector.

A detector may score other types on the same candidates (``types``; the shipped one scores cavities and
ground-glass opacities, which its candidates find where the U-Net's coarse grid blurs them): their
detections travel as
:attr:`NoduleEvidence.others` and raise the U-Net's slots and channel of that type.

A detector may also hold **members**: further networks trained on the same kind of candidates (another seed,
another number of candidates per scan), each with its own calibrations.  Every candidate is then scored by
each network, and the calibrated log-odds, log-diameters and density distributions are averaged, an
ensemble (``medsearch combine-nodules``; docs/model.md, "Two detector networks averaged").

A model folder holds the detector as ``nodule.pt`` (weights, calibration, summary);
without one the tower is the U-Net alone, as in models trained before it existed.  Beside it, a
region classifier (``regions.pt``, :mod:`medsearch.models.region_classifier`) may classify the lungs' dense
components on the same grid and with the same lung mask: its masses, consolidations and atelectasis travel in
:attr:`NoduleEvidence.others` as well.
"""

from __future__ import annotations

import pickle
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medsearch import vocab
from medsearch.models.candidates import MAX_CANDIDATES, LungGrid, extract_patches, find_candidates, lung_mask
from medsearch.models.nodule_net import DETECTED_TYPES, NoduleNet

#: File of the detector in a model folder.
NODULE_FILE = "nodule.pt"
#: Logit the painted nodule channel has where the detector found nothing.
BACKGROUND_LOGIT = -8.0
#: Candidates below this calibrated probability are dropped from the evidence (they would only add
#: noise to the noisy-OR of a slot).
MIN_PROBABILITY = 0.02
#: The detector works on a grid no finer than this (mm): a 512-matrix scan is averaged down first,
#: which keeps it fast and matches the 2 mm patches.
DETECTION_MM = 1.5
#: Candidates per forward pass of a network.  A scan's 96 patches in one batch hold about 25 MB of
#: activations per layer, beyond the CPU's caches; in chunks of 32 the same arithmetic ran 35-40 % faster
#: on 2 cores (docs/model.md, "Speed").  Each patch is scored on its own, so the outputs do not depend on it.
SCORE_BATCH = 32
_LPS_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class Detections:
    """Scored candidates of one scan on its own grid.

    Attributes:
        index: (N, 3) voxel ``(z, y, x)`` of the scan.
        probability: (N,) calibrated probability that a nodule is there.
        diameter_mm: (N,) its estimated diameter.
        density: (N, D) probabilities over ``vocab.DENSITIES``.
    """

    index: np.ndarray
    probability: np.ndarray
    diameter_mm: np.ndarray
    density: np.ndarray
    lungs: LungGrid | None = None
    #: other detected type -> (N,) calibrated probability that a finding of that type is there
    others: dict | None = None
    #: the region classifier's components (:class:`~medsearch.models.region_classifier.RegionDetections`,
    #: indices on the scan's grid), or None
    regions: object | None = None

    def __len__(self) -> int:
        return len(self.probability)


@dataclass
class NoduleEvidence:
    """Detections placed on the tower's half-resolution grid (what :class:`SlotModel` consumes).

    Attributes:
        cells: (N, 3) float ``(z, y, x)`` coordinates on that grid.
        probability, density: as in :class:`Detections`.
        logsize: (N,) log of the diameter in mm.
        native: (N, 3) the detections' voxels ``(z, y, x)`` on the scan's own grid (for key slices and
            boxes), or None.
        lungs: the lung mask the detector computed, which the key slices of the other findings reuse
            (:mod:`medsearch.models.slot_locations`); None when loaded from a cache.
        weak: the candidates below :data:`MIN_PROBABILITY`, in the same form, or None.  They never
            count as nodules; they only place the key slice of a nodule slot the detector left empty
            (a query for a nodule in a lobe where it found none: its most nodule-like blob).
        others: for a detector that scores other types too (masses, cavities), type -> their evidence in
            the same form (without ``weak``), or None.
    """

    cells: np.ndarray
    probability: np.ndarray
    logsize: np.ndarray
    density: np.ndarray
    native: np.ndarray | None = None
    lungs: LungGrid | None = None
    weak: "NoduleEvidence | None" = None
    others: "dict[str, NoduleEvidence] | None" = None

    @classmethod
    def empty(cls) -> "NoduleEvidence":
        return cls(np.zeros((0, 3)), np.zeros(0, np.float32), np.zeros(0, np.float32),
                   np.zeros((0, len(vocab.DENSITIES)), np.float32))

    def __len__(self) -> int:
        return len(self.probability)


def _detection_grid(hu: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hu, spacing, step): ``hu`` block-averaged by an integer ``step`` per axis so that no axis is
    finer than :data:`DETECTION_MM`."""
    sp = np.asarray(spacing, float)
    step = np.maximum(np.floor(DETECTION_MM / sp), 1).astype(int)
    if (step == 1).all():
        return hu, sp, step
    shape = np.asarray(hu.shape) // step
    cut = hu[:shape[0] * step[0], :shape[1] * step[1], :shape[2] * step[2]].astype(np.float32)
    blocks = cut.reshape(shape[0], step[0], shape[1], step[1], shape[2], step[2]).mean(axis=(1, 3, 5))
    return blocks, sp * step, step


class NoduleDetector:
    """A trained :class:`NoduleNet` with its calibration.

    Args:
        net: the patch classifier (put in eval mode here).
        scale, offset: Platt calibration of the nodule logit, ``p = sigmoid(scale * logit + offset)``.
        max_candidates: the most candidates scored per scan (the calibration was fitted at this number,
            so it belongs to the detector; files from before it was stored used 48).
        types: the types the net scores, nodule first (:data:`DETECTED_TYPES`; files from before other
            types were scored hold nodules alone).
        calibration: each other type's (scale, offset).
        members: further detectors of the same types whose networks score the same candidates; their
            calibrated outputs are averaged with this one's (an ensemble).  Only their networks and
            calibrations count: the candidates per scan and the region classifier are this detector's.
    """

    def __init__(self, net: NoduleNet, scale: float = 1.0, offset: float = 0.0, summary: dict | None = None,
                 max_candidates: int = MAX_CANDIDATES, types: tuple[str, ...] = DETECTED_TYPES[:1],
                 calibration: dict | None = None, members: list["NoduleDetector"] | None = None):
        self.net = net.eval()
        self.scale, self.offset = float(scale), float(offset)
        self.summary = summary or {}
        self.max_candidates = int(max_candidates)
        self.types = tuple(types)
        if len(self.types) != net.types or self.types[0] != "nodule":
            raise ValueError(f"types {self.types} do not match a net scoring {net.types} type(s), nodule first")
        self.calibration = {t: (float(a), float(b)) for t, (a, b) in (calibration or {}).items()}
        self.calibration.update({t: (1.0, 0.0) for t in self.types[1:] if t not in self.calibration})
        self.members: list[NoduleDetector] = []
        for member in members or []:
            self.add_member(member)
        #: the region classifier of the same model folder (``regions.pt``), or None
        self.regions = None

    def add_member(self, other: "NoduleDetector") -> None:
        """Score every candidate with ``other``'s network(s) as well (its own members come along).

        Raises:
            ValueError: ``other`` scores other types, or its network is already one of this detector's.
        """
        if tuple(other.types) != self.types:
            raise ValueError(f"a detector scoring {', '.join(other.types)} cannot join one scoring "
                             f"{', '.join(self.types)}; train it with the same --types.")
        mine = {_net_digest(d.net) for d in self.networks()}
        for d in other.networks():
            if _net_digest(d.net) in mine:
                raise ValueError("that network is already one of this detector's; averaging it again would "
                                 "only weigh it twice. Combine detectors trained with another --seed or "
                                 "--candidates.")
            mine.add(_net_digest(d.net))
            self.members.append(NoduleDetector(d.net, d.scale, d.offset, None, self.max_candidates, d.types,
                                               d.calibration))

    def networks(self) -> list["NoduleDetector"]:
        """This detector and its members, whose calibrated outputs are averaged."""
        return [self, *self.members]

    # ------------------------------------------------------------------ files
    def _blob(self) -> dict:
        config = {"width": self.net.width, "cells": self.net.cells}
        extra = {}
        if len(self.types) > 1:
            config["types"] = self.net.types
            extra = {"types": list(self.types),
                     "type_calibration": {t: {"scale": a, "offset": b} for t, (a, b) in self.calibration.items()}}
        return {"state": {k: v.detach().cpu() for k, v in self.net.state_dict().items()},
                "config": config, "calibration": {"scale": self.scale, "offset": self.offset}, **extra}

    def save(self, path: Path) -> None:
        extra = {"members": [m._blob() for m in self.members]} if self.members else {}
        torch.save({**self._blob(), "max_candidates": self.max_candidates, "summary": self.summary, **extra},
                   Path(path))

    @classmethod
    def load(cls, model_dir: Path) -> "NoduleDetector | None":
        """The detector of a model folder, or None when it has none.

        Raises:
            ConfigError: ``nodule.pt`` is there but unreadable.
        """
        path = Path(model_dir) / NODULE_FILE
        if not path.exists():
            return None
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            max_candidates = int(blob.get("max_candidates", MAX_CANDIDATES))
            det = cls._from_blob(blob, blob.get("summary"), max_candidates)
            # members are checked as they join: a file edited to hold another type's network is refused
            for member in blob.get("members", []):
                det.add_member(cls._from_blob(member, None, max_candidates))
        except (OSError, RuntimeError, KeyError, TypeError, ValueError, EOFError, pickle.UnpicklingError) as exc:
            from medsearch.errors import ConfigError

            raise ConfigError(f"The nodule detector '{path}' cannot be read ({type(exc).__name__}).",
                              "Retrain it ('medsearch train-nodules MODEL_DIR') or remove the file to run "
                              "the model without it.") from None
        from medsearch.models.region_classifier import RegionClassifier

        det.regions = RegionClassifier.load(model_dir)
        return det

    @classmethod
    def _from_blob(cls, blob: dict, summary: dict | None, max_candidates: int) -> "NoduleDetector":
        net = NoduleNet(**blob["config"])
        net.load_state_dict({k: v.float() for k, v in blob["state"].items()})
        cal = blob.get("calibration", {})
        return cls(net, cal.get("scale", 1.0), cal.get("offset", 0.0), summary, max_candidates,
                   tuple(blob.get("types", DETECTED_TYPES[:1])),
                   {t: (c["scale"], c["offset"]) for t, c in blob.get("type_calibration", {}).items()})

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def score(self, patches: np.ndarray, features: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Calibrated probability (N,), diameter mm (N,) and density (N, D) of candidate patches."""
        p, diameter, density, _ = self.score_types(patches, features)
        return p, diameter, density

    @torch.no_grad()
    def score_types(self, patches: np.ndarray, features: np.ndarray) -> tuple:
        """:meth:`score` plus each other type's calibrated probability (type -> (N,))."""
        if len(patches) == 0:
            return (np.zeros(0, np.float32), np.zeros(0, np.float32),
                    np.zeros((0, len(vocab.DENSITIES)), np.float32),
                    {t: np.zeros(0, np.float32) for t in self.types[1:]})
        x, f = torch.from_numpy(patches), torch.from_numpy(features)
        log_odds, logsizes, densities = [], [], []
        for det in self.networks():
            net = det.scoring_net()
            outs = [net(x[i:i + SCORE_BATCH], f[i:i + SCORE_BATCH]) for i in range(0, len(x), SCORE_BATCH)]
            logits, logsize, dens = (torch.cat(parts) for parts in zip(*outs))
            log_odds.append(det.calibrated_log_odds(logits))
            logsizes.append(logsize)
            densities.append(torch.softmax(dens, dim=1))
        # an ensemble averages each network's calibrated log-odds (not its probabilities), so that one
        # network's confident "no" is not outvoted by another's lukewarm "yes"
        z = torch.stack(log_odds).mean(dim=0)
        p = torch.sigmoid(z)
        others = {t: p[:, k].numpy().astype(np.float32) for k, t in enumerate(self.types) if k}
        return (p[:, 0].numpy().astype(np.float32), torch.stack(logsizes).mean(dim=0).exp().numpy().astype(np.float32),
                torch.stack(densities).mean(dim=0).numpy().astype(np.float32), others)

    def scoring_net(self) -> torch.nn.Module:
        """The network that scores candidates: ``self.net`` with its batch norms folded into its convolutions
        (:func:`~medsearch.models.batchnorm_folding.folded_copy`, about a fifth faster), or ``self.net`` itself
        in training mode.  The copy is made once and made again whenever ``self.net`` or any of its tensors
        changes (moved, or updated in place)."""
        net = self.net
        if net.training:
            return net
        # a tensor updated in place keeps its storage and bumps its version counter
        key = (id(net), *((t.data_ptr(), t._version) for t in net.state_dict().values()))
        cached = getattr(self, "_scoring", None)
        if cached is None or cached[0] != key:
            from medsearch.models.batchnorm_folding import folded_copy

            cached = self._scoring = (key, folded_copy(net))
        return cached[1]

    def calibrated_log_odds(self, logits: torch.Tensor) -> torch.Tensor:
        """(N, types) this network's raw logits (N, types) through its own Platt calibrations."""
        scales = torch.tensor([self.scale] + [self.calibration[t][0] for t in self.types[1:]], dtype=logits.dtype)
        offsets = torch.tensor([self.offset] + [self.calibration[t][1] for t in self.types[1:]], dtype=logits.dtype)
        return logits * scales + offsets

    def detect(self, hu: np.ndarray, spacing, pool: Executor | None = None) -> Detections:
        """Nodules (and the other types it scores) of one scan ``hu`` (z, y, x) with ``spacing``
        (dz, dy, dx) mm; indices on its grid.

        With a ``pool``, the region classifier runs there, beside the candidates and their networks (it
        needs only the lung mask); the detections are the same either way.  The pool must not be the one
        this call runs in, or a pool whose workers may all be waiting on such calls.
        """
        grid, sp, step = _detection_grid(np.asarray(hu), spacing)
        lungs = lung_mask(grid, tuple(sp))
        pending = None
        if self.regions is not None and pool is not None:
            pending = pool.submit(self.regions.detect, grid, tuple(sp), lungs)
        cands = find_candidates(grid, tuple(sp), lungs, self.max_candidates)
        p, diameter, density, others = self.score_types(extract_patches(grid, tuple(sp), cands.index),
                                                        cands.features())
        index = cands.index * step + (step - 1) / 2.0
        regions = None
        if self.regions is not None:
            regions = pending.result() if pending is not None else self.regions.detect(grid, tuple(sp), lungs)
            regions.index = regions.index * step + (step - 1) / 2.0
        return Detections(index.astype(np.float64), p, diameter, density, LungGrid(lungs, step), others or None,
                          regions)

    def evidence(self, vol, canon_affine: np.ndarray) -> NoduleEvidence:
        """The detections of ``vol`` (an HUVolume) on the half-resolution grid of the canonical volume
        whose affine (voxel (x, y, z) -> RAS mm) is ``canon_affine``."""
        return as_evidence(self.detect(vol.hu, vol.spacing), vol.affine, canon_affine)


def _net_digest(net: NoduleNet) -> bytes:
    import hashlib

    return hashlib.sha256(b"".join(v.detach().cpu().numpy().tobytes() for v in net.state_dict().values())).digest()


def as_evidence(det: Detections, native_affine: np.ndarray, canon_affine: np.ndarray) -> NoduleEvidence:
    """:meth:`NoduleDetector.evidence` from detections already made on the scan whose affine is
    ``native_affine``: the encoder detects before it knows the canonical grid, so that the detector
    overlaps the resampling as well as the U-Net."""
    half = native_to_half(det.index, native_affine, canon_affine).reshape(-1, 3)
    logsize = np.log(np.maximum(det.diameter_mm, 1.0))

    def part(sel: np.ndarray, probability: np.ndarray) -> NoduleEvidence:
        return NoduleEvidence(half[sel], probability[sel], logsize[sel], det.density[sel],
                              det.index[sel].reshape(-1, 3))

    keep = det.probability >= MIN_PROBABILITY
    others = {t: part(p >= MIN_PROBABILITY, p) for t, p in det.others.items()} if det.others else None
    if det.regions is not None and len(det.regions):
        others = {**(others or {}), **region_evidence(det.regions, native_affine, canon_affine)}
    return replace(part(keep, det.probability), lungs=det.lungs, weak=part(~keep, det.probability),
                   others=others)


def region_evidence(regions, native_affine: np.ndarray, canon_affine: np.ndarray) -> dict:
    """Region type -> :class:`NoduleEvidence` of the region classifier's components (those at least
    :data:`MIN_PROBABILITY` likely; their density is solid, as every region type's is)."""
    half = native_to_half(regions.index, native_affine, canon_affine).reshape(-1, 3)
    logsize = np.log(np.maximum(regions.diameter_mm, 1.0)).astype(np.float32)
    solid = np.zeros((len(regions), len(vocab.DENSITIES)), np.float32)
    solid[:, vocab.DENSITIES.index("solid")] = 1.0
    out = {}
    for t, p in regions.probability.items():
        sel = p >= MIN_PROBABILITY
        out[t] = NoduleEvidence(half[sel], p[sel], logsize[sel], solid[sel], regions.index[sel].reshape(-1, 3))
    return out


def scan_lungs(hu: np.ndarray, spacing) -> LungGrid:
    """The lung mask of a scan on the detector's grid (for a model without a detector, or cached evidence)."""
    grid, sp, step = _detection_grid(np.asarray(hu), spacing)
    return LungGrid(lung_mask(grid, tuple(sp)), step)


def native_to_half(index_zyx: np.ndarray, native_affine: np.ndarray, canon_affine: np.ndarray) -> np.ndarray:
    """Native voxel ``(z, y, x)`` (N, 3) -> ``(z, y, x)`` coordinates on the tower's half-resolution grid."""
    pts = np.c_[np.asarray(index_zyx, float)[:, ::-1], np.ones(len(index_zyx))]
    ras = _LPS_RAS @ np.asarray(native_affine, float) @ pts.T
    canon = (np.linalg.inv(np.asarray(canon_affine, float)) @ ras)[:3].T[:, ::-1]   # (z, y, x)
    return (canon + 0.5) / 2.0 - 0.5


def located(ev: NoduleEvidence, cells: np.ndarray, native_affine: np.ndarray, native_shape) -> tuple | None:
    """Key slice and box ``[x0, y0, x1, y1]`` on the scan of the surest detection whose cell is one of
    ``cells`` (M, 3) (a finding's component on the half-resolution grid), or None when none is."""
    if ev is None or ev.native is None or not len(ev):
        return None
    own = np.rint(ev.cells).astype(np.int64)
    inside = (own[:, None, :] == np.asarray(cells)[None, :, :]).all(-1).any(1)
    if not inside.any():
        return None
    k = int(np.flatnonzero(inside)[np.argmax(ev.probability[inside])])
    return detection_box(ev, k, native_affine, native_shape)


def detection_box(ev: NoduleEvidence, k: int, native_affine: np.ndarray, native_shape) -> tuple[int, list[int]]:
    """Key slice and box ``[x0, y0, x1, y1]`` (its diameter plus a pixel) of detection ``k`` on the scan.

    The slice is the detection's own, not refined: moving it to the box's brightest slice within the
    nodule's radius lost 10 of 64 key slices on a benchmark archive (docs/index-and-search.md).
    """
    z, y, x = ev.native[k]
    nz, ny, nx = (int(n) for n in native_shape)
    pixel = float(np.linalg.norm(np.asarray(native_affine, float)[:3, 0])) or 1.0
    r = max(2.0, float(np.exp(ev.logsize[k])) / 2 / pixel + 1)
    box = [int(max(0, np.floor(x - r))), int(max(0, np.floor(y - r))), int(min(nx - 1, np.ceil(x + r))),
           int(min(ny - 1, np.ceil(y + r)))]
    return int(np.clip(np.rint(z), 0, nz - 1)), box


def _cells(ev: NoduleEvidence, shape) -> np.ndarray:
    return np.clip(np.rint(ev.cells), 0, np.asarray(shape) - 1).astype(np.int64)


def nodule_slots(ev: NoduleEvidence, region: torch.Tensor) -> dict[str, torch.Tensor] | None:
    """Nodule slots of one study from its evidence.

    A detection at a cell belongs to each lobe by the U-Net's region probability there; a
    slot's presence is the noisy-OR of its detections, and the probability of each density and
    size bin the noisy-OR of the detections' share in it, divided by the presence (so the attribute
    vector's presence x distribution is the joint probability; it need not sum to one).

    Args:
        region: (L, z, y, x) lobe probabilities of the study (the region softmax without background).

    Returns:
        ``presence`` (L,), ``density`` (L, D), ``size`` (L, Z); None without evidence.
    """
    from medsearch.models.slots import size_bins_of_log

    if len(ev) == 0:
        return None
    c = _cells(ev, region.shape[1:])
    r = region[:, c[:, 0], c[:, 1], c[:, 2]].T                                      # (N, L)
    w = torch.from_numpy(ev.probability).to(r)[:, None] * r                          # (N, L)
    presence = 1.0 - torch.prod(1.0 - w.clamp(0, 1), dim=0)
    norm = w.sum(0).clamp_min(1e-6)
    logsize = (w.T @ torch.from_numpy(ev.logsize).to(r)) / norm
    flat = torch.full((len(vocab.DENSITIES),), 1.0 / len(vocab.DENSITIES)).to(r)
    weak = w.sum(0) < 1e-3
    # density and size per bin as the noisy-OR of the detections that have them, over the presence, so that
    # presence x distribution is P(a nodule of this size in the lobe): a faint small nodule beside a surer large
    # blob keeps its own bin rather than the mean of the two (docs/model.md, "Per-bin nodule evidence")
    q = size_bins_of_log(torch.from_numpy(ev.logsize).to(r))                                 # (N, Z)
    dd = torch.from_numpy(ev.density).to(r)                                                  # (N, D)
    size = 1.0 - torch.prod(1.0 - (w[:, :, None] * q[:, None, :]).clamp(0, 1), dim=0)        # (L, Z)
    joint_d = 1.0 - torch.prod(1.0 - (w[:, :, None] * dd[:, None, :]).clamp(0, 1), dim=0)    # (L, D)
    held = ~weak[:, None]
    size = torch.where(held, size / presence.clamp_min(1e-6)[:, None], size_bins_of_log(logsize))
    density = torch.where(held, joint_d / presence.clamp_min(1e-6)[:, None], flat)
    return {"presence": presence, "density": density, "size": size}


def lobes_within(region: torch.Tensor, reach: int) -> torch.Tensor:
    """(L, z, y, x): each lobe's largest probability within ``reach`` cells of each cell (``region`` itself for a
    reach of 0).

    A large dense component's centroid lies in tissue the U-Net calls background (a mass against the chest
    wall), where every lobe's own probability is near zero; its neighbourhood says which lobe it is in
    (:data:`~medsearch.models.region_classifier.LOBE_REACH`).  A component astride a fissure counts for both
    lobes, as a nodule's detection there does.

    Args:
        region: (L, z, y, x) lobe probabilities (the region softmax without background).
    """
    if reach <= 0:
        return region
    return F.max_pool3d(region[None], 2 * reach + 1, stride=1, padding=reach)[0]


def paint(maps: torch.Tensor, ev: NoduleEvidence, channel: int, density_at: int, logsize_at: int) -> torch.Tensor:
    """One study's raw maps (C, z, y, x) with the nodule channel replaced by the detections' logits, and
    the density and size channels taken from the detector where it is surer than not."""
    out = maps.detach().clone()   # the detector's logits are not the U-Net's: no gradient flows through them
    out[channel] = BACKGROUND_LOGIT
    if len(ev) == 0:
        return out
    c = _cells(ev, maps.shape[1:])
    p = np.clip(ev.probability, 1e-4, 1 - 1e-4)
    logits = np.log(p / (1 - p))
    for (z, y, x), lg, k in zip(c, logits, range(len(ev))):
        out[channel, z, y, x] = max(float(out[channel, z, y, x]), float(lg))
        if lg > 0:
            nd = ev.density.shape[1]
            out[density_at:density_at + nd, z, y, x] = torch.log(torch.from_numpy(ev.density[k]).clamp_min(1e-4))
            out[logsize_at, z, y, x] = float(ev.logsize[k])
    return out


def paint_other(maps: torch.Tensor, ev: NoduleEvidence, channel: int) -> torch.Tensor:
    """One study's raw maps (C, z, y, x) with a mass or cavity channel raised to the detections' logits
    where they are surer than the U-Net (the U-Net's own finding of that type stays: the slots take the
    larger presence, :func:`~medsearch.models.slot_model.merge_other`)."""
    if len(ev) == 0:
        return maps
    out = maps.detach().clone()
    c = _cells(ev, maps.shape[1:])
    p = np.clip(ev.probability, 1e-4, 1 - 1e-4)
    for (z, y, x), lg in zip(c, np.log(p / (1 - p))):
        out[channel, z, y, x] = max(float(out[channel, z, y, x]), float(lg))
    return out


__all__ = ["BACKGROUND_LOGIT", "Detections", "NODULE_FILE", "NoduleDetector", "NoduleEvidence", "as_evidence",
           "lobes_within", "located", "native_to_half", "nodule_slots", "paint", "paint_other", "region_evidence"]

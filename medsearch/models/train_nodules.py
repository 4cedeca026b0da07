"""Training the nodule detector (``medsearch train-nodules``): candidates, patches, NoduleNet, calibration.

Examples come from synthetic studies generated on their own grid (the archive's 128
matrix), half of them with a nodule forced in (foreground oversampling; the other half
as planned, so the negatives are realistic).  Every candidate of
:func:`~medsearch.models.candidates.find_candidates` becomes a patch; it is a positive
when it lies on a nodule's mask (one voxel of margin), and then carries that nodule's
diameter and density.  Other findings' candidates are negatives, unless the detector also scores their
type (``types``, :func:`study_plan`: cavities and ground-glass opacities in the shipped detector), when they
are positives of that type.

Training samples balanced batches (half positives) with flips and in-plane transposes.
The scores are then calibrated (Platt) on the held-out studies' candidates at their
natural rate, so that a probability means what it says when the slots take a noisy-OR
over a scan's ~48 candidates.  Deterministic for a seed; CPU, or CUDA when present.
Only synthetic seeds train it: a hospital's reports say where a nodule is only in
words, not in voxels.
"""

from __future__ import annotations

import logging
import random
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from medsearch import vocab
from medsearch.models.candidates import MAX_CANDIDATES
from medsearch.models.nodule_detector import NoduleDetector
from medsearch.models.nodule_net import DETECTED_TYPES, NoduleNet

log = logging.getLogger(__name__)


@dataclass
class NoduleTrainConfig:
    steps: int = 1500
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    width: int = 16
    seed: int = 0
    #: share of the studies held out for calibration and validation
    val_fraction: float = 0.15
    #: weights of the size and density losses (on positives)
    size_weight: float = 0.3
    density_weight: float = 0.3
    #: candidates per scan (the examples must have been built with the same number)
    max_candidates: int = MAX_CANDIDATES
    #: with more types than nodules: candidates of each other type added to every batch, and the weight of
    #: their (independent, per type) BCE
    other_per_batch: int = 8
    other_weight: float = 1.0


@dataclass
class Examples:
    """Candidates of many studies: patches (N, 1, c, c, c) float16, features (N, F), label (N,) (0 = on no
    finding, 1 + k = on a finding of ``types[k]``; 1 is a nodule), log-diameter (N,), density index (N,) (-1
    where on none), study (N,) and, per study, whether it holds a nodule and (``has``, (S, len(types)))
    each type."""

    patches: np.ndarray
    features: np.ndarray
    label: np.ndarray
    logsize: np.ndarray
    density: np.ndarray
    study: np.ndarray
    has_nodule: np.ndarray
    types: tuple[str, ...] = DETECTED_TYPES[:1]
    has: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.has is None:
            self.has = np.asarray(self.has_nodule, bool)[:, None]

    def subset(self, studies: np.ndarray) -> "Examples":
        keep = np.isin(self.study, studies)
        remap = {int(s): k for k, s in enumerate(studies)}
        studies = np.asarray(studies)
        return Examples(self.patches[keep], self.features[keep], self.label[keep], self.logsize[keep],
                        self.density[keep], np.array([remap[int(s)] for s in self.study[keep]], np.int64),
                        self.has_nodule[studies], self.types, self.has[studies])


def study_examples(args: tuple) -> dict:
    """The candidates of synthetic study ``index`` of ``seed``, at most ``max_candidates`` (48 when not given).

    ``args`` is ``(seed, index, force[, max_candidates[, types]])``: ``force`` is a finding type to force into
    the study (True means "nodule"; False or None keeps the planned findings), ``types`` the detected types
    (``("nodule",)`` when not given).  A candidate's label is 1 + the index in ``types`` of the finding it lies
    on (nodules first where they overlap), 0 on none of them.
    """
    from scipy import ndimage

    from medsearch.models.candidates import extract_patches, find_candidates, lung_mask
    from medsearch.synth.study import generate_study

    defaults = (MAX_CANDIDATES, DETECTED_TYPES[:1])
    seed, index, force, max_candidates, types = (*args, *defaults[len(args) - 3:])
    force = "nodule" if force is True else (force or None)
    st = generate_study(seed, index, 128, findings=[force] if force else None)
    cands = find_candidates(st.hu, st.spacing, lung_mask(st.hu, st.spacing), max_candidates)
    label = np.zeros(len(cands), np.int8)
    logsize = np.zeros(len(cands), np.float32)
    density = np.full(len(cands), -1, np.int64)
    at = tuple(cands.index.T)
    for k, ftype in enumerate(types):
        for mask, f in zip(st.masks, st.labels["findings"]):
            if f["type"] != ftype or not len(cands):
                continue
            hit = ndimage.binary_dilation(mask, iterations=1)[at] & (label == 0)
            label[hit] = k + 1
            logsize[hit] = np.log(f["diameter_mm"])
            density[hit] = vocab.DENSITIES.index(f["density"])
    present = {f["type"] for f in st.labels["findings"]}
    return {"patches": extract_patches(st.hu, st.spacing, cands.index).astype(np.float16),
            "features": cands.features(), "label": label, "logsize": logsize, "density": density,
            "has": np.array([t in present for t in types], bool), "has_nodule": "nodule" in present}


#: With other types than nodules, each adds one study per this many: a study with that finding forced in.
OTHER_PERIOD = 6


def study_plan(studies: int, types: tuple[str, ...]) -> list[tuple[int, str | None]]:
    """(study index, finding forced into it or None) of every study the examples come from.

    The first ``studies`` are the nodule detector's as since it began: a nodule forced into the even ones,
    the odd ones as planned (realistic negatives).  Each other type ``types[1 + k]`` then adds studies
    with it forced in, at the indices ``1 + 2k, 1 + 2k + 6, ...`` below ``studies`` (one in
    :data:`OTHER_PERIOD`), so that adding a type leaves the nodule examples as they were (a detector that
    traded half its planned studies for forced masses and cavities scored nodules 2 points of R@10 worse,
    docs/model.md).
    """
    plan = [(i, "nodule" if i % 2 == 0 else None) for i in range(studies)]
    for k, ftype in enumerate(types[1:]):
        plan += [(i, ftype) for i in range(1 + 2 * k, studies, OTHER_PERIOD)]
    return plan


def build_examples(seed: int, studies: int, workers: int = 2, progress: bool = True,
                   max_candidates: int = MAX_CANDIDATES, types: tuple[str, ...] = DETECTED_TYPES[:1]) -> Examples:
    """Candidates of the synthetic studies of ``seed`` that :func:`study_plan` lists for ``studies`` and
    ``types``, labelled for ``types``."""
    types = tuple(types)
    jobs = [(int(seed), i, force, int(max_candidates), types) for i, force in study_plan(studies, types)]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            parts = list(tqdm(pool.map(study_examples, jobs, chunksize=2), total=len(jobs), desc="nodule candidates",
                              unit="study", disable=not progress))
    else:
        parts = [study_examples(j) for j in tqdm(jobs, desc="nodule candidates", unit="study", disable=not progress)]
    return Examples(*(np.concatenate([p[k] for p in parts]) for k in
                      ("patches", "features", "label", "logsize", "density")),
                    np.concatenate([np.full(len(p["label"]), i, np.int64) for i, p in enumerate(parts)]),
                    np.array([p["has_nodule"] for p in parts], bool), types,
                    np.stack([p["has"] for p in parts]))


def _augment(x: torch.Tensor, rng: random.Random) -> torch.Tensor:
    for dim in (2, 3, 4):
        if rng.random() < 0.5:
            x = x.flip(dim)
    return x.transpose(3, 4) if rng.random() < 0.5 else x


def _auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """ROC AUC by ranks (ties count half); None without both classes."""
    from scipy.stats import rankdata

    labels = np.asarray(labels, bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if not n_pos or not n_neg:
        return None
    ranks = rankdata(np.asarray(scores, float))
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@torch.no_grad()
def _logits(net: NoduleNet, ex: Examples, device, batch: int = 512) -> np.ndarray:
    """Type logits (N, net.types) of every candidate."""
    net.eval()
    out = []
    for i in range(0, len(ex.label), batch):
        x = torch.from_numpy(ex.patches[i:i + batch].astype(np.float32)).to(device)
        out.append(net(x, torch.from_numpy(ex.features[i:i + batch]).to(device))[0].cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, net.types), np.float32)


def fit_platt(logits: np.ndarray, labels: np.ndarray, steps: int = 500) -> tuple[float, float]:
    """(scale, offset) of ``sigmoid(scale * logit + offset)`` fitted by BCE (1, 0 when it cannot be fitted)."""
    if len(logits) == 0 or labels.min() == labels.max():
        return 1.0, 0.0
    x, y = torch.from_numpy(logits.astype(np.float32)), torch.from_numpy(labels.astype(np.float32))
    scale, offset = torch.ones((), requires_grad=True), torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([scale, offset], lr=0.5, max_iter=steps)

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(scale * x + offset, y)
        loss.backward()
        return loss

    opt.step(closure)
    return float(scale.detach()), float(offset.detach())


def _study_auc(p: np.ndarray, ex: Examples, k: int) -> float | None:
    """Study-level AUC for type ``k`` of the noisy-OR over each study's candidates."""
    study_p = np.array([1 - np.prod(1 - p[ex.study == s]) for s in range(len(ex.has))])
    return _auc(study_p, ex.has[:, k])


def evaluate_detector(det: NoduleDetector, ex: Examples, logits: np.ndarray) -> dict:
    """Candidate-level AUC, study-level AUC of the noisy-OR over a study's candidates, and the
    positives' size error and density accuracy, for nodules; the two AUCs for each other type."""
    logits = logits.reshape(len(ex.label), -1)
    p = 1 / (1 + np.exp(-(det.scale * logits[:, 0] + det.offset)))
    pos = ex.label == 1
    out = {"candidates": int(len(ex.label)), "positives": int(pos.sum()),
           "candidate_auc": _auc(logits[:, 0], pos), "study_auc": _study_auc(p, ex, 0)}
    if pos.any():
        device = next(det.net.parameters()).device
        with torch.no_grad():
            x = torch.from_numpy(ex.patches[pos].astype(np.float32)).to(device)
            _, logsize, dens = det.net(x, torch.from_numpy(ex.features[pos]).to(device))
        out["size_median_abs_log_error"] = round(float(np.median(np.abs(logsize.cpu().numpy() - ex.logsize[pos]))), 3)
        out["density_accuracy"] = round(float((dens.argmax(1).cpu().numpy() == ex.density[pos]).mean()), 3)
    out = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}
    for k, ftype in enumerate(det.types[1:], start=1):
        scale, offset = det.calibration[ftype]
        pk = 1 / (1 + np.exp(-(scale * logits[:, k] + offset)))
        aucs = (_auc(logits[:, k], ex.label == k + 1), _study_auc(pk, ex, k))
        out[ftype] = {"positives": int((ex.label == k + 1).sum()),
                      **{n: (round(v, 4) if v is not None else None)
                         for n, v in zip(("candidate_auc", "study_auc"), aucs)}}
    return out


def train_detector(ex: Examples, cfg: NoduleTrainConfig | None = None, device: str | None = None,
                   progress: bool = True) -> tuple[NoduleDetector, dict]:
    """Train, calibrate and validate a detector on ``ex`` (split by study).

    Raises:
        InputError: the examples hold no nodule candidate to learn from.
    """
    from medsearch.errors import InputError

    cfg = cfg or NoduleTrainConfig()
    n_studies = len(ex.has_nodule)
    order = list(range(n_studies))
    random.Random(cfg.seed).shuffle(order)
    n_val = max(1, int(round(n_studies * cfg.val_fraction)))
    val, train = ex.subset(np.sort(order[:n_val])), ex.subset(np.sort(order[n_val:]))
    pos, neg = np.flatnonzero(train.label == 1), np.flatnonzero(train.label != 1)
    if len(pos) == 0 or len(neg) == 0:
        raise InputError("The training studies gave no candidate on a nodule (or no other candidate).",
                         "Train the detector on more synthetic studies (--studies N).")
    others = [np.flatnonzero(train.label == k + 1) for k in range(1, len(ex.types))]
    for ftype, idx in zip(ex.types[1:], others):
        if len(idx) == 0:
            raise InputError(f"The training studies gave no candidate on a {ftype}.",
                             "Train the detector on more synthetic studies (--studies N).")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(cfg.seed)
    rng, nprng = random.Random(cfg.seed), np.random.default_rng(cfg.seed)
    net = NoduleNet(cfg.width, types=len(ex.types)).to(dev)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(cfg.steps, 1))
    t0 = time.perf_counter()
    half = cfg.batch_size // 2
    bar = tqdm(range(cfg.steps), desc="nodule detector", disable=not progress)
    loss_ema = None
    for _ in bar:
        net.train()
        # half nodules, half anything else (as before other types were scored), plus a few of each other type
        b = np.concatenate([nprng.choice(pos, half), nprng.choice(neg, cfg.batch_size - half),
                            *(nprng.choice(idx, cfg.other_per_batch) for idx in others)])
        x = _augment(torch.from_numpy(train.patches[b].astype(np.float32)), rng).to(dev)
        labels = torch.from_numpy(train.label[b].astype(np.int64)).to(dev)
        y = (labels[:, None] == torch.arange(1, len(ex.types) + 1, device=dev)[None, :]).float()
        logit, logsize, dens = net(x, torch.from_numpy(train.features[b]).to(dev))
        loss = F.binary_cross_entropy_with_logits(logit[:, 0], y[:, 0])
        if len(ex.types) > 1:
            loss = loss + cfg.other_weight * F.binary_cross_entropy_with_logits(logit[:, 1:], y[:, 1:])
        m = labels > 0
        if m.any():
            loss = loss + cfg.size_weight * F.smooth_l1_loss(logsize[m], torch.from_numpy(train.logsize[b]).to(dev)[m])
            loss = loss + cfg.density_weight * F.cross_entropy(dens[m], torch.from_numpy(train.density[b]).to(dev)[m])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        loss_ema = loss.item() if loss_ema is None else 0.95 * loss_ema + 0.05 * loss.item()
        bar.set_postfix(loss=f"{loss_ema:.3f}")
    logits = _logits(net, val, dev)
    scale, offset = fit_platt(logits[:, 0], val.label == 1)
    # each other type calibrated on its own, at its natural rate among the held-out candidates
    calibration = {t: fit_platt(logits[:, k], val.label == k + 1) for k, t in enumerate(ex.types) if k}
    det = NoduleDetector(net, scale, offset, max_candidates=cfg.max_candidates, types=ex.types,
                         calibration=calibration)
    summary = {"steps": cfg.steps, "train_studies": int(len(train.has_nodule)), "val_studies": int(n_val),
               "train_candidates": int(len(train.label)), "train_positives": int(len(pos)),
               "calibration": {"scale": round(scale, 4), "offset": round(offset, 4)},
               **({"types": list(ex.types)} if len(ex.types) > 1 else {}),
               "val": evaluate_detector(det, val, logits), "seconds": round(time.perf_counter() - t0, 1),
               "config": asdict(cfg)}
    det.net.cpu().eval()
    det.summary = summary
    log.info("nodule detector: val candidate AUC %s, study AUC %s", summary["val"]["candidate_auc"],
             summary["val"]["study_auc"])
    return det, summary


def recalibrate_detector(det: NoduleDetector, ex: Examples, device: str | None = None) -> dict:
    """Refit ``det``'s Platt calibrations (the nodule's and each other type's), in place, on the candidates
    ``ex`` built at its ``max_candidates``; the network is kept.

    A calibration holds for the number of candidates it was fitted at: scoring more per scan adds weaker
    blobs, so the probability of a logit at the natural rate moves (docs/model.md, "More candidates per scan
    (session 17)").

    Each network of an ensemble (:meth:`NoduleDetector.networks`) is refitted on its own logits.

    Returns:
        The numbers of :func:`evaluate_detector` on ``ex`` for the first network (in-sample for the two
        parameters per type).

    Raises:
        InputError: the examples hold no candidate on a nodule, or none of a type the detector scores.
    """
    from medsearch.errors import InputError

    if tuple(ex.types) != tuple(det.types):
        raise InputError(f"the examples are labelled for {', '.join(ex.types)}, the detector scores "
                         f"{', '.join(det.types)}.", "Build the examples with the detector's types.")
    for k, ftype in enumerate(det.types):
        if not (ex.label == k + 1).any():
            raise InputError(f"The calibration studies gave no candidate on a {ftype}.",
                             "Calibrate on more synthetic studies (--studies N).")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    first = None
    # each network of an ensemble keeps its own calibrations: the ensemble averages calibrated log-odds
    for d in det.networks():
        logits = _logits(d.net.to(dev), ex, dev)
        d.net.cpu().eval()
        d.scale, d.offset = fit_platt(logits[:, 0], ex.label == 1)
        d.calibration = {t: fit_platt(logits[:, k], ex.label == k + 1) for k, t in enumerate(d.types) if k}
        first = logits if first is None else first
    return evaluate_detector(det, ex, first)


__all__ = ["Examples", "NoduleTrainConfig", "build_examples", "evaluate_detector", "fit_platt", "recalibrate_detector",
           "study_examples", "study_plan", "train_detector"]

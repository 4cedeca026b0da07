"""Training the region classifier (``medsearch train-regions``): components, labels, RegionNet, calibration.

Examples come from synthetic studies generated on their own grid (the archive's 128 matrix).  The training
studies have an atelectasis, a mass or a consolidation forced in, in turn, and every fourth none (foreground
oversampling); the calibration studies are planned as the archive plans them, so their rate of each type is
the natural one.  Every component of :func:`~medsearch.models.regions.lesion_components` is an example; its
class is the finding whose drawn mask covers most of it (at least a fifth), else "none".

Training is cross-entropy with class weights (the square root of the inverse frequency); each region type is
then calibrated (Platt) on the calibration studies' components.  Deterministic for a seed; CPU (it is a small
MLP over a few thousand rows).  Only synthetic seeds train it: a hospital's reports say where a finding is only
in words, not in voxels.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from medsearch.models.region_classifier import CLASSES, REGION_TYPES, RegionClassifier, RegionNet
from medsearch.models.regions import N_FEATURES

log = logging.getLogger(__name__)
#: The types forced into the training studies in turn (None: as planned).
FORCED: tuple[str | None, ...] = ("atelectasis", "mass", "consolidation", None)
#: A component is on a finding when the finding's mask covers at least this share of it.
MIN_OVERLAP = 0.2


@dataclass
class RegionTrainConfig:
    steps: int = 3000
    batch_size: int = 256
    lr: float = 3e-3
    weight_decay: float = 1e-4
    hidden: int = 64
    seed: int = 0


@dataclass
class RegionExamples:
    """Components of many studies: features (N, N_FEATURES), label (N,) (index into CLASSES), study (N,),
    and ``has`` (S, len(REGION_TYPES)), whether each study holds each region type."""

    features: np.ndarray
    label: np.ndarray
    study: np.ndarray
    has: np.ndarray


def _block_any(mask: np.ndarray, step: np.ndarray) -> np.ndarray:
    shape = np.asarray(mask.shape) // step
    cut = mask[:shape[0] * step[0], :shape[1] * step[1], :shape[2] * step[2]]
    return cut.reshape(shape[0], step[0], shape[1], step[1], shape[2], step[2]).any(axis=(1, 3, 5))


def study_components(args: tuple) -> dict:
    """The labelled components of synthetic study ``index`` of ``seed``; ``args`` is ``(seed, index, force)``
    with ``force`` a finding type to force in, or None."""
    from medsearch.models.candidates import lung_mask
    from medsearch.models.nodule_detector import _detection_grid
    from medsearch.models.regions import lesion_components
    from medsearch.synth.study import generate_study

    seed, index, force = args
    st = generate_study(int(seed), int(index), 128, findings=[force] if force else None)
    grid, sp, step = _detection_grid(st.hu, st.spacing)
    comp = lesion_components(grid, tuple(sp), lung_mask(grid, tuple(sp)))
    masks = [(_block_any(m, step), f["type"]) for m, f in zip(st.masks, st.labels["findings"])]
    label = np.zeros(len(comp), np.int64)
    for i, k in enumerate(comp.ids):
        m = comp.labels == k
        need, best = MIN_OVERLAP * m.sum(), 0
        for mask, ftype in masks:
            overlap = int((mask & m).sum())
            if ftype in CLASSES and overlap >= need and overlap > best:
                best, label[i] = overlap, CLASSES.index(ftype)
    present = {f["type"] for f in st.labels["findings"]}
    return {"features": comp.features, "label": label, "has": np.array([t in present for t in REGION_TYPES], bool)}


def build_examples(seed: int, jobs: list[tuple[int, str | None]], workers: int = 2, progress: bool = True,
                   desc: str = "region components") -> RegionExamples:
    """Components of the synthetic studies ``jobs`` ((index, forced type or None)) of ``seed``."""
    args = [(int(seed), int(i), force) for i, force in jobs]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            parts = list(tqdm(pool.map(study_components, args, chunksize=4), total=len(args), desc=desc,
                              unit="study", disable=not progress))
    else:
        parts = [study_components(a) for a in tqdm(args, desc=desc, unit="study", disable=not progress)]
    return RegionExamples(np.concatenate([p["features"] for p in parts]).reshape(-1, N_FEATURES),
                          np.concatenate([p["label"] for p in parts]),
                          np.concatenate([np.full(len(p["label"]), i, np.int64) for i, p in enumerate(parts)]),
                          np.stack([p["has"] for p in parts]))


def training_plan(studies: int) -> list[tuple[int, str | None]]:
    """(index, forced type) of the training studies: :data:`FORCED` in turn."""
    return [(i, FORCED[i % len(FORCED)]) for i in range(studies)]


def calibration_plan(studies: int, start: int) -> list[tuple[int, None]]:
    """(index, None) of the calibration studies: planned as the archive plans them, after the training ones."""
    return [(start + i, None) for i in range(studies)]


def _auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    from medsearch.models.train_nodules import _auc as auc

    return auc(scores, labels)


def _average_precision(scores: np.ndarray, labels: np.ndarray) -> float | None:
    labels = np.asarray(labels, bool)
    if not labels.any():
        return None
    order = np.argsort(-np.asarray(scores, float), kind="stable")
    hits = labels[order]
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision[hits].mean())


def evaluate_regions(clf: RegionClassifier, ex: RegionExamples) -> dict:
    """Per region type: component AUC, and study AUC and average precision of the noisy-OR over a study's
    components."""
    p = clf.probabilities(ex.features)
    out = {}
    for k, t in enumerate(REGION_TYPES):
        study_p = np.array([1 - np.prod(1 - p[t][ex.study == s]) for s in range(len(ex.has))])
        vals = {"component_auc": _auc(p[t], ex.label == CLASSES.index(t)), "study_auc": _auc(study_p, ex.has[:, k]),
                "study_ap": _average_precision(study_p, ex.has[:, k]), "studies_with": int(ex.has[:, k].sum())}
        out[t] = {n: (round(v, 4) if isinstance(v, float) else v) for n, v in vals.items()}
    return out


def train_regions(train: RegionExamples, calib: RegionExamples, cfg: RegionTrainConfig | None = None,
                  progress: bool = True) -> tuple[RegionClassifier, dict]:
    """Train on ``train``, calibrate and validate on ``calib`` (other studies, natural rate).

    Raises:
        InputError: the training studies hold no component of some region type.
    """
    from medsearch.errors import InputError
    from medsearch.models.train_nodules import fit_platt

    cfg = cfg or RegionTrainConfig()
    counts = np.bincount(train.label, minlength=len(CLASSES))
    missing = [t for t in REGION_TYPES if counts[CLASSES.index(t)] == 0]
    if missing:
        raise InputError(f"The training studies gave no component on a {missing[0]}.",
                         "Train the region classifier on more synthetic studies (--studies N).")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    x = torch.from_numpy(train.features.astype(np.float32))
    y = torch.from_numpy(train.label)
    net = RegionNet(cfg.hidden, x.mean(0), x.std(0).clamp_min(1e-3))
    weight = torch.from_numpy((1.0 / np.sqrt(np.maximum(counts, 1))).astype(np.float32))
    weight = weight / weight[y].mean()
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(cfg.steps, 1))
    t0 = time.perf_counter()
    bar = tqdm(range(cfg.steps), desc="region classifier", disable=not progress)
    loss_ema = None
    for _ in bar:
        net.train()
        b = torch.from_numpy(rng.choice(len(y), min(cfg.batch_size, len(y)), replace=False))
        loss = F.cross_entropy(net(x[b]), y[b], weight=weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        loss_ema = loss.item() if loss_ema is None else 0.95 * loss_ema + 0.05 * loss.item()
        bar.set_postfix(loss=f"{loss_ema:.3f}")
    clf = RegionClassifier(net)
    lo = clf.log_odds(calib.features)
    clf.calibration = {t: fit_platt(lo[:, CLASSES.index(t)], calib.label == CLASSES.index(t)) for t in REGION_TYPES}
    summary = {"steps": cfg.steps, "train_studies": int(len(train.has)), "calibration_studies": int(len(calib.has)),
               "train_components": int(len(train.label)),
               "train_components_by_class": {c: int(n) for c, n in zip(CLASSES, counts)},
               "calibration": {t: {"scale": round(a, 4), "offset": round(b, 4)} for t, (a, b) in clf.calibration.items()},
               "val": evaluate_regions(clf, calib), "seconds": round(time.perf_counter() - t0, 1),
               "config": asdict(cfg)}
    clf.summary = summary
    log.info("region classifier: %s", summary["val"])
    return clf, summary


__all__ = ["FORCED", "RegionExamples", "RegionTrainConfig", "build_examples", "calibration_plan", "evaluate_regions",
           "study_components", "train_regions", "training_plan"]

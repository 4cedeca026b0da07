"""Stage 1c of ``medsearch train``: the image tower's focal head, trained on the visible cores of nodules.

The U-Net (stage 1) learns every type at once from whole volumes, where a nodule's
handful of voxels is outweighed by ~40,000 others and by the partial-volume cells of its
own mask; its nodule channel stayed flat at the "know nothing" level in every run
(docs/model.md).  The focal head (:class:`~medsearch.models.image_tower_seg._FocalHead`)
is trained here with the rest of the tower frozen, on whole volumes of which half hold a
visible finding of :data:`~medsearch.models.image_tower_seg.FOCAL_TYPES` (nnU-Net's
foreground oversampling), against each lesion's visible core (:func:`focal_targets`).
Loss: class-balanced BCE plus the BCE of the hardest negative lung cells of each study
(a vessel that looks like a nodule).

The decoder's features are computed once per study (the tower is frozen), so a step
costs only the small head.  Afterwards the head is kept only if it beats the U-Net's
own channel on the validation studies (study-level AUC of the largest probability in
the lungs); otherwise the tower goes on without it.  Deterministic for a seed; a
progress bar shows the loss; CUDA when present.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from medsearch import vocab
from medsearch.models.image_tower_seg import FOCAL_TYPES, N_REGIONS, _FocalHead
from medsearch.models.preprocess import SEG_WINDOWS, hu_windows

log = logging.getLogger(__name__)
#: Channels of the focal head in newly trained models.
FOCAL_WIDTH = 24


@dataclass
class FocalConfig:
    #: 0 (the default): no focal head is trained; on the CPU it did not beat the U-Net (docs/model.md)
    steps: int = 0
    batch_size: int = 4
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    #: share of each batch drawn from the studies with a visible focal finding (the rest: any study)
    positive_fraction: float = 0.5
    #: hardest negative lung cells per study whose BCE is added
    hard_negatives: int = 16
    width: int = FOCAL_WIDTH


def _bits() -> list[int]:
    return [vocab.FINDING_TYPES.index(t) for t in FOCAL_TYPES]


#: HU of aerated lung: the background a focal lesion's contrast is measured against.
LUNG_HU = -850.0
#: A lesion whose brightest cell stays below this HU is not visible on the grid.
VISIBLE_HU = -700.0


def focal_targets(hu: np.ndarray, types: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Targets of one study: each focal lesion's visible core, and where to ignore the head's output.

    A lesion's mask on the half-resolution grid is mostly partial volume: cells that hold a sliver of a
    6 mm nodule look like lung, and a vessel's cross-section is brighter than they are.  Trained on the
    whole mask, the head learns "dim lung next to something bright" and ranks a 2 cm solid nodule below
    the lung around it (measured: 0.24-0.54 at the nodule, 0.44-0.72 elsewhere).  So the positives are
    each connected lesion's core, the cells at least half-way from lung (LUNG_HU) to its brightest cell,
    and the rest of the mask (with a one-cell margin) is ignored, as is a lesion that never gets
    brighter than VISIBLE_HU.

    Args:
        hu: (Z, Y, X) canonical HU (full grid); types: (Z/2, Y/2, X/2) type bit masks.

    Returns:
        targets float32 (len(FOCAL_TYPES), Z/2, Y/2, X/2) 0/1, ignore bool (Z/2, Y/2, X/2).
    """
    from scipy import ndimage

    z, y, x = hu.shape
    brightest = hu.astype(np.float32).reshape(z // 2, 2, y // 2, 2, x // 2, 2).max(axis=(1, 3, 5))
    targets = np.zeros((len(FOCAL_TYPES), *types.shape), np.float32)
    ignore = np.zeros(types.shape, bool)
    for k, b in enumerate(_bits()):
        mask = ((types >> b) & 1).astype(bool)
        if not mask.any():
            continue
        labels, n = ndimage.label(mask)
        for c in range(1, n + 1):
            lesion = labels == c
            peak = float(brightest[lesion].max())
            if peak > VISIBLE_HU:
                targets[k] += lesion & (brightest >= (peak + LUNG_HU) / 2)
        ignore |= ndimage.binary_dilation(mask) & ~(targets[k] > 0)
    return np.minimum(targets, 1.0), ignore


@torch.no_grad()
def decoder_features(net, data, device, progress: bool = True, desc: str = "focal head: features"):
    """Per study the frozen U-Net's last decoder stage (float16) and region logits (float16)."""
    net.eval()
    feats, regions = [], []
    for i in tqdm(range(len(data)), desc=desc, unit="study", disable=not progress):
        x = hu_windows(torch.from_numpy(data.hu[i].astype(np.float32)), SEG_WINDOWS)[None].to(device)
        maps, decoder, _ = net.decode(x)
        feats.append(decoder[0].half().cpu())
        regions.append(maps[0, :N_REGIONS].half().cpu())
    return torch.stack(feats), torch.stack(regions)


def make_batch(data, feats, regions, targets, negatives, idx: list[int], rng: random.Random,
               augment: bool = True) -> dict:
    """Whole volumes ``idx``: windowed image, decoder features, region logits, targets and the cells that
    count as negatives (the lungs less the ignored cells), with intensity jitter."""
    xs = []
    for i in idx:
        hu = torch.from_numpy(data.hu[i].astype(np.float32))
        if augment:
            hu = hu * rng.uniform(0.97, 1.03) + rng.uniform(-20, 20)
        xs.append(hu_windows(hu, SEG_WINDOWS))
    return {"x": torch.stack(xs), "decoder": feats[idx].float(), "region": regions[idx].float(),
            "target": targets[idx], "lung": negatives[idx][:, None]}


def focal_loss(logits: torch.Tensor, target: torch.Tensor, lung: torch.Tensor, hard: int) -> torch.Tensor:
    """Class-balanced BCE (positives' mean + lung negatives' mean) plus the hardest negatives' BCE.

    Args:
        logits, target: (B, K, z, y, x); lung: (B, 1, z, y, x) bool.
    """
    per = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    near = F.max_pool3d(target, kernel_size=3, stride=1, padding=1) > 0
    negative = lung & ~near
    loss = (per * target).sum() / target.sum().clamp_min(1) + (per * negative).sum() / negative.sum().clamp_min(1)
    if hard:
        flat = logits.masked_fill(~negative, float("-inf")).flatten(2)
        top = flat.topk(min(hard, flat.shape[2]), dim=2).values
        top = top[torch.isfinite(top)]
        if top.numel():
            loss = loss + F.binary_cross_entropy_with_logits(top, torch.zeros_like(top))
    return loss


def _auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    pos, neg = scores[labels], scores[~labels]
    if not len(pos) or not len(neg):
        return None
    return float(((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum())
                 / (len(pos) * len(neg)))


@torch.no_grad()
def study_auc(net, data, device) -> dict:
    """Study-level AUC per focal type of the largest probability in the lungs: the U-Net's own channel
    (``unet``) and the focal head's (``focal``), on studies with voxel targets."""
    head = net.focal.eval()
    scores = {"unet": [], "focal": []}
    for i in range(len(data)):
        x = hu_windows(torch.from_numpy(data.hu[i].astype(np.float32)), SEG_WINDOWS)[None].to(device)
        maps, decoder, _ = net.decode(x)
        lung = torch.softmax(maps[0, :N_REGIONS], dim=0)[0] < 0.5
        unet = torch.sigmoid(maps[0, [N_REGIONS + b for b in _bits()]])
        focal = torch.sigmoid(head(x, decoder, maps[:, :N_REGIONS])[0])
        for name, p in (("unet", unet), ("focal", focal)):
            scores[name].append(torch.where(lung[None], p, torch.zeros_like(p)).flatten(1).amax(dim=1).cpu().numpy())
    labels = np.stack([[any(f["type"] == t for f in m["findings"]) for t in FOCAL_TYPES] for m in data.meta])
    out = {}
    for k, t in enumerate(FOCAL_TYPES):
        out[t] = {name: _auc(np.array([s[k] for s in v]), labels[:, k]) for name, v in scores.items()}
    return out


def train_focal(model, train, val, cfg: FocalConfig | None = None, device: str | None = None,
                progress: bool = True) -> dict:
    """Fit ``model.image.focal`` (created with ``cfg.width`` channels when the tower has none) with the
    rest of the tower frozen, then keep it only if it beats the U-Net's own channel on ``val``.

    Only studies with voxel targets (``train.dense``) teach it; with none, nothing is trained.
    """
    cfg = cfg or FocalConfig()
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    net = model.image
    dense = np.flatnonzero(train.dense)
    if not len(dense) or not cfg.steps:
        return {"steps": 0, "kept": net.focal is not None}
    t0 = time.perf_counter()
    train = train.subset(dense)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    if net.focal is None or net.focal_width != cfg.width:
        net.focal = _FocalHead(len(SEG_WINDOWS), net.decoder_width, cfg.width)
        net.focal_width = cfg.width
    net.to(dev)
    for p in net.parameters():
        p.requires_grad_(False)
    for p in net.focal.parameters():
        p.requires_grad_(True)
    feats, regions = decoder_features(net, train, dev, progress)
    pairs = [focal_targets(train.hu[i], train.types[i]) for i in range(len(train))]
    targets = torch.from_numpy(np.stack([t for t, _ in pairs]))
    lung = torch.from_numpy((train.region > 0) & ~np.stack([ig for _, ig in pairs]))
    del pairs
    candidates = [i for i in range(len(train)) if bool(targets[i].any())]
    n_pos = min(cfg.batch_size, round(cfg.batch_size * cfg.positive_fraction)) if candidates else 0
    opt = torch.optim.AdamW(net.focal.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    net.focal.train()
    ema = None
    bar = tqdm(range(cfg.steps), desc="focal head", disable=not progress)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
        idx = [rng.choice(candidates) for _ in range(n_pos)] + \
            [rng.randrange(len(train)) for _ in range(cfg.batch_size - n_pos)]
        b = make_batch(train, feats, regions, targets, lung, idx, rng)
        logits = net.focal(b["x"].to(dev), b["decoder"].to(dev), b["region"].to(dev))
        loss = focal_loss(logits, b["target"].to(dev), b["lung"].to(dev), cfg.hard_negatives)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        bar.set_postfix(loss=f"{ema:.3f}")
    bar.close()
    for p in net.parameters():
        p.requires_grad_(True)
    net.eval()
    summary = {"steps": cfg.steps, "loss": round(ema, 4), "positives": len(candidates),
               "studies": len(train)}
    if val is not None and len(val) and bool(np.any(val.dense)):
        vd = val.subset(np.flatnonzero(val.dense))
        aucs = study_auc(net, vd, dev)
        kept = all((a["focal"] or 0) > (a["unet"] or 0) for a in aucs.values())
        summary["val_auc"] = aucs
    else:
        kept = True
    if not kept:
        log.info("focal head not kept: it does not beat the U-Net's own channel on validation (%s)",
                 summary.get("val_auc"))
        net.focal, net.focal_width = None, 0
    summary["kept"] = kept
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    net.cpu()
    return summary

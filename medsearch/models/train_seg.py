"""Training of the ``ctseg`` image tower on voxel targets (stage 1 of ``medsearch train``).

Synthetic studies carry voxel targets (:mod:`medsearch.models.dense_data`); a
hospital's studies carry only their report's findings, which train the
study-level slot presence (the peak of the voxel maps) and nothing else.  Both
kinds mix in one loop.

Loss per study with voxel targets: region cross-entropy, finding-type BCE plus
soft Dice, BCE of the hardest negative lung voxels, density cross-entropy and
log-size L1 on finding voxels; for every
study: BCE of the slot presence against the labelled findings.

Deterministic for a seed, resumable from ``checkpoint_seg.pt``, tqdm progress
with the loss and the validation slot F1; CUDA when present.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from medsearch import vocab
from medsearch.models.dense_data import NO_DENSITY
from medsearch.models.heads import attribute_targets
from medsearch.models.image_tower_seg import HEAD_SPLIT
from medsearch.models.preprocess import SEG_WINDOWS, hu_windows

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint_seg.pt"
#: Finding types whose lesions fill only a few voxels of the maps.
SMALL_TYPES = ("nodule", "ground-glass opacity", "cavity", "atelectasis")
AIR = -1024


@dataclass
class SegConfig:
    steps: int = 800
    batch_size: int = 6
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup: int = 30
    seed: int = 0
    eval_every: int = 100
    checkpoint_every: int = 25
    region_weight: float = 1.0
    type_weight: float = 1.0
    density_weight: float = 0.5
    size_weight: float = 0.5
    presence_weight: float = 0.2
    #: weight of the positive voxels' mean BCE against the negatives' (class-balanced, see seg_loss)
    positive_weight: float = 0.3
    #: the same for the small-lesion types (SMALL_TYPES), whose few voxels otherwise teach too little
    small_positive_weight: float = 1.5
    #: weight of the hardest negatives' BCE (see seg_loss; 0 for models trained before it existed)
    hard_negative_weight: float = 1.0
    #: how many of the hardest negative lung voxels per study and type count
    hard_negatives: int = 16


@dataclass
class DenseSet:
    """Studies in memory: canonical HU (full grid) and targets at half resolution.

    ``dense`` marks the studies with voxel targets; the others have zeros there and only
    their study-level ``presence`` (N, T, L) counts.  ``nodules`` is the nodule detector's
    evidence per study (:class:`~medsearch.models.nodule_detector.NoduleEvidence`), when the model
    being trained has a detector: the later stages then see the tower as it encodes.
    """

    hu: np.ndarray        # int16 (N, Z, Y, X)
    region: np.ndarray    # uint8 (N, Z/2, Y/2, X/2)
    types: np.ndarray     # int16
    density: np.ndarray   # uint8 (NO_DENSITY = none)
    logsize: np.ndarray   # float16 (0 = none)
    presence: np.ndarray  # float32 (N, T, L)
    dense: np.ndarray     # bool (N,)
    meta: list[dict]
    nodules: list | None = None

    def __len__(self) -> int:
        return len(self.hu)

    def subset(self, idx) -> "DenseSet":
        idx = np.asarray(idx)
        return DenseSet(self.hu[idx], self.region[idx], self.types[idx], self.density[idx], self.logsize[idx],
                        self.presence[idx], self.dense[idx], [self.meta[i] for i in idx],
                        None if self.nodules is None else [self.nodules[i] for i in idx])


def half(arr: np.ndarray, how: str) -> np.ndarray:
    """(N, Z, Y, X) -> (N, Z/2, Y/2, X/2): ``or`` of bit masks, ``max`` of values, or ``pick`` a voxel."""
    n, z, y, x = arr.shape
    if how == "pick":
        return np.ascontiguousarray(arr[:, 1::2, 1::2, 1::2])
    blocks = arr.reshape(n, z // 2, 2, y // 2, 2, x // 2, 2)
    if how == "or":
        return np.bitwise_or.reduce(np.bitwise_or.reduce(np.bitwise_or.reduce(blocks, axis=2), axis=3), axis=4)
    return blocks.max(axis=(2, 4, 6))


def load_dense(paths) -> DenseSet:
    """Read dense-cache shards (:func:`medsearch.models.dense_data.build_dense_cache`)."""
    parts = {k: [] for k in ("hu", "region", "types", "density", "logsize")}
    meta: list[dict] = []
    for path in paths:
        with np.load(path) as z:
            parts["hu"].append(z["hu"])
            parts["region"].append(half(z["region"], "pick"))
            parts["types"].append(half(z["types"], "or"))
            dens = z["density"].astype(np.int16)
            dens[dens == NO_DENSITY] = -1
            dens = half(dens, "max")
            dens[dens < 0] = NO_DENSITY
            parts["density"].append(dens.astype(np.uint8))
            parts["logsize"].append(half(z["logsize"], "max"))
            meta += json.loads(str(z["meta"]))
    arrays = {k: np.concatenate(v) for k, v in parts.items()}
    presence = np.stack([attribute_targets(m["findings"])["presence"].numpy() for m in meta])
    return DenseSet(**arrays, presence=presence, dense=np.ones(len(meta), bool), meta=meta)


def _shift(arr: np.ndarray, shifts, fill) -> np.ndarray:
    """Translate a (Z, Y, X) array by integer voxels, filling what enters with ``fill``."""
    out = np.full_like(arr, fill)
    src, dst = [], []
    for s, n in zip(shifts, arr.shape):
        src.append(slice(max(0, -s), n - max(0, s)))
        dst.append(slice(max(0, s), n - max(0, -s)))
    out[tuple(dst)] = arr[tuple(src)]
    return out


def make_batch(data: DenseSet, idx: list[int], rng: random.Random, augment: bool = True,
               windows=SEG_WINDOWS) -> dict:
    """Windowed inputs and targets of studies ``idx``, with translation and intensity jitter."""
    xs, reg, typ, den, siz = [], [], [], [], []
    for i in idx:
        # shifts are even on the full grid so that the half-resolution targets move with the image
        s = (rng.randint(-2, 2), rng.randint(-4, 4), rng.randint(-4, 4)) if augment else (0, 0, 0)
        hu = _shift(data.hu[i], [2 * v for v in s], AIR).astype(np.float32)
        if augment:
            hu = hu * rng.uniform(0.97, 1.03) + rng.uniform(-20, 20)
        xs.append(hu_windows(torch.from_numpy(hu), windows))
        reg.append(_shift(data.region[i], s, 0))
        typ.append(_shift(data.types[i], s, 0))
        den.append(_shift(data.density[i], s, NO_DENSITY))
        siz.append(_shift(data.logsize[i], s, 0))
    return {"x": torch.stack(xs), "region": torch.from_numpy(np.stack(reg)).long(),
            "types": torch.from_numpy(np.stack(typ).astype(np.int32)),
            "density": torch.from_numpy(np.stack(den)).long(),
            "logsize": torch.from_numpy(np.stack(siz).astype(np.float32)),
            "presence": torch.from_numpy(data.presence[idx]), "dense": torch.from_numpy(data.dense[idx])}


def _shift_tensor(arr: torch.Tensor, shifts, fill) -> torch.Tensor:
    """:func:`_shift` for a tensor, on the tensor's device."""
    out = torch.full_like(arr, fill)
    src, dst = [], []
    for s, n in zip(shifts, arr.shape):
        src.append(slice(max(0, -s), n - max(0, s)))
        dst.append(slice(max(0, s), n - max(0, -s)))
    out[tuple(dst)] = arr[tuple(src)]
    return out


class DeviceBatches:
    """The training studies held on the training device, and :func:`make_batch` done there.

    On a GPU, assembling a batch on the CPU (shift, jitter and window every study) takes longer than the
    step itself; holding the studies on the GPU (1,200 coarse studies are 0.7 GB of int16) removes that
    wait.  The random draws are those of :func:`make_batch`, in the same order, so a run gives the same
    batches either way (up to float rounding).
    """

    def __init__(self, data: DenseSet, device: torch.device):
        def put(arr: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(arr)).to(device)

        self.hu, self.region, self.types = put(data.hu), put(data.region), put(data.types)
        self.density, self.logsize = put(data.density), put(data.logsize)
        self.presence, self.dense = put(data.presence), put(data.dense)

    def batch(self, idx: list[int], rng: random.Random, augment: bool = True, windows=SEG_WINDOWS) -> dict:
        xs, reg, typ, den, siz = [], [], [], [], []
        for i in idx:
            s = (rng.randint(-2, 2), rng.randint(-4, 4), rng.randint(-4, 4)) if augment else (0, 0, 0)
            hu = _shift_tensor(self.hu[i], [2 * v for v in s], AIR).float()
            if augment:
                hu = hu * rng.uniform(0.97, 1.03) + rng.uniform(-20, 20)
            xs.append(hu_windows(hu, windows))
            reg.append(_shift_tensor(self.region[i], s, 0))
            typ.append(_shift_tensor(self.types[i], s, 0))
            den.append(_shift_tensor(self.density[i], s, NO_DENSITY))
            siz.append(_shift_tensor(self.logsize[i], s, 0))
        where = torch.tensor(idx, device=self.hu.device)
        return {"x": torch.stack(xs), "region": torch.stack(reg).long(), "types": torch.stack(typ).int(),
                "density": torch.stack(den).long(), "logsize": torch.stack(siz).float(),
                "presence": self.presence[where], "dense": self.dense[where]}


def hard_negative_loss(logits: torch.Tensor, target: torch.Tensor, region: torch.Tensor, k: int) -> torch.Tensor:
    """Mean BCE (towards "absent") of the ``k`` highest type logits per study and type among the lung voxels
    that are neither a finding of that type nor next to one.

    Whether a study shows a type is decided over ~15 000 lung voxels, so what matters is the *largest*
    false evidence, not the average: the class-balanced mean leaves the small-lesion channels at a flat
    ~0.35 over the whole lung (every vessel a little like a nodule), and the count of voxels above the
    floor then says nothing.  Pushing the hardest negatives down (vessels, fissures, the lesion-free lung
    of a study with a lesion elsewhere) is what separates a nodule from a vessel at the study level.

    Args:
        logits: (B, T, z, y, x) type logits; target: the same, 0/1; region: (B, z, y, x), 0 outside the lungs.
    """
    near = F.max_pool3d(target, kernel_size=3, stride=1, padding=1) > 0
    negative = (region > 0)[:, None] & ~near
    flat = logits.masked_fill(~negative, float("-inf")).flatten(2)
    top = flat.topk(min(k, flat.shape[2]), dim=2).values
    valid = torch.isfinite(top)
    if not bool(valid.any()):
        return logits.sum() * 0
    return F.binary_cross_entropy_with_logits(top[valid], torch.zeros_like(top[valid]))


def seg_loss(maps: torch.Tensor, presence: torch.Tensor, batch: dict, cfg: SegConfig) -> tuple[torch.Tensor, dict]:
    """The stage-1 loss and its parts (see the module docstring)."""
    nr, nt, nd, _ = HEAD_SPLIT
    dense = batch["dense"].to(maps.device)
    parts = {}
    pres_t = batch["presence"].to(maps.device)
    parts["presence"] = F.binary_cross_entropy(presence.clamp(1e-5, 1 - 1e-5), pres_t)
    if bool(dense.any()):
        m = maps[dense]
        region = batch["region"].to(maps.device)[dense]
        weight = torch.tensor([0.3] + [1.0] * (nr - 1), device=maps.device)
        parts["region"] = F.cross_entropy(m[:, :nr], region, weight=weight)
        bits = torch.arange(nt, device=maps.device)
        target = ((batch["types"].to(maps.device)[dense][:, None] >> bits[None, :, None, None, None]) & 1).float()
        logits = m[:, nr:nr + nt]
        # Class-balanced BCE per type (the positive voxels' mean, weighted, plus the negatives' mean): a
        # plain mean over ~40 000 voxels per study gives a 6 mm nodule's few voxels no say at all, and the
        # nodule channel then settles on "never"; Dice alone cannot lift it (its gradient vanishes through
        # a saturated sigmoid).  Soft Dice per study and type on top, so a small finding counts too.
        per_voxel = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        n_pos = target.sum(dim=(0, 2, 3, 4))
        n_neg = target[:, 0].numel() - n_pos
        pos_mean = (per_voxel * target).sum(dim=(0, 2, 3, 4)) / n_pos.clamp_min(1)
        neg_mean = (per_voxel * (1 - target)).sum(dim=(0, 2, 3, 4)) / n_neg.clamp_min(1)
        pos_w = torch.tensor([cfg.small_positive_weight if t in SMALL_TYPES else cfg.positive_weight
                              for t in vocab.FINDING_TYPES], device=maps.device)
        bce = (neg_mean + pos_w * pos_mean).sum() / nt
        p = torch.sigmoid(logits)
        inter = (p * target).sum(dim=(2, 3, 4))
        denom = (p + target).sum(dim=(2, 3, 4))
        present = target.sum(dim=(2, 3, 4)) > 0
        dice = (1 - (2 * inter + 1) / (denom + 1))[present].mean() if bool(present.any()) else p.sum() * 0
        parts["types"] = bce + dice
        if cfg.hard_negative_weight:
            parts["hard_negatives"] = hard_negative_loss(logits, target, region, cfg.hard_negatives)
        dens = batch["density"].to(maps.device)[dense]
        has = dens != NO_DENSITY
        dl = m[:, nr + nt:nr + nt + nd].permute(0, 2, 3, 4, 1)
        parts["density"] = F.cross_entropy(dl[has], dens[has]) if bool(has.any()) else dl.sum() * 0
        size = batch["logsize"].to(maps.device)[dense]
        sized = size > 0
        parts["size"] = F.smooth_l1_loss(m[:, -1][sized], size[sized], beta=0.1) if bool(sized.any()) \
            else m[:, -1].sum() * 0
    total = cfg.presence_weight * parts["presence"]
    for name, w in (("region", cfg.region_weight), ("types", cfg.type_weight), ("density", cfg.density_weight),
                    ("size", cfg.size_weight), ("hard_negatives", cfg.hard_negative_weight)):
        if name in parts:
            total = total + w * parts[name]
    return total, {k: v.item() for k, v in parts.items()}


@torch.no_grad()
def slot_f1(model, data: DenseSet, device, batch: int = 8) -> dict:
    """Validation: micro F1 of slot presence (threshold 0.5) and per-study exact-slot accuracy."""
    model.eval()
    tp = fp = fn = exact = 0
    for i in range(0, len(data), batch):
        idx = list(range(i, min(i + batch, len(data))))
        x = make_batch(data, idx, random.Random(0), augment=False)["x"].to(device)
        maps, _ = model.image(x)
        pred = (model.image.slots(maps)["presence"] >= 0.5).cpu()
        true = torch.from_numpy(data.presence[idx]) > 0.5
        tp += int((pred & true).sum())
        fp += int((pred & ~true).sum())
        fn += int((~pred & true).sum())
        exact += int((pred == true).flatten(1).all(1).sum())
    model.train()
    f1 = 2 * tp / max(1, 2 * tp + fp + fn)
    return {"slot_f1": round(f1, 4), "exact": round(exact / max(1, len(data)), 4)}


def _lr(step: int, cfg: SegConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def train_image(model, train: DenseSet, val: DenseSet | None, out: Path, cfg: SegConfig,
                device: str | None = None, progress: bool = True, stop_after: int | None = None) -> dict:
    """Stage 1: fit ``model.image`` (a :class:`~medsearch.models.slot_model.SlotModel`'s tower)."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    net = model.image.to(dev)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start, history = 0, []
    ckpt_path = out / CHECKPOINT
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location=dev, weights_only=False)
        same = {k: v for k, v in ckpt["config"].items() if k not in ("steps", "eval_every", "checkpoint_every")} == \
            {k: v for k, v in asdict(cfg).items() if k not in ("steps", "eval_every", "checkpoint_every")}
        if same and ckpt["n_studies"] == len(train):
            net.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
            rng.setstate(ckpt["python_rng"])
            torch.set_rng_state(ckpt["torch_rng"])
            start, history = ckpt["step"], ckpt["history"]
        else:
            log.warning("image checkpoint in %s is from another configuration; starting afresh", out)
    if val is not None and len(val) > 48:
        val = val.subset(range(48))  # the periodic check only; the caller validates on all of it
    net.train()
    t0 = time.perf_counter()
    ema = None
    val_m = history[-1] if history else {}
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="image tower", disable=not progress)
    done = start
    on_device = DeviceBatches(train, dev) if dev.type == "cuda" else None
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = _lr(step, cfg)
        idx = [rng.randrange(len(train)) for _ in range(cfg.batch_size)]
        batch = on_device.batch(idx, rng) if on_device is not None else make_batch(train, idx, rng)
        maps, _ = net(batch["x"].to(dev))
        presence = net.slots(maps)["presence"]
        loss, parts = seg_loss(maps, presence, batch, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        opt.step()
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        done = step + 1
        if val is not None and len(val) and (done % cfg.eval_every == 0 or done == cfg.steps):
            val_m = {"step": done, "loss": round(ema, 4), **slot_f1(model, val, dev)}
            history.append(val_m)
            log.info("image tower step %d: %s", done, val_m)
        bar.set_postfix(loss=f"{ema:.3f}", val_f1=val_m.get("slot_f1", float("nan")))
        if done % cfg.checkpoint_every == 0 or done == cfg.steps or done == stop_after:
            torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(), "step": done,
                        "python_rng": rng.getstate(), "torch_rng": torch.get_rng_state(), "history": history,
                        "config": asdict(cfg), "n_studies": len(train)}, ckpt_path)
        if stop_after is not None and done >= stop_after:
            break
    bar.close()
    return {"steps": done, "loss": round(ema, 4) if ema is not None else None,
            "seconds": round(time.perf_counter() - t0, 1), "history": history,
            **({k: v for k, v in val_m.items() if k in ("slot_f1", "exact")})}

"""``medsearch train`` for the ``ctseg`` model: three stages.

1. The image tower on voxel targets (:mod:`medsearch.models.train_seg`); then (1b) the per-type
   calibration of slot presence (each type's voxel floor, scale and offset), refitted on the final voxel
   maps of the training studies.
2. The clause head on labelled canonical clauses (:mod:`medsearch.models.clauses`): which finding,
   lobes, density and size a clause names.
3. The shared projection and temperature with symmetric InfoNCE between the image tower's attribute
   vectors and the text side's, over report and phrase texts of the training studies (plus one hard
   negative per phrase: one attribute changed); the tuned projection is kept only when it beats the
   identity on the validation studies.
4. The cross-attention reranker (issue 7) on the tower's spatial maps, by image-text matching on hard
   negatives; kept per query kind only where it beats the dual tower on the validation studies.

Each stage shows a progress bar; stage 1 resumes from its checkpoint; everything is deterministic
for a seed.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from medsearch import vocab
from medsearch.models import phrases
from medsearch.models.clause_head import clause_targets
from medsearch.models.clauses import clause_examples, split_clauses
from medsearch.models.heads import DENSITY_TYPES
from medsearch.models.losses import info_nce
from medsearch.models.metrics import ranking_metrics, recall_at_k
from medsearch.models.phrases import SIZED_TYPES
from medsearch.models.slots import T
from medsearch.models.train_focal import FocalConfig, train_focal
from medsearch.models.train_seg import DenseSet, SegConfig, make_batch, train_image

log = logging.getLogger(__name__)
#: config key of a model whose image tower alone was trained (``--image-only``): its presence calibration,
#: projection and reranker are the ``--init`` model's, fitted to another tower, so it is not used to encode
#: until ``medsearch train --init DIR --steps 0`` has refitted them
IMAGE_ONLY = "image_only"


@dataclass
class SlotTrainConfig:
    seg: SegConfig = field(default_factory=SegConfig)
    #: stage 1c, the focal head (steps 0: none trained)
    focal: FocalConfig = field(default_factory=FocalConfig)
    clause_examples: int = 16000
    clause_steps: int = 3000
    clause_batch: int = 256
    clause_lr: float = 2e-3
    proj_steps: int = 400
    proj_batch: int = 64
    proj_lr: float = 1e-3
    #: training studies the presence calibration (stage 1b) is fitted on
    calibration_studies: int = 400
    #: epochs of the cross-attention reranker (stage 4; 0: none)
    reranker_epochs: int = 8
    #: stop after stage 1 (and 1c): the later stages need the text model and run well on a CPU, so a GPU
    #: machine trains the tower and ``medsearch train --init OUT --steps 0`` refits the rest elsewhere
    image_only: bool = False
    seed: int = 0


# --------------------------------------------------------------------------- stage 1b
#: Voxel floors stage 1b chooses among, per finding type.
FLOOR_CANDIDATES = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


@torch.no_grad()
def _log_counts(model, data: DenseSet, floors: tuple[float, ...], batch: int = 8) -> torch.Tensor:
    """log(soft voxel count + 0.05) of every study, floor and slot: (N, F, T, L)."""
    from medsearch.models.image_tower_seg import HEAD_SPLIT
    from medsearch.models.slots import slot_counts

    nr, nt = HEAD_SPLIT[0], HEAD_SPLIT[1]
    model.eval()
    out = []
    for i in range(0, len(data), batch):
        idx = list(range(i, min(i + batch, len(data))))
        maps, _ = model.image(make_batch(data, idx, random.Random(0), augment=False)["x"])
        flat = maps.flatten(2)
        w = torch.sigmoid(flat[:, nr:nr + nt])[:, :, None] * torch.softmax(flat[:, :nr], dim=1)[:, 1:][:, None]
        out.append(torch.stack([torch.log(slot_counts(w, f) + 0.05) for f in floors], dim=1))
    model.train()
    return torch.cat(out)


def _fit_logistic(x: torch.Tensor, y: torch.Tensor, scale0: torch.Tensor, offset0: torch.Tensor,
                  steps: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per (floor, type) logistic fits of ``y`` (N, T, L) on ``x`` (N, F, T, L).

    Returns scale (F, T), offset (F, T) and the fitted BCE (F, T).
    """
    nf = x.shape[1]
    # a degenerate stage-1 scale (a type whose counts were constant) would start the fit flat
    scale = scale0.detach().clamp_min(1.0)[None].repeat(nf, 1).requires_grad_(True)
    # start each floor's offset at the middle of its log counts, where a logistic can learn
    offset = x.mean(dim=(0, 3)).detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([scale, offset], lr=0.05)
    yy = y[:, None].expand_as(x)
    for _ in range(steps):
        logits = scale[None, :, :, None] * (x - offset[None, :, :, None])
        loss = F.binary_cross_entropy_with_logits(logits, yy, reduction="none").mean(dim=(0, 3))
        opt.zero_grad()
        loss.sum().backward()
        opt.step()
    with torch.no_grad():
        logits = scale[None, :, :, None] * (x - offset[None, :, :, None])
        bce = F.binary_cross_entropy_with_logits(logits, yy, reduction="none").mean(dim=(0, 3))
    return scale.detach(), offset.detach(), bce


def calibrate_presence(model, data: DenseSet, steps: int = 300,
                       floors: tuple[float, ...] = FLOOR_CANDIDATES) -> dict:
    """Stage 1b: refit the per-type presence calibration (floor, scale, offset) on the training studies.

    Stage 1 fits scale and offset too, but slowly and while the voxel maps still change; here one
    logistic fit per type and candidate floor on the final maps' log voxel counts against the
    labelled slots sets how many confident voxels make a finding (fewer false findings, which the
    embedding and attribute matching both feel), and each type keeps the floor whose fit is best.
    A type whose voxel probabilities never reach the old common floor (0.3) got one constant
    presence for every study; its own, lower floor lets its counts tell studies apart.
    """
    img = model.image
    x = _log_counts(model, data, floors)                                    # (N, F, T, L)
    y = torch.from_numpy(data.presence).float()
    with torch.no_grad():
        cur = torch.tensor([min(range(len(floors)), key=lambda j: abs(floors[j] - float(f)))
                            for f in img.presence_floor])
        x_cur = x[:, cur, torch.arange(T)]                                    # (N, T, L)
        before = F.binary_cross_entropy_with_logits(
            img.presence_scale[None, :, None] * (x_cur - img.presence_offset[None, :, None]), y)
    scale, offset, bce = _fit_logistic(x, y, img.presence_scale, img.presence_offset, steps)
    best = bce.argmin(dim=0)                                                 # (T,)
    types = torch.arange(T)
    with torch.no_grad():
        img.presence_floor.copy_(torch.tensor([floors[j] for j in best.tolist()]))
        img.presence_scale.copy_(scale[best, types])
        img.presence_offset.copy_(offset[best, types])
        xb = x[:, best, types]
        fitted = img.presence_scale[None, :, None] * (xb - img.presence_offset[None, :, None])
        after = F.binary_cross_entropy_with_logits(fitted, y)
        pred = torch.sigmoid(fitted) >= 0.5
        truth = y >= 0.5
        tp, fp, fn = int((pred & truth).sum()), int((pred & ~truth).sum()), int((~pred & truth).sum())
    return {"bce_before": round(float(before), 4), "bce_after": round(float(after), 4),
            "slot_f1": round(2 * tp / max(1, 2 * tp + fp + fn), 4), "studies": len(data),
            "floor": {t: floors[j] for t, j in zip(vocab.FINDING_TYPES, best.tolist())}}


# --------------------------------------------------------------------------- stage 2
def _stack_targets(specs: list[dict]) -> dict[str, torch.Tensor]:
    rows = [clause_targets(s) for s in specs]
    out = {k: torch.stack([r[k] for r in rows]) for k in rows[0]}
    types = [s.get("type") for s in specs]
    out["has_density"] = torch.tensor([t in DENSITY_TYPES for t in types])
    out["has_size"] = torch.tensor([t in SIZED_TYPES for t in types])
    out["is_finding"] = out["type"] < T
    return out


def _clause_loss(logits: dict, tg: dict) -> torch.Tensor:
    loss = F.cross_entropy(logits["type"], tg["type"])
    f = tg["is_finding"]
    if bool(f.any()):
        loss = loss + F.binary_cross_entropy_with_logits(logits["lobes"][f], tg["lobes"][f])
    for key, mask in (("density", tg["has_density"]), ("size", tg["has_size"])):
        if bool(mask.any()):
            loss = loss + F.binary_cross_entropy_with_logits(logits[key][mask], tg[key][mask])
    return loss


@torch.no_grad()
def clause_accuracy(head, feats: torch.Tensor, tg: dict) -> dict:
    """Type accuracy, and exact-set accuracy of lobes, density and size (where they apply)."""
    head.eval()
    lg = head(feats)
    head.train()
    out = {"type": float((lg["type"].argmax(-1) == tg["type"]).float().mean())}
    for key, mask in (("lobes", tg["is_finding"]), ("density", tg["has_density"]), ("size", tg["has_size"])):
        pred = torch.sigmoid(lg[key][mask]) >= 0.5
        out[key] = float((pred == (tg[key][mask] >= 0.5)).all(-1).float().mean()) if bool(mask.any()) else 1.0
    return {k: round(v, 4) for k, v in out.items()}


def train_clause_head(model, text_cache, cfg: SlotTrainConfig, progress: bool = True) -> dict:
    """Stage 2: fit ``model.clause`` on generated clauses; returns validation accuracies."""
    train_ex = clause_examples(cfg.clause_examples, cfg.seed)
    val_ex = clause_examples(max(500, cfg.clause_examples // 8), cfg.seed + 10_000)
    text_cache.precompute(sorted({t for t, _ in train_ex + val_ex}), batch=128, progress=progress)
    xtr = text_cache([t for t, _ in train_ex]).cpu()
    xva = text_cache([t for t, _ in val_ex]).cpu()
    ttr, tva = _stack_targets([s for _, s in train_ex]), _stack_targets([s for _, s in val_ex])
    head = model.clause
    head.train()
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.clause_lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.clause_steps)
    bar = tqdm(range(cfg.clause_steps), desc="clause head", disable=not progress)
    ema = None
    for step in bar:
        idx = torch.randint(len(xtr), (cfg.clause_batch,), generator=gen)
        loss = _clause_loss(head(xtr[idx]), {k: v[idx] for k, v in ttr.items()})
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if (step + 1) % 500 == 0:
            bar.set_postfix(loss=f"{ema:.3f}", **clause_accuracy(head, xva, tva))
    bar.close()
    return {"loss": round(ema, 4), **clause_accuracy(head, xva, tva)}


# --------------------------------------------------------------------------- stage 3
@torch.no_grad()
def image_attributes(model, data: DenseSet, device, batch: int = 8, progress: bool = False,
                     with_spatial: bool = False):
    """Attribute vectors (N, FULL_ATTR_DIM) of the studies, un-augmented; with ``with_spatial`` also their
    stored-layout spatial maps (N, C, X, Y, Z) float16 (one pass serves stages 3 and 4).  Where ``data``
    carries the nodule detector's evidence, the nodule slots and channel are the detector's, as when
    the encoder encodes a volume."""
    model.eval()
    out, maps = [], []
    for i in tqdm(range(0, len(data), batch), desc="image attributes", disable=not progress):
        idx = list(range(i, min(i + batch, len(data))))
        x = make_batch(data, idx, random.Random(0), augment=False)["x"].to(device)
        enc = model.encode_image(x, [data.nodules[j] for j in idx] if data.nodules is not None else None)
        out.append(enc["attributes"].cpu())
        if with_spatial:
            # (B, C, z, y, x) -> (B, C, X, Y, Z), the layout the encoder stores and the search reranks
            maps.append(enc["spatial"].permute(0, 1, 4, 3, 2).half().cpu())
    model.train()
    return (torch.cat(out), torch.cat(maps)) if with_spatial else torch.cat(out)


def text_attributes(model, texts: list[str], text_cache) -> torch.Tensor:
    """Attribute vectors of canonical texts (their clauses through MiniLM and the clause head)."""
    clauses, owner = [], []
    for i, t in enumerate(texts):
        for c in split_clauses(t):
            clauses.append(c)
            owner.append(i)
    with torch.no_grad():
        feats = text_cache(clauses).cpu() if clauses else torch.zeros(0, 384)
        return model.text_attributes(feats, torch.tensor(owner, dtype=torch.long), len(texts))


def study_texts(meta: list[dict], seed: int = 0) -> tuple[list[str], list[tuple[int, dict | None]]]:
    """Canonical training texts of the studies: both reports, and phrase specs in both languages.

    Returns the texts and, per text, (study index, spec or None for a report)."""
    from medsearch.models.data import GRANULARITIES

    texts, owners = [], []
    for i, m in enumerate(meta):
        for lang in ("en", "zh"):
            texts.append(phrases.normalise(m.get(f"report_{lang}") or "") if m.get(f"report_{lang}")
                         else phrases.report_canonical_from_labels(m["findings"]))
            owners.append((i, None))
        for f in m["findings"]:
            for fields in GRANULARITIES:
                spec = phrases.spec_of(f, fields)
                for lang in ("en", "zh"):
                    texts.append(phrases.normalise(phrases.spec_text(spec, lang)))
                    owners.append((i, spec))
    return texts, owners


def retrieval_metrics(img: torch.Tensor, txt_report: torch.Tensor, keys: list, txt_phrase: torch.Tensor,
                      rel: torch.Tensor) -> dict:
    """Report -> volume R@5/R@10 and phrase nDCG@10 from embeddings (validation of stage 3)."""
    same = torch.tensor([[a == b for b in keys] for a in keys])
    out = {"R@5": recall_at_k(txt_report @ img.T, same, 5), "R@10": recall_at_k(txt_report @ img.T, same, 10)}
    if len(txt_phrase):
        out["nDCG@10"] = ranking_metrics(txt_phrase @ img.T, rel)["nDCG@10"]
    return {k: round(float(v), 4) for k, v in out.items()}


def _val_texts(val_meta) -> tuple[list[str], list, list[str], torch.Tensor]:
    """Validation queries: the reports, the studies' finding-set keys, English phrases and their relevance."""
    from medsearch.models.data import GRANULARITIES

    reports = [phrases.normalise(m["report_en"]) if m.get("report_en")
               else phrases.report_canonical_from_labels(m["findings"]) for m in val_meta]
    keys = [phrases.study_key(m["findings"]) for m in val_meta]
    specs = {}
    for m in val_meta:
        for f in m["findings"]:
            for fields in GRANULARITIES:
                s = phrases.spec_of(f, fields)
                specs[json.dumps(s, sort_keys=True)] = s
    specs = [specs[k] for k in sorted(specs)]
    rel = torch.tensor([[phrases.relevance(m["findings"], s) for m in val_meta] for s in specs], dtype=torch.float32)
    return reports, keys, [phrases.normalise(phrases.spec_text(s, "en")) for s in specs], rel


def _val_sets(model, val_meta, val_img, text_cache):
    reports, keys, ptexts, rel = _val_texts(val_meta)
    return (val_img, text_attributes(model, reports, text_cache), keys,
            text_attributes(model, ptexts, text_cache), rel)


def _evaluate_projection(model, val) -> dict:
    img, rep, keys, phr, rel = val
    with torch.no_grad():
        return retrieval_metrics(model.project(img), model.project(rep), keys,
                                 model.project(phr) if len(phr) else phr, rel)


def tune_projection(model, train_meta, train_img, val_meta, val_img, text_cache, cfg: SlotTrainConfig,
                    progress: bool = True) -> dict:
    """Stage 3: InfoNCE on the projection and temperature; keeps the identity unless tuning helps.

    Tuning starts from the identity even when the model was warm-started (``--init``): a projection
    tuned to another model's calibration is no baseline for this one's (measured in docs/model.md).
    """
    from medsearch.models.data import perturb

    model.reset_projection()

    texts, owners = study_texts(train_meta, cfg.seed)
    # one hard negative per phrase: the spec with one attribute changed (lobe, side, density or size)
    neg_rng = random.Random(cfg.seed + 1)
    negatives: list[dict | None] = [perturb(spec, neg_rng) if spec is not None else None for _, spec in owners]
    neg_texts = [phrases.normalise(phrases.spec_text(n, "en" if j % 2 == 0 else "zh")) if n else ""
                 for j, n in enumerate(negatives)]
    text_cache.precompute(sorted({c for t in texts + neg_texts for c in split_clauses(t)}), batch=128,
                          progress=progress)
    txt_attr = text_attributes(model, texts, text_cache)
    neg_attr = text_attributes(model, neg_texts, text_cache)
    by_study: dict[int, list[int]] = {}
    for j, (i, _) in enumerate(owners):
        by_study.setdefault(i, []).append(j)
    keys = [phrases.study_key(m["findings"]) for m in train_meta]
    val = _val_sets(model, val_meta, val_img, text_cache) if val_meta else None
    before = _evaluate_projection(model, val) if val else {}
    saved = {k: v.detach().clone() for k, v in model.state_dict().items() if k.startswith(("proj", "logit"))}
    rng = random.Random(cfg.seed)
    params = [model.proj.weight, model.logit_scale]
    opt = torch.optim.AdamW(params, lr=cfg.proj_lr, weight_decay=0.0)
    studies = list(by_study)
    bar = tqdm(range(cfg.proj_steps), desc="projection (InfoNCE)", disable=not progress)
    ema = None
    for _ in bar:
        batch = rng.sample(studies, min(cfg.proj_batch, len(studies)))
        picks = [rng.choice(by_study[i]) for i in batch]
        hard = [j for j in picks if negatives[j] is not None]
        img = model.project(train_img[batch])
        txt = model.project(torch.cat([txt_attr[picks], neg_attr[hard]]))
        pos = torch.zeros(len(batch), len(picks) + len(hard), dtype=torch.bool)
        for a, i in enumerate(batch):
            for b, j in enumerate(picks):
                si, spec = owners[j]
                pos[a, b] = (keys[i] == keys[si]) if spec is None else \
                    phrases.relevance(train_meta[i]["findings"], spec) == 2
            for b, j in enumerate(hard):
                pos[a, len(picks) + b] = phrases.relevance(train_meta[i]["findings"], negatives[j]) == 2
        loss = info_nce(img, txt, pos, model.logit_scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        bar.set_postfix(loss=f"{ema:.3f}")
    bar.close()
    after = _evaluate_projection(model, val) if val else {}
    score = lambda m: m.get("R@10", 0) + m.get("nDCG@10", 0)  # noqa: E731
    kept = bool(val) and score(after) > score(before)
    if not kept:
        model.load_state_dict({**model.state_dict(), **saved})
    return {"loss": round(ema or float("nan"), 4), "identity": before, "tuned": after, "kept": kept}


#: The likelihood scorers stage 3 tries against the projection, as (beta, gamma, eps): the first is the
#: default, chosen on 600 studies of seed 1202 (a training seed, never the benchmark's pool); docs/model.md,
#: "The likelihood scorer".
SCORER_GRID = ((1.0, 0.5, 3e-3), (1.0, 1.0, 1e-3), (0.75, 0.5, 3e-3))


def text_embeddings(model, texts: list[str], text_cache) -> torch.Tensor:
    """Unit text embeddings (n, dim) of canonical texts by the model's scorer, as the encoder makes them
    (:meth:`~medsearch.models.registry.Encoder.encode_texts`), with MiniLM from the cache."""
    from medsearch.models.clauses import is_complete, negated_clauses

    pos, neg = [], []
    for i, t in enumerate(texts):
        pos += [(c, i) for c in split_clauses(t)]
        neg += [(c, i) for c in negated_clauses(t)]
    clauses = [c for c, _ in pos + neg]
    with torch.no_grad():
        feats = text_cache(clauses).cpu() if clauses else torch.zeros(0, 384)
        return model.embed_texts(feats[:len(pos)], torch.tensor([i for _, i in pos], dtype=torch.long),
                                 feats[len(pos):], torch.tensor([i for _, i in neg], dtype=torch.long),
                                 torch.tensor([is_complete(t) for t in texts], dtype=torch.bool))


def _likelihood_metrics(model, val_meta, val_img, text_cache, scorer) -> dict:
    reports, keys, ptexts, rel = _val_texts(val_meta)
    model.scorer = scorer
    with torch.no_grad():
        image = model.embed_image(val_img)
    return retrieval_metrics(image, text_embeddings(model, reports, text_cache), keys,
                             text_embeddings(model, ptexts, text_cache) if ptexts else torch.zeros(0, model.dim),
                             rel)


def choose_scorer(model, val_meta, val_img, text_cache, projection: dict) -> dict:
    """Stage 3's second half: the likelihood scorer (:mod:`medsearch.models.likelihood`) replaces the
    projection when one of :data:`SCORER_GRID` beats it on the validation studies (report R@10 plus phrase
    nDCG@10, as the projection itself is kept)."""
    from medsearch.models.likelihood import LikelihoodScorer

    score = lambda m: m.get("R@10", 0) + m.get("nDCG@10", 0)  # noqa: E731
    base = projection["tuned"] if projection.get("kept") else projection.get("identity", {})
    tried = []
    for beta, gamma, eps in SCORER_GRID:
        sc = LikelihoodScorer(beta=beta, gamma=gamma, eps=eps)
        tried.append((sc, _likelihood_metrics(model, val_meta, val_img, text_cache, sc)))
    best, metrics = max(tried, key=lambda x: score(x[1]))
    kept = score(metrics) > score(base)
    model.scorer = best if kept else None
    log.info("scorer: %s", f"likelihood {best.to_config()}" if kept else "projection")
    return {"projection": base, "likelihood": [{**sc.to_config(), **m} for sc, m in tried],
            "kept": best.to_config() if kept else "projection"}


# --------------------------------------------------------------------------- all stages
def train_slot_model(model, train: DenseSet, val: DenseSet | None, out: Path, cfg: SlotTrainConfig,
                     device: str | None = None, progress: bool = True) -> dict:
    """Run the three stages on ``model`` (a :class:`~medsearch.models.slot_model.SlotModel`)."""
    from medsearch.models.train import TextCache

    t0 = time.perf_counter()
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(dev)
    summary: dict = {"image": train_image(model, train, val, out, cfg.seg, device=str(dev), progress=progress)}
    summary["focal"] = train_focal(model, train, val, cfg.focal, device=str(dev), progress=progress)
    model.cpu()
    if cfg.image_only:
        summary["seconds"] = round(time.perf_counter() - t0, 1)
        summary["config"] = asdict(cfg)
        return summary
    calib = train.subset(range(min(len(train), cfg.calibration_studies)))
    summary["calibration"] = calibrate_presence(model, calib)
    cache = TextCache(torch.device("cpu"))
    torch.manual_seed(cfg.seed)
    summary["clause"] = train_clause_head(model, cache, cfg, progress=progress)
    train_img, train_spatial = image_attributes(model, train, "cpu", progress=progress, with_spatial=True)
    val_img, val_spatial = image_attributes(model, val, "cpu", progress=progress, with_spatial=True) \
        if val is not None and len(val) else (None, None)
    summary["projection"] = tune_projection(model, train.meta, train_img, val.meta if val_img is not None else [],
                                            val_img, cache, cfg, progress=progress)
    if val_img is not None:
        summary["scorer"] = choose_scorer(model, val.meta, val_img, cache, summary["projection"])
    if cfg.reranker_epochs and val_img is not None:
        summary["reranker"] = train_slot_reranker(model, train, val, out, cache, cfg.reranker_epochs, cfg.seed,
                                                  progress=progress, train_spatial=train_spatial,
                                                  val_attr=val_img, val_spatial=val_spatial)
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    summary["config"] = asdict(cfg)
    return summary


def dense_from_studies(studies) -> DenseSet:
    """A hospital's studies (canonical HU + report findings) as a DenseSet without voxel targets."""
    from medsearch.models.heads import attribute_targets
    from medsearch.models.train_seg import half

    n = len(studies)
    hu = np.stack([s.hu.astype(np.int16) for s in studies])
    shape = half(hu[:1], "pick").shape[1:]
    zeros = lambda dtype, fill=0: np.full((n, *shape), fill, dtype)  # noqa: E731
    from medsearch.models.dense_data import NO_DENSITY

    meta = [{"findings": s.findings, "report_en": s.report_en, "report_zh": s.report_zh, "key": s.key}
            for s in studies]
    presence = np.stack([attribute_targets(s.findings)["presence"].numpy() for s in studies])
    nodules = [s.nodules for s in studies] if any(s.nodules is not None for s in studies) else None
    return DenseSet(hu, zeros(np.uint8), zeros(np.int16), zeros(np.uint8, NO_DENSITY), zeros(np.float16),
                    presence, np.zeros(n, bool), meta, nodules)


def concat(sets: list[DenseSet]) -> DenseSet:
    sets = [s for s in sets if len(s)]
    # a study without evidence (a hospital study: the detector reads synthetic archives only) keeps the
    # U-Net's nodule slots, as SlotModel.encode_image does for a None entry
    nodules = [e for s in sets for e in (s.nodules or [None] * len(s))] \
        if any(s.nodules is not None for s in sets) else None
    return DenseSet(*(np.concatenate([getattr(s, k) for s in sets]) for k in
                      ("hu", "region", "types", "density", "logsize", "presence", "dense")),
                    [m for s in sets for m in s.meta], nodules)


def save_slot_model(model, out: Path, meta: dict, grid: str = "coarse") -> None:
    """Write the trained parts of a ctseg model (no MiniLM weights) and its config, which names the
    canonical grid (``SEG_GRIDS[grid]``) that inference must resample onto."""
    from medsearch.models.preprocess import SEG_WINDOWS
    from medsearch.models.slot_model import SEG_GRIDS
    from medsearch.models.train import CONFIG_FILE, MODEL_FILE

    g = SEG_GRIDS[grid]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.cpu().eval()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, out / MODEL_FILE)
    config = {"arch": "ctseg", "dim": model.dim, "detail_width": model.image.detail_width,
              "focal_width": model.image.focal_width if model.image.focal is not None else 0, "grid": grid,
              "canonical_shape": g.shape, "canonical_spacing_mm": g.spacing_mm, "spatial_pool": g.spatial_pool,
              "windows_hu": SEG_WINDOWS, **meta}
    if getattr(model, "scorer", None) is not None:
        config["scorer"] = model.scorer.to_config()
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def warm_start(model, init: Path) -> dict:
    """Load the weights of the ctseg model in ``init`` into ``model`` where names and shapes agree.

    Parts that are new or changed shape (for example the detail stage, when ``init`` predates it)
    keep their fresh initialisation and are trained from scratch.

    Raises:
        ConfigError: ``init`` holds no ctseg model.
    """
    from medsearch.errors import ConfigError
    from medsearch.models.train import CONFIG_FILE, MODEL_FILE

    init = Path(init)
    try:
        config = json.loads((init / CONFIG_FILE).read_text())
        state = torch.load(init / MODEL_FILE, map_location="cpu", weights_only=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"--init '{init}' holds no readable model ({type(exc).__name__}).",
                          f"Pass a folder with {MODEL_FILE} and {CONFIG_FILE}, as 'medsearch train' writes.") from None
    if config.get("arch") != "ctseg":
        raise ConfigError(f"--init '{init}' holds a {config.get('arch')!r} model, not ctseg.",
                          "Fine-tune a ctseg model, or train this architecture without --init.")
    own = model.state_dict()
    same = {k: v.float() for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(same, strict=False)
    fresh = sorted(k for k in own if k not in same)
    log.info("warm start from %s: %d tensors loaded, %d fresh", init, len(same), len(fresh))
    return {"from": init.name, "loaded": len(same), "fresh": fresh}


def ancestry(init: Path) -> tuple[list[dict], list[str]]:
    """The runs behind the model in ``init`` (oldest first, itself last) and its training study keys."""
    from medsearch.models.train import CONFIG_FILE

    config = json.loads((Path(init) / CONFIG_FILE).read_text())
    summary = config.get("summary", {})
    run = {"model": Path(init).name, "grid": config.get("grid", "coarse"),
           "train_seeds": config.get("train_seeds", []), "train_archives": config.get("train_archives", []),
           "train_studies": config.get("train_studies"), "train": config.get("train", {}),
           "image": {k: v for k, v in summary.get("image", {}).items() if k != "history"},
           "calibration": summary.get("calibration"), "init": (summary.get("init") or {}).get("from")}
    return config.get("lineage", []) + [run], list(config.get("train_study_keys", []))


def train_ctseg(out: Path, synth_seeds: list[int], synth_studies: int, archives: list[Path] | None = None,
                reports: Path | None = None, cfg: SlotTrainConfig | None = None, progress: bool = True,
                workers: int = 2, val_fraction: float = 0.1, init: Path | None = None,
                detail_width: int | None = None, grid: str | None = None) -> dict:
    """``medsearch train --arch ctseg``: build the data, run the three stages, write the model.

    Synthetic training studies are generated from ``synth_seeds`` (``synth_studies`` each, with
    voxel targets, cached under ``<out>/cache``); ``archives`` add a hospital's studies, whose
    report findings train the study-level presence only.  ``init`` is a ctseg model folder to start
    from (see :func:`warm_start`); ``detail_width`` the image tower's detail stage (None: DETAIL_WIDTH);
    ``grid`` the canonical grid, a key of ``SEG_GRIDS`` (None: DEFAULT_GRID).

    Raises:
        ConfigError: ``grid`` is unknown, or ``<out>/cache`` holds studies of another grid.
    """
    from medsearch.errors import InputError
    from medsearch.models.data import _study_key, load_archive
    from medsearch.models.dense_data import build_dense_cache, synth_study_uid
    from medsearch.models.evaluate import check_seed_disjoint
    from medsearch.errors import ConfigError
    from medsearch.models.slot_model import DEFAULT_GRID, DETAIL_WIDTH, SEG_GRIDS, SlotModel
    from medsearch.models.train_seg import load_dense

    from medsearch.models.dense_data import dense_evidence
    from medsearch.models.nodule_detector import NoduleDetector

    check_seed_disjoint(synth_seeds)
    # the --init model's nodule detector is carried into the new model (_carry_nodule_detector); stages 3
    # and 4 then learn on the slots and maps the encoder will produce, the detector's included
    detector = NoduleDetector.load(Path(init)) if init else None
    grid = grid or DEFAULT_GRID
    if grid not in SEG_GRIDS:
        raise ConfigError(f"Unknown canonical grid {grid!r}.", f"Use one of: {', '.join(SEG_GRIDS)}.")
    g = SEG_GRIDS[grid]
    cfg = cfg or SlotTrainConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sets, keys = [], []
    for s in synth_seeds:
        paths = build_dense_cache(out / "cache", s, synth_studies, g.spacing_mm, g.shape,
                                  workers=workers, progress=progress)
        sets.append(load_dense(paths))
        if detector is not None and not cfg.image_only:
            sets[-1].nodules = dense_evidence(out / "cache", detector, s, synth_studies, g.spacing_mm, g.shape,
                                              workers=workers, progress=progress)
        if sets[-1].hu.shape[1:] != g.shape:
            raise ConfigError(f"The dense cache in '{out / 'cache'}' holds volumes of grid {sets[-1].hu.shape[1:]}, "
                              f"not of the {grid!r} grid {g.shape}.",
                              "Delete that cache folder or train into another --out folder.")
        keys += [_study_key(synth_study_uid(s, i)) for i in range(synth_studies)]
    for archive in archives or []:
        studies = load_archive(archive, reports, cache_dir=out / "cache", progress=progress,
                               spacing_mm=g.spacing_mm, shape=g.shape, detector=detector, workers=workers)
        sets.append(dense_from_studies(studies))
        keys += [s.key for s in studies]
    data = concat(sets) if sets else None
    if data is None or len(data) < 4:
        raise InputError("Training needs at least 4 studies.",
                         "Pass --synth-seed S (with --synth-studies N) or --archive DIR with more studies.")
    order = list(range(len(data)))
    random.Random(cfg.seed).shuffle(order)
    n_val = min(150, max(1, int(len(data) * val_fraction)))
    train, val = data.subset(sorted(order[n_val:])), data.subset(sorted(order[:n_val]))
    torch.manual_seed(cfg.seed)
    # a focal head in the model to start from is kept (and trained on unless cfg.focal.steps is 0)
    focal_width = int(json.loads((Path(init) / "config.json").read_text()).get("focal_width", 0)) if init else 0
    model = SlotModel(detail_width=DETAIL_WIDTH if detail_width is None else detail_width,
                      spatial_pool=g.spatial_pool, focal_width=focal_width)
    warm = warm_start(model, init) if init else None
    lineage: list[dict] = []
    if init:
        # what the warm start carries over: its runs (so the card can say how the weights were trained)
        # and its training studies (so that evaluation still refuses them)
        lineage, inherited = ancestry(init)
        keys += inherited
    summary = train_slot_model(model, train, val, out, cfg, progress=progress)
    if warm is not None:
        summary["init"] = warm
    save_slot_model(model, out, {
        "summary": {k: v for k, v in summary.items() if k != "config"}, "train": summary["config"],
        "train_studies": len(train), "val_studies": len(val), "train_seeds": list(synth_seeds),
        "train_archives": [Path(a).name for a in archives or []], "train_study_keys": sorted(set(keys)),
        **({"lineage": lineage} if lineage else {}), **({IMAGE_ONLY: True} if cfg.image_only else {})},
        grid=grid)
    if init:
        _carry_nodule_detector(Path(init), out)
    return summary


def _carry_nodule_detector(init: Path, out: Path) -> None:
    """Copy the nodule detector of the ``--init`` model, and its region classifier, into ``out``: they read
    the scan's own pixels, not the tower's, so a fine-tuned tower keeps them (``medsearch train-nodules`` and
    ``medsearch train-regions`` retrain them)."""
    import shutil

    from medsearch.models.nodule_detector import NODULE_FILE
    from medsearch.models.region_classifier import REGION_FILE
    from medsearch.models.train import CONFIG_FILE

    if not (init / NODULE_FILE).exists() or init.resolve() == out.resolve():
        return
    source = json.loads((init / CONFIG_FILE).read_text())
    config = json.loads((out / CONFIG_FILE).read_text())
    for name, key in ((NODULE_FILE, "nodule_detector"), (REGION_FILE, "region_classifier")):
        if (init / name).exists():
            shutil.copyfile(init / name, out / name)
            if source.get(key) is not None:
                config[key] = {**source[key], "carried_from": init.name}
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


# --------------------------------------------------------------------------- stage 4 (issue 7)
def train_slot_reranker(model, train: DenseSet, val: DenseSet, out: Path, text_cache, epochs: int = 8,
                        seed: int = 0, progress: bool = True, train_spatial: torch.Tensor | None = None,
                        val_attr: torch.Tensor | None = None, val_spatial: torch.Tensor | None = None) -> dict:
    """Stage 4: the cross-attention reranker on the ctseg spatial maps, kept per query kind only where it
    beats the dual tower on the validation studies (``reranker.pt``)."""
    from types import SimpleNamespace

    from medsearch.models.reranker import RERANKER_FILE, TextTokens, save_reranker, train_reranker
    from medsearch.models.reranker_train import hybrid, itm_matrix, keep_decision, phrase_queries, report_queries

    if train_spatial is None:
        _, train_spatial = image_attributes(model, train, "cpu", with_spatial=True)
    if val_attr is None or val_spatial is None:
        val_attr, val_spatial = image_attributes(model, val, "cpu", with_spatial=True)
    tokens = TextTokens(minilm=text_cache.minilm)
    reranker = train_reranker(train_spatial, [m["findings"] for m in train.meta], tokens=tokens, epochs=epochs,
                              seed=seed, progress=progress)
    with torch.no_grad():
        emb = model.embed_image(val_attr)
    studies = [SimpleNamespace(findings=m["findings"]) for m in val.meta]

    def dual(texts):
        return text_embeddings(model, texts, text_cache) @ emb.T

    gain: dict = {"pool": len(val)}
    p_texts, rel = phrase_queries(studies)
    if p_texts:
        d, itm = dual(p_texts), itm_matrix(reranker, tokens, p_texts, val_spatial)
        gain["phrase_to_volume"] = {"dual": ranking_metrics(d, rel), "hybrid": ranking_metrics(hybrid(d, itm), rel)}
    r_texts, same = report_queries(studies)
    d, itm = dual(r_texts), itm_matrix(reranker, tokens, r_texts, val_spatial)
    gain["report_to_volume"] = {"dual": {f"R@{k}": recall_at_k(d, same, k) for k in (1, 5, 10)},
                                "hybrid": {f"R@{k}": recall_at_k(hybrid(d, itm), same, k) for k in (1, 5, 10)}}
    keep = keep_decision(gain)
    save_reranker(reranker, Path(out) / RERANKER_FILE, {"keep": keep, "gain": gain, "epochs": epochs})
    log.info("reranker kept for: %s", ", ".join(k for k, v in keep.items() if v) or "nothing")
    return {"epochs": epochs, "gain": gain, "keep": keep}

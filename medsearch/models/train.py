"""Contrastive training of the dual encoder: ``medsearch train``.

The loop is deterministic for a seed (one seeded ``random.Random`` drives
sampling and augmentation; torch's generator drives initialisation and
dropout), resumes from ``<out>/checkpoint.pt``, shows a tqdm bar with the loss
and the validation recall, and uses CUDA when present.
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
from tqdm import tqdm

from medsearch.models import phrases
from medsearch.models.data import Study, all_texts, make_batch
from medsearch.models.dual import DualEncoder
from medsearch.models.losses import attribute_loss, info_nce
from medsearch.models.metrics import recall_at_k
from medsearch.models.preprocess import CANONICAL_SHAPE, CANONICAL_SPACING, WINDOWS, hu_windows

log = logging.getLogger(__name__)
MODEL_FILE = "model.pt"
CONFIG_FILE = "config.json"
CHECKPOINT_FILE = "checkpoint.pt"


@dataclass
class TrainConfig:
    arch: str = "ctnet"
    steps: int = 1500
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup: int = 50
    seed: int = 0
    hard_negatives: int = 1
    aux_weight: float = 1.0
    val_fraction: float = 0.1
    eval_every: int = 100
    checkpoint_every: int = 50
    #: epochs of the cross-attention reranker trained after the towers (0: none); see models/reranker_train.py
    reranker_epochs: int = 8


_MINILM = {}


class TextCache:
    """MiniLM sentence vectors of canonical texts, computed once each (the base model is frozen).

    Each text is encoded alone, so its vector never depends on which texts shared its
    padded batch: a resumed run sees exactly the vectors of an uninterrupted one.
    """

    def __init__(self, device: torch.device):
        from medsearch.models.text_tower import MiniLM

        if str(device) not in _MINILM:
            _MINILM[str(device)] = MiniLM().to(device)
        self.minilm = _MINILM[str(device)]
        self.device = device
        self.vectors: dict[str, torch.Tensor] = {}

    def precompute(self, texts: list[str], batch: int = 64, progress: bool = False) -> None:
        """Encode ``texts`` in a fixed order and batching (deterministic across resumes)."""
        todo = [t for t in texts if t not in self.vectors]
        for i in tqdm(range(0, len(todo), batch), desc="text", disable=not progress):
            chunk = todo[i:i + batch]
            for text, vec in zip(chunk, self.minilm(chunk)):
                self.vectors[text] = vec

    def __call__(self, texts: list[str]) -> torch.Tensor:
        for text in dict.fromkeys(t for t in texts if t not in self.vectors):
            self.vectors[text] = self.minilm([text])[0]
        return torch.stack([self.vectors[t] for t in texts]).to(self.device)


def seed_everything(seed: int) -> random.Random:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    return random.Random(seed)


def split(studies: list[Study], fraction: float, seed: int) -> tuple[list[Study], list[Study]]:
    """Deterministic train/validation split."""
    order = list(range(len(studies)))
    random.Random(seed).shuffle(order)
    n_val = min(max(1, int(len(studies) * fraction)), 200) if len(studies) > 4 else 0
    val = [studies[i] for i in order[:n_val]]
    return [studies[i] for i in order[n_val:]], val


def _windows(studies: list[Study]) -> torch.Tensor:
    return torch.stack([hu_windows(torch.from_numpy(s.hu.astype(np.float32))) for s in studies])


@torch.no_grad()
def validation_recall(model: DualEncoder, val: list[Study], cache: TextCache, device, k: int = 5) -> float:
    """Report -> volume R@k on the validation studies (canonical report text of the labels)."""
    if not val:
        return float("nan")
    model.eval()
    img = torch.cat([model.encode_image(_windows(val[i:i + 16]).to(device))["embedding"]
                     for i in range(0, len(val), 16)])
    txt = model.encode_text(cache([phrases.report_canonical_from_labels(s.findings) for s in val]))
    keys = [phrases.study_key(s.findings) for s in val]
    same = torch.tensor([[a == b for b in keys] for a in keys])
    model.train()
    return recall_at_k((txt @ img.T).cpu(), same, k)


def _same_run(saved: dict, wanted: dict) -> bool:
    """A checkpoint continues a run when everything but the step count matches: a larger
    ``--steps`` extends a finished run (the cosine schedule restarts from the new total)."""
    ignore = ("steps", "eval_every", "checkpoint_every")
    return {k: v for k, v in saved.items() if k not in ignore} == {k: v for k, v in wanted.items() if k not in ignore}


def _lr(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def save_model(model: DualEncoder, out: Path, meta: dict) -> None:
    """Write the trained parts (no MiniLM base weights) and the model card data."""
    out.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, out / MODEL_FILE)
    config = {"arch": model.arch, "dim": model.text_proj.skip.out_features, "canonical_shape": CANONICAL_SHAPE,
              "canonical_spacing_mm": CANONICAL_SPACING, "windows_hu": WINDOWS, **meta}
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def train(studies: list[Study], out: Path, cfg: TrainConfig, device: str | None = None,
          stop_after: int | None = None, progress: bool = True) -> dict:
    """Train on ``studies`` and write the model to ``out``.

    Args:
        studies: training studies (a validation share is held out of them).
        out: model folder; ``checkpoint.pt`` there is resumed when its config matches.
        cfg: hyper-parameters and seed.
        device: "cpu", "cuda" or None (CUDA when present).
        stop_after: stop after this global step without finishing (tests of resume).

    Returns:
        summary dict: steps, final loss, validation recall, seconds.
    """
    from medsearch.errors import InputError

    if len(studies) < 2:
        raise InputError(f"Training needs at least 2 studies; got {len(studies)}.",
                         "Point --archive at a folder with more studies (e.g. 'medsearch synth OUT --studies 200').")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = seed_everything(cfg.seed)
    train_set, val_set = split(studies, cfg.val_fraction, cfg.seed)
    model = DualEncoder(cfg.arch).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    cache = TextCache(dev)
    cache.precompute(all_texts(studies), progress=progress)
    start, history = 0, []
    ckpt_path = out / CHECKPOINT_FILE
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location=dev, weights_only=False)
        if _same_run(ckpt["config"], asdict(cfg)) and ckpt["n_studies"] == len(studies):
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
            rng.setstate(ckpt["python_rng"])
            torch.set_rng_state(ckpt["torch_rng"])
            start, history = ckpt["step"], ckpt["history"]
            log.info("resuming from step %d", start)
        else:
            log.warning("checkpoint in %s is from another configuration; starting afresh", out)
    t0 = time.perf_counter()
    model.train()
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="train", disable=not progress)
    loss_ema, val_r = None, history[-1]["val_R@5"] if history else float("nan")
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = _lr(step, cfg)
        batch = make_batch(rng.sample(train_set, min(cfg.batch_size, len(train_set))), rng, cfg.hard_negatives)
        out_img = model.encode_image(batch["image"].to(dev))
        txt = model.encode_text(cache(batch["texts"]))
        contrastive = info_nce(out_img["embedding"], txt, batch["positives"].to(dev), model.logit_scale)
        targets = {k: v.to(dev) for k, v in batch["targets"].items()}
        loss = contrastive + cfg.aux_weight * attribute_loss(out_img, targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        loss_ema = loss.item() if loss_ema is None else 0.9 * loss_ema + 0.1 * loss.item()
        done = step + 1
        if done % cfg.eval_every == 0 or done == cfg.steps:
            val_r = validation_recall(model, val_set, cache, dev)
            history.append({"step": done, "loss": round(loss_ema, 4), "val_R@5": round(val_r, 4)})
        bar.set_postfix(loss=f"{loss_ema:.3f}", val_R5=f"{val_r:.3f}")
        if done % cfg.checkpoint_every == 0 or done == cfg.steps or done == stop_after:
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": done,
                        "python_rng": rng.getstate(), "torch_rng": torch.get_rng_state(), "history": history,
                        "config": asdict(cfg), "n_studies": len(studies)}, ckpt_path)
        if stop_after is not None and done >= stop_after:
            break
    bar.close()
    summary = {"steps": done if cfg.steps > start else start, "loss": round(loss_ema or float("nan"), 4),
               "val_R@5": round(val_r, 4), "seconds": round(time.perf_counter() - t0, 1),
               "train_studies": len(train_set), "val_studies": len(val_set), "history": history}
    if stop_after is None or summary["steps"] >= cfg.steps:
        save_model(model.cpu(), out, {"train": asdict(cfg), "summary": {k: v for k, v in summary.items()
                                                                          if k != "history"}})
        if cfg.reranker_epochs:
            # the reranker (issue 7) learns on the frozen towers; it is kept per query kind only where it
            # beats the dual tower on the validation studies (medsearch.models.reranker_train)
            from medsearch.models.reranker_train import train_for_model

            summary["reranker"] = train_for_model(model, train_set, val_set, out, cache, device=dev,
                                                  epochs=cfg.reranker_epochs, seed=cfg.seed, progress=progress)
    return summary


def train_archives(archives: list[Path], out: Path, reports: Path | None = None, cfg: TrainConfig | None = None,
                   progress: bool = True, synth_seeds: list[int] | None = None) -> dict:
    """``medsearch train``: load (and cache) the archives' studies, train, write the model.

    The canonical volumes are cached in ``<out>/cache`` so that a resumed run starts at once.
    The model records a hash of each training study's UID, so evaluation can refuse an
    archive that overlaps the training data.
    """
    from medsearch.models.data import load_archive
    from medsearch.models.evaluate import check_seed_disjoint

    check_seed_disjoint(synth_seeds or [])
    cfg = cfg or TrainConfig()
    out = Path(out)
    studies: list[Study] = []
    for archive in archives:
        studies += load_archive(archive, reports, cache_dir=out / "cache", progress=progress)
    summary = train(studies, out, cfg, progress=progress)
    config_path = out / CONFIG_FILE
    if config_path.exists():
        config = json.loads(config_path.read_text())
        config["train_study_keys"] = sorted(s.key for s in studies)
        config["train_archives"] = [Path(a).name for a in archives]
        config["train_seeds"] = list(synth_seeds or [])
        config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    return summary

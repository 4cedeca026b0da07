"""What each type the nodule detector scores besides nodules adds, and how to fold it into the U-Net's slots.

    python bench/bench_detector_types.py --pool /tmp/ms/eval_9001 [--model DIR]

The pool is the benchmark's (``medsearch synth POOL --studies 1000 --seed 9001``); the
model's detector must score more than nodules (``medsearch train-nodules --types``).
The U-Net's maps and the detector's evidence are computed once; then, on the same pool
in the same run, each row folds the detector's other types into the slots by one rule:

- ``nodules only``: the detector's nodules, every other type the U-Net's;
- ``+ TYPE max``: that type's presence is the larger of the U-Net's and the detector's
  (:func:`~medsearch.models.slot_model.merge_other`, what the encoder does), the other
  types as in the row above it;
- ``+ TYPE replace`` / ``+ TYPE mean``: the detector's presence alone, or the mean of the two;
- ``shipped``: every type with the larger of the two.

Beside R@10 and nDCG@10, each type's own phrase queries' nDCG@10, and the study-level AUC
of the U-Net's, the detector's and the larger presence per type.
Writes bench/results/detector_types.json and prints a table.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from bench_ceiling import _row, pool_arguments, pool_studies  # noqa: E402
from medsearch import vocab  # noqa: E402
from medsearch.models import registry  # noqa: E402
from medsearch.models.ceiling import phrase_metrics_by_type  # noqa: E402
from medsearch.models.evaluate import phrase_specs  # noqa: E402
from medsearch.models.image_tower_seg import HEAD_SPLIT  # noqa: E402
from medsearch.models.nodule_detector import nodule_slots  # noqa: E402
from medsearch.models.preprocess import hu_windows  # noqa: E402
from medsearch.models.train_nodules import _auc  # noqa: E402

RULES = {
    "max": lambda u, d: torch.maximum(u, d),
    "replace": lambda u, d: d,
    "mean": lambda u, d: (u + d) / 2,
}


@torch.no_grad()
def slots_apart(enc: registry.Encoder, studies, batch: int = 8) -> tuple[dict, dict]:
    """The U-Net's slots with the detector's nodules (type -> (N, T, L, ...)) and, per other type, the
    detector's own slots of every study (a dict or None where it found nothing)."""
    model, windows = enc.model, enc.config.get("windows_hu")
    others = enc.nodule_detector.types[1:]
    base: dict[str, list] = {k: [] for k in ("presence", "density", "size")}
    own: dict[str, list] = {t: [] for t in others}
    for i in tqdm(range(0, len(studies), batch), desc="encode", unit="batch"):
        part = studies[i:i + batch]
        x = torch.stack([hu_windows(torch.from_numpy(s.hu.astype(np.float32)), windows) for s in part])
        maps, _ = model.image(x)
        slots = dict(model.image.slots(maps))
        _, slots = model._with_nodules(maps, slots, [replace(s.nodules, others=None) for s in part])
        for k in base:
            base[k].append(slots[k])
        region = torch.softmax(maps[:, :HEAD_SPLIT[0]], dim=1)[:, 1:]
        for b, s in enumerate(part):
            found = s.nodules.others or {}
            for t in others:
                ev = found.get(t)
                own[t].append(nodule_slots(ev, region[b]) if ev is not None and len(ev) else None)
    return {k: torch.cat(v) for k, v in base.items()}, own


def fold(model, base: dict, own: dict, rules: dict[str, str]) -> torch.Tensor:
    """Attribute vectors with each type of ``rules`` folded in by its rule."""
    slots = {k: v.clone() for k, v in base.items()}
    for ftype, rule in rules.items():
        t = vocab.FINDING_TYPES.index(ftype)
        for b, o in enumerate(own[ftype]):
            u = slots["presence"][b, t]
            slots["presence"][b, t] = RULES[rule](u, o["presence"] if o is not None else torch.zeros_like(u))
    return model.image_attributes(slots)


def main(argv=None) -> dict:
    args = pool_arguments(__doc__, "detector_types.json", argv)
    enc = registry.Encoder(args.model)
    det = enc.nodule_detector
    if det is None or len(det.types) < 2:
        raise SystemExit(f"{args.model} has no detector of more than nodules; train one with "
                         "'medsearch train-nodules DIR --types nodule,cavity'.")
    studies = pool_studies(enc, args.pool)
    base, own = slots_apart(enc, studies)
    others = list(det.types[1:])
    aucs = {}
    for ftype in others:
        t = vocab.FINDING_TYPES.index(ftype)
        y = [any(f["type"] == ftype for f in s.findings) for s in studies]
        u = base["presence"][:, t].amax(1).numpy()
        d = np.array([float(o["presence"].max()) if o is not None else 0.0 for o in own[ftype]])
        aucs[ftype] = {"studies": int(sum(y)), "unet": _auc(u, y), "detector": _auc(d, y),
                       "larger": _auc(np.maximum(u, d), y)}
    plan = [("nodules only", {})]
    for k, ftype in enumerate(others):
        before = {t: "max" for t in others[:k]}
        plan += [(f"+ {ftype} {rule}", {**before, ftype: rule}) for rule in RULES]
    plan.append(("shipped", {t: "max" for t in others}))
    specs = phrase_specs(studies)
    rows = {}
    for name, rules in tqdm(plan, desc="rules", unit="row"):
        attributes = fold(enc.model, base, own, rules)
        row = _row(enc, studies, attributes)
        with torch.no_grad():
            by_type = phrase_metrics_by_type(enc, studies, enc.model.embed_image(attributes), specs)
        row["by type"] = {t: by_type[t]["nDCG@10"] for t in others if t in by_type}
        rows[name] = row
    result = {"pool": len(studies), "model": str(args.model), "model_version": enc.model_version,
              "types": others, "study_auc": aucs, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"pool {len(studies)} held-out studies; the detector scores {', '.join(det.types)}")
    for ftype, a in aucs.items():
        print(f"  {ftype}: {a['studies']} studies; study AUC U-Net {a['unet']:.3f}, detector {a['detector']:.3f}, "
              f"larger {a['larger']:.3f}")
    print(f"{'rule':34s} {'R@1':>6s} {'R@10':>6s} {'R@10 zh':>8s} {'mAP':>6s} {'nDCG@10':>8s}   type nDCG@10")
    for name, r in rows.items():
        types = "  ".join(f"{t} {v:.3f}" for t, v in r["by type"].items())
        print(f"{name:34s} {r['R@1']:6.3f} {r['R@10']:6.3f} {r['R@10 zh']:8.3f} {r['mAP']:6.3f} {r['nDCG@10']:8.3f}   "
              f"{types}")
    return result


if __name__ == "__main__":
    main()

"""Image-tower candidates compared by accuracy and CPU cost (recorded in docs/model.md).

    python bench/bench_model_compare.py --archive A [--archive B] --cache DIR [--steps 150]

Each candidate (MONAI-block CTEncoder "ctnet", MONAI ResNet-10 "resnet10") is
trained with the same seed, data, steps and batch, then scored by validation
report->volume R@5 and R@10 on the held-out share; CPU cost is the median
forward and forward+backward time of the bare network on one batch, measured
in the same run.  Writes bench/results/model_compare.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from medsearch.models.data import load_archive  # noqa: E402
from medsearch.models.dual import build_image_encoder  # noqa: E402
from medsearch.models.preprocess import CANONICAL_SHAPE  # noqa: E402
from medsearch.models.train import TrainConfig, train  # noqa: E402


def cost(arch: str, batch: int, repeats: int = 5) -> dict:
    net = build_image_encoder(arch)
    x = torch.randn(batch, 2, *CANONICAL_SHAPE)
    fwd, step = [], []
    net.eval()
    with torch.no_grad():
        net(x[:1])
        for _ in range(repeats):
            t = time.perf_counter()
            net(x[:1])
            fwd.append(time.perf_counter() - t)
    net.train()
    for _ in range(repeats):
        t = time.perf_counter()
        pooled, _ = net(x)
        pooled.sum().backward()
        step.append(time.perf_counter() - t)
    return {"params": sum(p.numel() for p in net.parameters()),
            "forward_ms_1vol": round(1000 * statistics.median(fwd), 1),
            f"train_step_ms_batch{batch}": round(1000 * statistics.median(step), 1)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archive", type=Path, action="append", required=True)
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "model_compare.json")
    args = ap.parse_args(argv)
    studies = [s for a in args.archive for s in load_archive(a, cache_dir=args.cache, progress=False)]
    result = {"studies": len(studies), "steps": args.steps, "batch_size": args.batch_size, "candidates": {}}
    for arch in ("ctnet", "resnet10"):
        with tempfile.TemporaryDirectory() as tmp:
            cfg = TrainConfig(arch=arch, steps=args.steps, batch_size=args.batch_size, eval_every=args.steps, seed=0)
            summary = train(studies, Path(tmp), cfg, progress=False)
        result["candidates"][arch] = {"val_R@5": summary["val_R@5"], "train_seconds": summary["seconds"],
                                      **cost(arch, args.batch_size)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'arch':10s} {'params':>9s} {'val R@5':>8s} {'fwd ms':>8s} {'step ms':>8s} {'train s':>8s}")
    for arch, r in result["candidates"].items():
        print(f"{arch:10s} {r['params']:9d} {r['val_R@5']:8.3f} {r['forward_ms_1vol']:8.1f} "
              f"{r[f'train_step_ms_batch{args.batch_size}']:8.1f} {r['train_seconds']:8.0f}")
    return result


if __name__ == "__main__":
    main()

"""Image-tower candidates compared by accuracy and CPU cost (recorded in docs/model.md).

    python bench/bench_model_compare.py --pool POOL --model ctseg=DIR --model ctnet=DIR [--batch-size 4]

Accuracy: each trained model (``ARCH=DIR``) encodes the same held-out pool (a
synthetic archive with an evaluation seed) and is scored by both evaluation
protocols (report->volume R@10, phrase->volume nDCG@10, English).  Cost: the
median forward time of the bare image network on one volume and of a training
step (forward + backward) on a batch, for every candidate architecture
(``ctseg``, ``ctnet``, ``resnet10``), measured in the same run.  Without
``--pool`` only the cost is measured.  Writes bench/results/model_compare.json
and prints a short table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from medsearch.models.preprocess import CANONICAL_SHAPE  # noqa: E402
from medsearch.models.registry import build_model  # noqa: E402

ARCHS = ("ctseg", "ctnet", "resnet10")


def cost(arch: str, batch: int, repeats: int = 5) -> dict:
    """Median forward (1 volume) and train-step (``batch`` volumes) time of the bare image network."""
    net = build_model(arch, 512 if arch == "ctseg" else 256).image
    channels = net.stem.conv.in_channels - (3 if arch == "ctseg" else 0)
    x = torch.randn(batch, channels, *CANONICAL_SHAPE)
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
        out, _ = net(x)
        out.float().sum().backward()
        step.append(time.perf_counter() - t)
    return {"params": sum(p.numel() for p in net.parameters()),
            "forward_ms_1vol": round(1000 * statistics.median(fwd), 1),
            "train_step_ms": round(1000 * statistics.median(step), 1), "batch": batch}


def accuracy(model_dir: Path, pool: Path) -> dict:
    from medsearch.models.data import load_archive
    from medsearch.models.evaluate import encode_studies, evaluate_embeddings
    from medsearch.models.registry import Encoder

    studies = load_archive(pool, cache_dir=pool / ".canonical_cache", progress=False)
    enc = Encoder(model_dir)
    m = evaluate_embeddings(enc, studies, encode_studies(enc, studies))
    return {"pool": m["pool"], "R@10": m["report_to_volume"]["en"]["R@10"],
            "nDCG@10": m["phrase_to_volume"]["en"]["nDCG@10"], "chance_R@10": m["chance"]["report_to_volume"]["R@10"],
            "chance_nDCG@10": m["chance"]["phrase_to_volume"]["nDCG@10"]}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool", type=Path, default=None, help="held-out synthetic archive (evaluation seed)")
    ap.add_argument("--model", action="append", default=[], help="ARCH=DIR of a trained model (repeatable)")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "model_compare.json")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    result: dict = {"threads": torch.get_num_threads(), "candidates": {a: cost(a, args.batch_size) for a in ARCHS}}
    if args.pool:
        for spec in args.model:
            arch, _, folder = spec.partition("=")
            result["candidates"].setdefault(arch, {})["accuracy"] = accuracy(Path(folder), args.pool)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'arch':10s} {'params':>9s} {'fwd ms':>8s} {'step ms':>8s} {'R@10':>6s} {'nDCG@10':>8s}")
    for arch, r in result["candidates"].items():
        acc = r.get("accuracy", {})
        print(f"{arch:10s} {r['params']:9d} {r['forward_ms_1vol']:8.1f} {r['train_step_ms']:8.1f} "
              f"{acc.get('R@10', float('nan')):6.3f} {acc.get('nDCG@10', float('nan')):8.3f}")
    return result


if __name__ == "__main__":
    main()

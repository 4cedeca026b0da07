"""The projection against the likelihood scorer, on one archive, with the model's own slots.

    python bench/bench_scorer.py --pool /tmp/ms/train_1202 [--model DIR]

The shipped scorer's parameters were chosen with this script on 600 studies of seed 1202 (``medsearch synth
/tmp/ms/train_1202 --studies 600 --seed 1202``: a training seed the shipped model never saw, never the
benchmark's pool), and then measured once on the pool (seed 9001).  Every row uses the same encoded slots
(the tower and detector run once): the projection (``scorer`` removed), then each likelihood scorer of the
grid (:mod:`medsearch.models.likelihood`).  Writes bench/results/scorer.json and prints a table.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from bench_ceiling import encoded_pool, pool_arguments  # noqa: E402
from medsearch.models.evaluate import evaluate_embeddings  # noqa: E402
from medsearch.models.likelihood import LikelihoodScorer  # noqa: E402

#: (beta, gamma, eps): the grid the shipped scorer was chosen from.
GRID = [(b, g, e) for b in (0.5, 1.0, 1.5) for g in (0.5, 1.0, 2.0) for e in (1e-3, 3e-3)] + [(0.75, 0.5, 3e-3),
                                                                                               (1.0, 0.25, 3e-3)]


def _row(enc, studies, attributes) -> dict:
    with torch.no_grad():
        image = enc.model.embed_image(attributes).numpy()
    r = evaluate_embeddings(enc, studies, image)
    a, b = r["report_to_volume"], r["phrase_to_volume"]
    return {"R@1": a["en"]["R@1"], "R@5": a["en"]["R@5"], "R@10": a["en"]["R@10"], "R@10 zh": a["zh"]["R@10"],
            "R@50": a["en"]["R@50"], "P@10": b["en"]["P@10"], "mAP": b["en"]["mAP"], "nDCG@10": b["en"]["nDCG@10"],
            "nDCG@10 zh": b["zh"]["nDCG@10"]}


def main(argv=None) -> dict:
    args = pool_arguments(__doc__, "scorer.json", argv)
    enc, studies, attributes = encoded_pool(args, "the scorer")
    rows = {}
    enc.model.scorer = None
    rows["projection"] = _row(enc, studies, attributes)
    for beta, gamma, eps in tqdm(GRID, desc="likelihood scorers", unit="scorer"):
        enc.model.scorer = LikelihoodScorer(beta=beta, gamma=gamma, eps=eps)
        rows[f"likelihood beta={beta} gamma={gamma} eps={eps}"] = _row(enc, studies, attributes)
    best = max((k for k in rows if k != "projection"), key=lambda k: rows[k]["R@10"] + rows[k]["nDCG@10"])
    result = {"pool": len(studies), "archive": str(args.pool), "model": str(args.model), "rows": rows,
              "best (R@10 + nDCG@10)": best}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    cols = ["R@1", "R@10", "R@10 zh", "R@50", "mAP", "nDCG@10"]
    print(f"{len(studies)} studies of {args.pool}; the same slots in every row")
    print(f"{'scorer':42s} " + " ".join(f"{c:>8s}" for c in cols))
    for name, r in rows.items():
        print(f"{name:42s} " + " ".join(f"{r[c]:8.3f}" for c in cols))
    print(f"best by R@10 + nDCG@10: {best}")
    return result


if __name__ == "__main__":
    main()

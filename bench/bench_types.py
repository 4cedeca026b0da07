"""Which finding types the ctseg image tower detects: study-level AUC per type, for one or more models.

    python bench/bench_types.py --model coarse=medsearch/models/default --model fine=/tmp/ms/fine \
        [--seed 4242] [--studies 80]

Studies are generated with an evaluation-free seed that no shipped model trained on
(4242 by default), 60 % of them with forced finding types so that every type has
positives.  Each model sees each study resampled onto its own canonical grid (its
config names it).  Per type, the score of a study is the calibrated slot presence
(max over lobes, what retrieval uses) and, beside it, the largest voxel probability
inside the lungs; the AUC is against "the study has a finding of this type".
Model-vs-model differences on the same studies are what this is for (80 studies
give AUCs to about +-0.05).

Writes bench/results/types.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from medsearch import vocab  # noqa: E402
from medsearch.models import registry  # noqa: E402
from medsearch.models.dense_data import dense_example, forced_types  # noqa: E402
from medsearch.models.image_tower_seg import HEAD_SPLIT  # noqa: E402
from medsearch.models.preprocess import HUWindows  # noqa: E402


def auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the ROC curve by ranks (ties averaged); None without both classes."""
    pos, neg = scores[labels], scores[~labels]
    if not len(pos) or not len(neg):
        return None
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


@torch.no_grad()
def study_scores(enc: registry.Encoder, hu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(presence max over lobes (T,), largest voxel probability in the lungs (T,)) of one canonical volume."""
    x = HUWindows(enc.config["windows_hu"])(torch.from_numpy(hu.astype(np.float32)))[None]
    out = enc.model.encode_image(x)
    nr, nt = HEAD_SPLIT[0], HEAD_SPLIT[1]
    maps = out["maps"][0]
    lung = torch.softmax(maps[:nr], dim=0)[0] < 0.5
    probs = torch.sigmoid(maps[nr:nr + nt])
    voxel = torch.where(lung[None], probs, torch.zeros_like(probs)).flatten(1).amax(dim=1)
    return out["presence"][0].amax(dim=1).numpy(), voxel.numpy()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", required=True, metavar="NAME=DIR", help="a ctseg model (repeatable)")
    ap.add_argument("--seed", type=int, default=4242)
    ap.add_argument("--studies", type=int, default=80)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "types.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    from medsearch.synth import generate_study

    models = {}
    for spec in args.model:
        name, _, folder = spec.partition("=")
        if not folder:
            ap.error(f"--model {spec!r}: write NAME=DIR")
        models[name] = registry.Encoder(Path(folder))
        if models[name].config["arch"] != "ctseg":
            ap.error(f"--model {spec!r} is not a ctseg model")
    types = list(vocab.FINDING_TYPES)
    present = np.zeros((args.studies, len(types)), bool)
    scores = {n: (np.zeros((args.studies, len(types))), np.zeros((args.studies, len(types)))) for n in models}
    for i in tqdm(range(args.studies), desc="studies", unit="study"):
        study = generate_study(args.seed, i, findings=forced_types(args.seed, i))
        for f in study.labels["findings"]:
            if f["type"] in types:
                present[i, types.index(f["type"])] = True
        for name, enc in models.items():
            hu = dense_example(study, enc.config["canonical_spacing_mm"], enc.config["canonical_shape"])["hu"]
            scores[name][0][i], scores[name][1][i] = study_scores(enc, hu)
    result = {"seed": args.seed, "studies": args.studies, "positives": dict(zip(types, present.sum(0).tolist())),
              "models": {n: str(Path(s.partition("=")[2])) for n, s in zip(models, args.model)}, "auc": {}}
    for name in models:
        result["auc"][name] = {t: {"presence": auc(scores[name][0][:, j], present[:, j]),
                                   "voxel_max": auc(scores[name][1][:, j], present[:, j])}
                               for j, t in enumerate(types)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    fmt = lambda v: "   -" if v is None else f"{v:.2f}"  # noqa: E731
    print(f"study-level AUC per type, {args.studies} studies of seed {args.seed} (presence / largest voxel)")
    print(f"{'type':24s} {'n':>3s} " + " ".join(f"{n:>12s}" for n in models))
    for j, t in enumerate(types):
        cells = [f"{fmt(result['auc'][n][t]['presence'])} / {fmt(result['auc'][n][t]['voxel_max'])}" for n in models]
        print(f"{t:24s} {int(present[:, j].sum()):3d} " + " ".join(f"{c:>12s}" for c in cells))
    return result


if __name__ == "__main__":
    main()

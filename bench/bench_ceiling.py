"""The ceiling of the ctseg design on the held-out pool, and what each finding type would add.

    python bench/bench_ceiling.py --pool /tmp/ms/eval_9001 [--model DIR]

The pool is the benchmark's (``medsearch synth POOL --studies 1000 --seed 9001``).  Rows, all
through the model's own projection and text side, on the same pool in the same run
(:mod:`medsearch.models.ceiling`):

- ``model``: the model's image attribute vectors, encoded from pixels (the benchmark's numbers);
- ``labels``: every study's vector from its labels, what a perfect image tower would give;
- ``+ TYPE``: the model's vectors with one type's columns from the labels: what detecting that
  type perfectly (presence per lobe, density and size) would be worth;
- ``+ all but nodule``: every type but nodule from the labels.

Beside them, protocol (b) per type for the model: which types' queries it answers badly.
Writes bench/results/ceiling.json and prints a table.
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
from medsearch.models.ceiling import label_attributes, phrase_metrics_by_type, with_types_from  # noqa: E402
from medsearch.models.data import load_archive  # noqa: E402
from medsearch.models.evaluate import evaluate_embeddings, phrase_specs  # noqa: E402
from medsearch.models.preprocess import hu_windows  # noqa: E402


@torch.no_grad()
def image_attributes(enc: registry.Encoder, studies, batch: int = 8) -> torch.Tensor:
    """(N, FULL_ATTR_DIM) the model's attribute vectors of the pool, encoded from pixels."""
    out = []
    windows = enc.config.get("windows_hu")
    for i in tqdm(range(0, len(studies), batch), desc="encode", unit="batch"):
        part = studies[i:i + batch]
        x = torch.stack([hu_windows(torch.from_numpy(s.hu.astype(np.float32)), windows) for s in part])
        nodules = [s.nodules for s in part]
        out.append(enc.encode_image_tensor(x, nodules if any(n is not None for n in nodules) else None)["attributes"])
    return torch.cat(out)


def _row(enc, studies, attributes: torch.Tensor) -> dict:
    with torch.no_grad():
        image = enc.model.embed_image(attributes).numpy().astype(np.float32)
    r = evaluate_embeddings(enc, studies, image)
    return {"R@1": r["report_to_volume"]["en"]["R@1"], "R@10": r["report_to_volume"]["en"]["R@10"],
            "R@10 zh": r["report_to_volume"]["zh"]["R@10"], "mAP": r["phrase_to_volume"]["en"]["mAP"],
            "nDCG@10": r["phrase_to_volume"]["en"]["nDCG@10"], "nDCG@10 zh": r["phrase_to_volume"]["zh"]["nDCG@10"]}


def pool_arguments(doc: str, out_name: str, argv=None) -> argparse.Namespace:
    """``--pool``, ``--model`` and ``--out`` (bench/results/``out_name`` by default) of a pool benchmark; two
    threads, as every benchmark here."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool", type=Path, required=True, help="held-out synthetic archive (evaluation seed)")
    ap.add_argument("--model", type=Path, default=registry.DEFAULT_MODEL_DIR)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / out_name)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    return ap.parse_args(argv)


def pool_studies(enc: registry.Encoder, pool: Path) -> list:
    """The pool's studies on the model's grid, with its detector's evidence (both cached beside the pool)."""
    return load_archive(pool, cache_dir=pool / ".canonical_cache", detector=enc.nodule_detector,
                        spacing_mm=enc.config["canonical_spacing_mm"], shape=enc.config["canonical_shape"],
                        workers=min(2, os.cpu_count() or 1))


def encoded_pool(args: argparse.Namespace, purpose: str) -> tuple[registry.Encoder, list, torch.Tensor]:
    """The ctseg model of ``args.model``, the studies of ``args.pool`` and their attribute vectors, encoded
    from pixels once (``purpose`` names the benchmark in the refusal of another architecture)."""
    enc = registry.Encoder(args.model)
    if enc.config["arch"] != "ctseg":
        raise SystemExit(f"{args.model} holds a {enc.config['arch']!r} model; {purpose} is measured for ctseg.")
    studies = pool_studies(enc, args.pool)
    return enc, studies, image_attributes(enc, studies)


def main(argv=None) -> dict:
    args = pool_arguments(__doc__, "ceiling.json", argv)
    enc, studies, model = encoded_pool(args, "the ceiling")
    labels = label_attributes(enc, studies)
    rows = {"model": _row(enc, studies, model), "labels": _row(enc, studies, labels)}
    for ftype in tqdm(vocab.FINDING_TYPES, desc="one type from the labels", unit="type"):
        rows[f"+ {ftype}"] = _row(enc, studies, with_types_from(model, labels, [ftype]))
    others = [t for t in vocab.FINDING_TYPES if t != "nodule"]
    rows["+ all but nodule"] = _row(enc, studies, with_types_from(model, labels, others))
    with torch.no_grad():
        image = enc.model.embed_image(model)
    result = {"pool": len(studies), "model": str(args.model), "model_version": enc.model_version, "rows": rows,
              "phrase_by_type": phrase_metrics_by_type(enc, studies, image, phrase_specs(studies))}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"pool {result['pool']} held-out studies; every row through the model's projection and text side")
    print(f"{'image attributes from':28s} {'R@1':>6s} {'R@10':>6s} {'R@10 zh':>8s} {'mAP':>6s} {'nDCG@10':>8s}")
    for name, r in rows.items():
        print(f"{name:28s} {r['R@1']:6.3f} {r['R@10']:6.3f} {r['R@10 zh']:8.3f} {r['mAP']:6.3f} {r['nDCG@10']:8.3f}")
    print("\nprotocol (b) per type, the model:")
    for ftype, m in result["phrase_by_type"].items():
        print(f"  {ftype:22s} {m['queries']:3d} queries  P@10 {m['P@10']:.3f}  nDCG@10 {m['nDCG@10']:.3f}")
    return result


if __name__ == "__main__":
    main()

"""Benchmark of the dual-tower model: retrieval quality on a held-out pool and encoding speed.

    python bench/bench_model.py --pool /tmp/ms/eval_9001 [--model DIR] [--repeats 7]

The pool is a synthetic archive generated with an evaluation seed (9000-9999,
never used in training): ``medsearch synth POOL --studies N --seed 9001``.
Volumes are encoded from pixels by the model (FP32, then INT8); labels only
build the queries and judge answers.  Speeds are medians of repeated runs, each
beside a plain forward pass of the same network measured in the same run:

- image: ``encode_volume`` (canonical resampling + windows + network + heads decoding, and
  the nodule detector when the model has one) against the bare image network on an
  already-preprocessed tensor, with PyTorch's own choice of convolution kernel; the
  encoder's oneDNN forward pass (``image_onednn_forward_ms``) and the detector's own time
  are reported beside it;
- text: ``encode_text`` (MiniLM + projection) against a bare transformers MiniLM forward pass.

With a nodule detector (``nodule.pt``), the FP32 metrics are also measured without it
(``fp32_unet_only``), on the same pool in the same run: the detector's gain.

Writes bench/results/model.json and prints a short table.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from medsearch.models import registry  # noqa: E402
from medsearch.models.data import load_archive  # noqa: E402
from medsearch.models.evaluate import encode_studies, evaluate_embeddings  # noqa: E402
from medsearch.models.preprocess import HUWindows  # noqa: E402

QUERIES = ["right lower lobe 8 mm solid nodule", "left pleural effusion", "emphysema",
           "lingula ground-glass opacity", "left upper lobe 25 mm part-solid nodule"]


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def _volume_from_pool(pool: Path):
    """One native volume of the pool (the first main series), for the speed runs."""
    from medsearch.dicom.volume import load_series

    rec = json.loads((pool / "labels.jsonl").read_text(encoding="utf-8").splitlines()[0])
    main = next(s for s in rec["series"] if s["series_uid"] == rec["main_series_uid"])
    path = pool / main["path"]
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return load_series(files)


@torch.no_grad()
def speed(enc: registry.Encoder, vol, repeats: int) -> dict:
    from medsearch.models.onednn import plain_convolutions
    from medsearch.models.preprocess import to_canonical

    canon, _ = to_canonical(vol, enc.config["canonical_spacing_mm"], enc.config["canonical_shape"])
    x = HUWindows(enc.config["windows_hu"])(torch.from_numpy(canon))[None]
    image_net = enc.model.image
    # the plain forward pass: the same network with PyTorch's own choice of convolution kernel
    plain_net = plain_convolutions(copy.deepcopy(image_net))
    tok = enc.minilm.tokenizer(["right lower lobe 8 mm solid nodule"], return_tensors="pt")
    out = {
        "image_encode_volume_ms": _median_ms(lambda: enc.encode_volume(vol), repeats),
        "image_plain_forward_ms": _median_ms(lambda: plain_net(x), repeats),
        "image_onednn_forward_ms": _median_ms(lambda: image_net(x), repeats),
        **({"image_nodule_detector_ms": _median_ms(lambda: enc.nodule_detector.detect(vol.hu, vol.spacing), repeats)}
           if enc.nodule_detector is not None else {}),
        "text_encode_ms": _median_ms(lambda: [enc.encode_text(q) for q in QUERIES], repeats) / len(QUERIES),
        "text_plain_minilm_forward_ms": _median_ms(lambda: enc.minilm.bert(**tok), repeats),
    }
    out["image_ratio_vs_plain"] = out["image_encode_volume_ms"] / out["image_plain_forward_ms"]
    out["text_ratio_vs_plain"] = out["text_encode_ms"] / out["text_plain_minilm_forward_ms"]
    return {k: round(v, 2) for k, v in out.items()}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool", type=Path, required=True, help="held-out synthetic archive (evaluation seed)")
    ap.add_argument("--model", type=Path, default=registry.DEFAULT_MODEL_DIR)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "model.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    grid = json.loads((args.model / "config.json").read_text())
    from medsearch.models.nodule_detector import NoduleDetector

    detector = NoduleDetector.load(args.model)
    studies = load_archive(args.pool, cache_dir=args.pool / ".canonical_cache", progress=detector is not None,
                           spacing_mm=grid["canonical_spacing_mm"], shape=grid["canonical_shape"],
                           detector=detector, workers=min(2, os.cpu_count() or 1))
    result = {"pool": len(studies), "threads": torch.get_num_threads(), "model": str(args.model)}
    vol = _volume_from_pool(args.pool)
    for name, int8 in (("fp32", False), ("int8", True)):
        enc = registry.Encoder(args.model, int8=int8)
        image = encode_studies(enc, studies)
        metrics = evaluate_embeddings(enc, studies, image)
        result[name] = {"metrics": metrics, "speed": speed(enc, vol, args.repeats)}
        if detector is not None and not int8:
            bare = [type(s)(s.key, s.hu, s.findings, s.report_en, s.report_zh) for s in studies]
            result["fp32_unet_only"] = {"metrics": evaluate_embeddings(enc, bare, encode_studies(enc, bare))}
    f, q = result["fp32"]["metrics"], result["int8"]["metrics"]
    result["int8_loss_points"] = round(100 * max(
        f["report_to_volume"]["en"]["R@10"] - q["report_to_volume"]["en"]["R@10"],
        f["phrase_to_volume"]["en"]["nDCG@10"] - q["phrase_to_volume"]["en"]["nDCG@10"]), 2)
    result["int8_speedup_text"] = round(result["fp32"]["speed"]["text_encode_ms"]
                                        / result["int8"]["speed"]["text_encode_ms"], 2)
    result["int8_speedup_image"] = round(result["fp32"]["speed"]["image_encode_volume_ms"]
                                         / result["int8"]["speed"]["image_encode_volume_ms"], 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    chance = result["fp32"]["metrics"]["chance"]
    print(f"pool {result['pool']} held-out studies (seed never used in training), {result['threads']} threads")
    print(f"{'':14s} {'R@10 en':>8s} {'R@10 zh':>8s} {'nDCG en':>8s} {'nDCG zh':>8s} "
          f"{'img ms':>8s} {'plain':>8s} {'txt ms':>8s} {'plain':>8s}")
    for name in ("fp32", "int8", "fp32_unet_only"):
        if name not in result:
            continue
        m, s = result[name]["metrics"], result[name].get("speed", {})
        print(f"{name:14s} {m['report_to_volume']['en']['R@10']:8.3f} {m['report_to_volume']['zh']['R@10']:8.3f} "
              f"{m['phrase_to_volume']['en']['nDCG@10']:8.3f} {m['phrase_to_volume']['zh']['nDCG@10']:8.3f} "
              + "".join(f" {s[k]:8.1f}" if k in s else f" {'':8s}" for k in (
                  "image_encode_volume_ms", "image_plain_forward_ms", "text_encode_ms",
                  "text_plain_minilm_forward_ms")))
    print(f"{'chance':14s} {chance['report_to_volume']['R@10']:8.3f} {chance['report_to_volume']['R@10']:8.3f} "
          f"{chance['phrase_to_volume']['nDCG@10']:8.3f} {chance['phrase_to_volume']['nDCG@10']:8.3f}")
    print(f"INT8: loss {result['int8_loss_points']} points, text speedup x{result['int8_speedup_text']}, "
          f"image speedup x{result['int8_speedup_image']}")
    return result


if __name__ == "__main__":
    main()

"""Web serving overhead: what HTTP, auth, audit and the WSGI server add to the library calls.

A synthetic archive (``--studies``) is ingested through the real de-identification, encoder (the
real network; seeded weights unless ``--model`` names a trained model folder) and index, then served
by ``medsearch serve``'s waitress server on a loopback port.  Measured in the same run, each against
its library baseline:

* search: ``GET /api/v1/search`` (bearer token, JSON) vs ``medsearch.search.search`` (cache off);
* slice: ``GET /api/v1/series/<s>/slices/<k>.png`` vs ``render_slice`` on the memory-mapped volume;
* thumbnail, ``/healthz`` (the floor: routing, token check, headers), and the study page
  (session, template, audit event);
* throughput of slice requests from 8 client threads (a radiologist scrolling, times eight).

    .venv/bin/python bench/bench_web.py [--studies 3] [--requests 200] [--model DIR]

Writes bench/results/web.json and prints a table (medians, p95, ratio to the baseline).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "web.json"
QUERIES = ["nodule in the right upper lobe", "左肺上叶结节", "ground-glass opacity", "no pleural effusion",
           "2 cm mass left lower lobe", "右肺下叶磨玻璃结节", "emphysema", "atelectasis right lower lobe"]


def _world(root: Path, studies: int, model: Path | None):
    import torch

    from medsearch import accounts
    from medsearch.dicom.ingest import ingest_paths
    from medsearch.instance import Instance
    from medsearch.models.dual import DualEncoder
    from medsearch.models.train import save_model
    from medsearch.synth.archive import generate_archive

    generate_archive(root / "archive", studies, 7_301, progress=True, workers=1)
    if model is None:
        torch.manual_seed(7_301)
        model = root / "model"
        save_model(DualEncoder(), model, {"note": "untrained, for the web benchmark"})
    inst = Instance.create(root / "home", env={}, settings={"model_dir": str(model), "model_int8": False,
                                                            "search_cache_size": 0})
    report = ingest_paths(inst, [root / "archive" / "dicom"], progress=True)
    print(report.summary())
    accounts.add_user(inst, "bench", "bench-password-1", "radiologist", actor="bench")
    token = accounts.create_token(inst, "bench", "radiologist", 1, actor="bench")
    return inst, token


def _stats(samples_s: list[float]) -> dict:
    ms = sorted(1000.0 * s for s in samples_s)
    return {"n": len(ms), "median_ms": round(statistics.median(ms), 3),
            "p95_ms": round(ms[min(len(ms) - 1, int(0.95 * len(ms)))], 3)}


def _time(fn, n: int, label: str) -> list[float]:
    out = []
    for i in tqdm(range(n), desc=label, leave=False):
        t0 = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - t0)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", type=int, default=3)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--model", type=Path, default=None)
    args = ap.parse_args()

    from sqlalchemy import select

    from medsearch.accounts import Principal
    from medsearch.dicom.render import render_slice
    from medsearch.search import search
    from medsearch.store.models import Series, Study, Volume
    from medsearch.web.serve import make_server

    with tempfile.TemporaryDirectory() as tmp:
        inst, token = _world(Path(tmp), args.studies, args.model)
        with inst.sessions() as s:
            rows = s.execute(select(Series.pseudonym, Study.pseudonym, Volume.shape)
                             .join(Study, Study.id == Series.study_id).join(Volume)).all()
        series = [(se, st, shape) for se, st, shape in rows]
        server, _ = make_server(inst, "127.0.0.1", 0)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        base = f"http://127.0.0.1:{server.port}"
        http = requests.Session()
        http.headers["Authorization"] = f"Bearer {token}"
        user = Principal("bench", "radiologist")
        n = args.requests

        def slice_args(i):
            se, _st, shape = series[i % len(series)]
            return se, (i * 7) % shape[0]

        vols = {se: np.load(inst.data_dir / "volumes" / f"{se}.npy", mmap_mode="r") for se, _, _ in series}
        # warm both paths (model load, first index read, imports) before timing
        search(inst, QUERIES[0], k=10, user=user)
        http.get(f"{base}/api/v1/search", params={"q": QUERIES[0]}).raise_for_status()

        cases = {
            "search": (lambda i: search(inst, QUERIES[i % len(QUERIES)], k=10, user=user),
                       lambda i: http.get(f"{base}/api/v1/search",
                                          params={"q": QUERIES[i % len(QUERIES)], "limit": 10}).raise_for_status()),
            "slice_png": (lambda i: render_slice(vols[slice_args(i)[0]], slice_args(i)[1], "lung"),
                          lambda i: http.get(f"{base}/api/v1/series/{slice_args(i)[0]}/slices/{slice_args(i)[1]}.png")
                          .raise_for_status()),
        }
        results: dict = {"studies": args.studies, "series": len(series), "requests": n, "cases": {}}
        for name, (lib, web) in cases.items():
            lib_s, web_s = _stats(_time(lib, n, f"{name} library")), _stats(_time(web, n, f"{name} http"))
            results["cases"][name] = {"library": lib_s, "http": web_s,
                                      "ratio_median": round(web_s["median_ms"] / lib_s["median_ms"], 2),
                                      "overhead_median_ms": round(web_s["median_ms"] - lib_s["median_ms"], 3)}
        results["cases"]["healthz"] = {"http": _stats(_time(lambda i: http.get(f"{base}/healthz"), n, "healthz"))}
        results["cases"]["thumbnail"] = {"http": _stats(_time(
            lambda i: http.get(f"{base}/api/v1/series/{series[i % len(series)][0]}/thumbnail.png").raise_for_status(),
            n, "thumbnail"))}
        from medsearch.web import create_app

        app = create_app({"MEDSEARCH_INSTANCE": inst})
        client = app.test_client()
        with client.session_transaction() as sess:
            now = time.time()
            sess.update(user="bench", sid="bench", csrf="bench", seen=now, started=now)
        results["cases"]["study_page_wsgi"] = {"http": _stats(_time(
            lambda i: client.get(f"/studies/{series[i % len(series)][1]}"), n, "study page"))}

        def burst(i):
            se, k = slice_args(i)
            with requests.get(f"{base}/api/v1/series/{se}/slices/{k}.png",
                              headers={"Authorization": f"Bearer {token}"}) as r:
                r.raise_for_status()

        t0 = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            list(tqdm(pool.map(burst, range(n)), total=n, desc="8 clients", leave=False))
        elapsed = time.perf_counter() - t0
        results["cases"]["slice_png_8_clients"] = {"requests_per_s": round(n / elapsed, 1)}
        server.close()
        thread.join(10)
        inst.close()

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\n{'case':<22}{'library p50':>13}{'http p50':>11}{'http p95':>11}{'ratio':>8}")
    for name, c in results["cases"].items():
        if "requests_per_s" in c:
            print(f"{name:<22}{'':>13}{c['requests_per_s']:>9.1f}/s")
            continue
        lib = f"{c['library']['median_ms']:.2f}" if "library" in c else "-"
        ratio = f"{c['ratio_median']:.2f}x" if "ratio_median" in c else "-"
        print(f"{name:<22}{lib:>13}{c['http']['median_ms']:>11.2f}{c['http']['p95_ms']:>11.2f}{ratio:>8}")
    print(f"(ms; {results['series']} series; results in {RESULTS.relative_to(ROOT.parent)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

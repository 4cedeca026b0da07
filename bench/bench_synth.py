"""Benchmark: synthetic archive generation rate (issue 3 target: 200 studies at the default size in < 2 min on 2 cores).

Runs ``generate_archive`` at the default matrix with 1 worker (the baseline) and
with all cores, on the same studies, and reports studies per second, the
median seconds per study and the speed-up.  Writes bench/results/synth.json.

    .venv/bin/python bench/bench_synth.py [--studies 200] [--baseline-studies 20]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from medsearch.synth.archive import generate_archive
from medsearch.synth.dicom_writer import write_study
from medsearch.synth.study import generate_study

RESULTS = Path(__file__).parent / "results" / "synth.json"


def per_study_seconds(n: int, matrix: int, seed: int) -> dict:
    """Median wall seconds of the in-memory study and of writing its DICOM, one process."""
    gen, write, cpu = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n):
            c0, t = time.process_time(), time.perf_counter()
            s = generate_study(seed, i, matrix)
            t1 = time.perf_counter()
            write_study(s, Path(tmp) / f"ST{i:05d}", seed)
            t2 = time.perf_counter()
            gen.append(t1 - t)
            write.append(t2 - t1)
            cpu.append(time.process_time() - c0)
    # CPU seconds do not depend on what else runs on the machine; wall seconds do.
    return {"generate_median_s": statistics.median(gen), "write_median_s": statistics.median(write),
            "cpu_median_s": statistics.median(cpu)}


def archive_rate(n: int, matrix: int, seed: int, workers: int) -> dict:
    out = Path(tempfile.mkdtemp(prefix="bench-synth-"))
    try:
        t = time.perf_counter()
        summary = generate_archive(out / "arc", n, seed, matrix, workers=workers, progress=False)
        wall = time.perf_counter() - t
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return {"studies": n, "workers": workers, "seconds": round(wall, 2), "studies_per_s": round(n / wall, 3),
            "files": summary["files"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", type=int, default=200)
    ap.add_argument("--baseline-studies", type=int, default=20)
    ap.add_argument("--matrix", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    stages = per_study_seconds(min(10, args.baseline_studies), args.matrix, args.seed)
    base = archive_rate(args.baseline_studies, args.matrix, args.seed, 1)
    full = archive_rate(args.studies, args.matrix, args.seed, cores)
    projected_200 = 200 / full["studies_per_s"]
    load = os.getloadavg()[0]
    # What 200 studies cost on otherwise idle cores, from CPU time (no contention).
    idle_200 = 200 * stages["cpu_median_s"] / cores
    result = {"matrix": args.matrix, "cores": cores, "stages": stages, "baseline_1_worker": base,
              "all_cores": full, "speedup_vs_1_worker": round(full["studies_per_s"] / base["studies_per_s"], 2),
              "seconds_for_200_studies": round(projected_200, 1), "target_seconds_for_200": 120,
              "meets_target": projected_200 < 120, "load_average_1min": round(load, 2),
              "seconds_for_200_from_cpu_time": round(idle_200, 1)}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"{'run':<22}{'studies':>8}{'workers':>8}{'seconds':>9}{'studies/s':>11}")
    for name, r in (("baseline (1 worker)", base), ("all cores", full)):
        print(f"{name:<22}{r['studies']:>8}{r['workers']:>8}{r['seconds']:>9.1f}{r['studies_per_s']:>11.2f}")
    print(f"median per study: generate {stages['generate_median_s']:.2f} s, write {stages['write_median_s']:.2f} s, "
          f"CPU {stages['cpu_median_s']:.2f} s (-> {idle_200:.0f} s for 200 on {cores} idle cores); "
          f"load average {load:.1f}")
    print(f"speed-up {result['speedup_vs_1_worker']}x; 200 studies in {projected_200:.0f} s "
          f"(target < 120 s: {'met' if result['meets_target'] else 'NOT met'})")


if __name__ == "__main__":
    main()

"""`make bench`: run every benchmark in turn and summarise.

Each benchmark writes its own JSON to bench/results/ and prints its own table
(medians, with a baseline measured in the same run).  This runner only
sequences them, so they never compete for the two cores, and prepares the
held-out evaluation pool (seed 9001, never used for training) that the model
benchmark needs.

    python bench/run_all.py            # everything (the 1M-vector index run takes a while)
    python bench/run_all.py --quick    # smaller sizes where a benchmark offers them
    python bench/run_all.py synth parse  # a subset, by name
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
POOL = HERE / "results" / "pool_9001"


#: The scorer is chosen on a training seed the shipped model never saw, never on the pool.
TUNING = HERE / "results" / "train_1202"


def _archive_args(folder: Path, seed: int, studies: int, quick: bool) -> list[str]:
    if not (folder / "labels.jsonl").exists():
        subprocess.run([sys.executable, "-m", "medsearch.cli", "synth", str(folder), "--studies",
                        str(60 if quick else studies), "--seed", str(seed)], check=True)
    return ["--pool", str(folder)]


def _pool_args(quick: bool) -> list[str]:
    return _archive_args(POOL, 9001, 1000, quick)


def _tuning_args(quick: bool) -> list[str]:
    return _archive_args(TUNING, 1202, 600, quick)


BENCHES = {
    "synth": lambda q: ["--studies", "50"] if q else [],
    "parse": lambda q: ["--repeats", "5", "--reports", "100"] if q else [],
    "ingest": lambda q: ["--studies", "3", "--repeats", "2"] if q else [],
    "model": lambda q: _pool_args(q) + (["--repeats", "3"] if q else []),
    "ceiling": lambda q: _pool_args(q),
    "detector_types": lambda q: _pool_args(q),
    "scorer": lambda q: _tuning_args(q),
    "model_compare": lambda q: ["--batch-size", "2"] if q else [],
    "index": lambda q: ["--quick"] if q else [],
    "search": lambda q: ["--series", "10000", "--studies", "12", "--skip-quality"] if q else [],
    "localisation": lambda q: ["--seeds", "70001", "--studies", "12"] if q else [],
    "scp": lambda q: ["--instances", "50", "--matrix", "256", "--repeats", "3"] if q else [],
    "web": lambda q: [],
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", metavar="NAME", help=f"benchmarks to run: {', '.join(BENCHES)} (default: all)")
    ap.add_argument("--quick", action="store_true", help="smaller sizes")
    args = ap.parse_args()
    names = args.names or list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        ap.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHES)}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    summary = []
    for name in names:
        extra = BENCHES[name](args.quick)
        print(f"\n=== bench_{name} {' '.join(extra)}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.run([sys.executable, str(HERE / f"bench_{name}.py"), *extra]).returncode
        summary.append((name, rc, time.perf_counter() - t0))
    print("\nbenchmark   status   seconds   results")
    for name, rc, secs in summary:
        print(f"{name:<11} {'ok' if rc == 0 else f'rc={rc}':<8} {secs:>7.0f}   bench/results/")
    return 0 if all(rc == 0 for _, rc, _ in summary) else 1


if __name__ == "__main__":
    sys.exit(main())

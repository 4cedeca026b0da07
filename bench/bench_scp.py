"""C-STORE throughput of the medsearch Storage SCP against a bare pynetdicom SCP, with the same storescu.

Baseline: a pynetdicom AE with the same presentation contexts whose C-STORE handler only writes
``event.encoded_dataset()`` to a file (no fsync, no validation) — pynetdicom's documented fast path.
medsearch: ``medsearch.pacs.scp.Receiver`` on a fresh instance (SQLite), which parses and validates each
dataset and makes it durable (temp file, fsync, rename, fsync dir) before acknowledging.

Both receive the same files from dcmtk's ``storescu`` (one association, sequential C-STOREs, as a PACS
router sends), alternating runs; the medians of ``--repeats`` runs are compared.  Also reported: medsearch
with ``scp_max_pdu`` at pynetdicom's default (16382), i.e. the same PDU size as the baseline; a diagnostic
row with the spool on tmpfs (fsync is free there), which isolates the cost of durability; and both receivers
fed by four storescu associations at once (``_x4`` rows, each compared with the bare SCP under the same load).

    .venv/bin/python bench/bench_scp.py [--instances 200] [--matrix 512] [--repeats 5]

Writes bench/results/scp.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

TARGET_RATIO = 0.8
PARALLEL = 4
RESULTS = Path(__file__).resolve().parent / "results" / "scp.json"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BareSCP:
    """A pynetdicom SCP that only writes the received bytes to files."""

    def __init__(self, out: Path):
        from pynetdicom import AE, evt

        from medsearch.pacs.scp import STORAGE_SOP_CLASSES, TRANSFER_SYNTAXES

        self.out = out
        ae = AE(ae_title="MEDSEARCH")
        for sop_class in STORAGE_SOP_CLASSES:
            ae.add_supported_context(sop_class, list(TRANSFER_SYNTAXES))
        self.port = _free_port()
        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self.handle)])

    def handle(self, event) -> int:
        with open(self.out / event.request.AffectedSOPInstanceUID, "wb") as f:
            f.write(event.encoded_dataset())
        return 0x0000

    def stop(self):
        self.server.shutdown()


class MedsearchSCP:
    def __init__(self, home: Path, max_pdu: int | None = None, spool_dir: Path | None = None):
        from medsearch.instance import Instance
        from medsearch.pacs.scp import Receiver

        settings = {"scp_quiet_seconds": 3600}  # sealing is not part of the transfer being timed
        if max_pdu is not None:
            settings["scp_max_pdu"] = max_pdu
        if spool_dir is not None:
            settings["spool_dir"] = str(spool_dir)
        self.inst = Instance.create(home, settings=settings)
        self.receiver = Receiver(self.inst, port=_free_port(), host="127.0.0.1").start()
        self.port = self.receiver.port

    def stop(self):
        self.receiver.stop()
        self.inst.close()


def send(port: int, files: list[Path]) -> float:
    t0 = time.perf_counter()
    result = subprocess.run(["storescu", "-aec", "MEDSEARCH", "127.0.0.1", str(port), *map(str, files)],
                            capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if result.returncode != 0:
        raise SystemExit(f"storescu failed: {result.stderr[-500:]}")
    return elapsed


def send_parallel(port: int, files: list[Path], n: int) -> float:
    """``n`` storescu processes at once, each with its own association (as multi-association routers send)."""
    t0 = time.perf_counter()
    procs = [subprocess.Popen(["storescu", "-aec", "MEDSEARCH", "127.0.0.1", str(port), *map(str, files[i::n])],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for i in range(n)]
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"storescu failed: {err[-500:]}")
    return time.perf_counter() - t0


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--instances", type=int, default=200)
    ap.add_argument("--matrix", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    if shutil.which("storescu") is None:
        raise SystemExit("storescu (dcmtk) is missing: run 'bash tests/system_deps.sh'.")
    logging.getLogger("medsearch").setLevel(logging.WARNING)
    from medsearch.pacs.sample import write_ct_series

    # On the disk the instance lives on (not /tmp, which may be tmpfs): durability is part of the cost.
    work = Path(tempfile.mkdtemp(prefix="bench-scp-", dir=Path(__file__).resolve().parent))
    shm = Path(tempfile.mkdtemp(prefix="bench-scp-", dir="/dev/shm"))
    fsync_ms = _flush_latency_ms(work)
    try:
        per_series = 100
        files: list[Path] = []
        for i in range(0, args.instances, per_series):
            files += write_ct_series(work / "src" / f"s{i}", n=min(per_series, args.instances - i), size=args.matrix)
        mb = sum(f.stat().st_size for f in files) / 2**20
        variants = {
            "bare_pynetdicom": lambda k: BareSCP(_fresh(work / f"bare{k}")),
            "medsearch": lambda k: MedsearchSCP(work / f"ms{k}", None),
            "medsearch_pdu16k": lambda k: MedsearchSCP(work / f"ms16k{k}", max_pdu=16382),
            # Diagnostic only (NOT a supported configuration): the spool on tmpfs, where fsync costs
            # nothing, separates the price of durability from the SCP's own processing.
            "diag_spool_on_tmpfs": lambda k: MedsearchSCP(work / f"mstmp{k}", spool_dir=_fresh(shm / f"spool{k}")),
        }
        # Secondary rows: the same two receivers fed by PARALLEL associations at once.
        runs = [(name, make, 1) for name, make in variants.items()] + [
            (f"{name}_x{PARALLEL}", variants[name], PARALLEL) for name in ("bare_pynetdicom", "medsearch")]
        times: dict[str, list[float]] = {name: [] for name, _, _ in runs}
        with tqdm(total=args.repeats * len(runs), desc="bench scp", unit="run") as bar:
            for k in range(args.repeats):
                for name, make, n in runs:  # alternate, so drift hits all variants alike
                    scp = make(f"{k}{name}")
                    try:
                        times[name].append(send(scp.port, files) if n == 1 else send_parallel(scp.port, files, n))
                    finally:
                        scp.stop()
                    bar.update(1)
        rates = {name: args.instances / statistics.median(t) for name, t in times.items()}
        base = rates["bare_pynetdicom"]
        base_parallel = rates[f"bare_pynetdicom_x{PARALLEL}"]
        result = {
            "instances": args.instances, "matrix": args.matrix, "megabytes": round(mb, 1), "repeats": args.repeats,
            "instances_per_s": {k: round(v, 1) for k, v in rates.items()},
            "ratio_vs_bare": {k: round(v / (base_parallel if k.endswith(f"_x{PARALLEL}") else base), 3)
                              for k, v in rates.items()},
            "seconds": {k: [round(x, 3) for x in v] for k, v in times.items()},
            "disk_flush_ms": round(fsync_ms, 2),
            "ms_per_instance": {k: round(1000 / v, 2) for k, v in rates.items()},
            "target_ratio": TARGET_RATIO,
            "meets_target": rates["medsearch"] / base >= TARGET_RATIO,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(shm, ignore_errors=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nC-STORE throughput, storescu -> SCP, {args.instances} CT instances {args.matrix}x{args.matrix} "
          f"({mb:.0f} MB), median of {args.repeats}")
    print(f"{'receiver':<24}{'inst/s':>10}{'MB/s':>10}{'ratio':>8}")
    for name, rate in rates.items():
        print(f"{name:<24}{rate:>10.1f}{rate * mb / args.instances:>10.1f}{result['ratio_vs_bare'][name]:>8.2f}")
    print(f"target: medsearch >= {TARGET_RATIO:.1f}x bare -> {'met' if result['meets_target'] else 'NOT met'}"
          f"  (one fsync on this disk: {fsync_ms:.1f} ms; a durable acknowledgement needs two: file, then directory)")
    return result


def _flush_latency_ms(folder: Path, n: int = 30) -> float:
    """Median time of write + fsync of a small file on ``folder``'s disk."""
    from medsearch.pacs.spool import fsync_dir

    samples = []
    for i in range(n):
        t0 = time.perf_counter()
        with open(folder / f".flush{i}", "wb") as f:
            f.write(b"x" * 4096)
            f.flush()
            os.fsync(f.fileno())
        samples.append(time.perf_counter() - t0)
        (folder / f".flush{i}").unlink()
    fsync_dir(folder)
    return statistics.median(samples) * 1000


def _fresh(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()

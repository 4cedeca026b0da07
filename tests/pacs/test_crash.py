"""Fault test: kill -9 the scp and the worker during a 20-study send, restart both; every acknowledged
instance is ingested, none twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from medsearch.instance import Instance
from medsearch.store.models import IngestJob, Series, Study

from .conftest import assert_no_phi, dcmtk, free_port, wait_for

MEDSEARCH = str(Path(sys.executable).parent / "medsearch")
STUDIES, SLICES = 20, 3


class Service:
    def __init__(self, home: Path, *args: str, log: Path):
        env = {**os.environ, "MEDSEARCH_HOME": str(home), "HF_HUB_OFFLINE": "1"}
        self.log = open(log, "a")
        self.proc = subprocess.Popen([MEDSEARCH, *args], env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.log.close()

    def stop(self):
        if not self.log.closed and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def _acked(storescu_output: str) -> int:
    return storescu_output.count("Received Store Response (Success)")


def _jobs(inst):
    with inst.sessions() as s:
        return dict(s.execute(select(IngestJob.status, func.count()).group_by(IngestJob.status)).all())


@pytest.mark.slow
def test_kill_9_scp_and_worker_mid_send_loses_nothing_and_ingests_nothing_twice(tmp_path, series_factory):
    home = tmp_path / "home"
    port = free_port()
    inst = Instance.create(home, settings={"scp_port": port, "scp_quiet_seconds": 1, "worker_lease_seconds": 2,
                                           "worker_backoff_seconds": 1})
    studies = [series_factory(n=SLICES, size=64) for _ in range(STUDIES)]
    first, second = [p for s in studies[:10] for p in s], [p for s in studies[10:] for p in s]
    logs = tmp_path / "services.log"
    storescu = [dcmtk("storescu"), "-v", "-aec", "MEDSEARCH", "127.0.0.1", str(port)]
    scp = Service(home, "scp", log=logs)
    worker = Service(home, "worker", log=logs)
    try:
        wait_for(lambda: subprocess.run([dcmtk("echoscu"), "-aec", "MEDSEARCH", "127.0.0.1", str(port)],
                                        capture_output=True).returncode == 0, timeout=30, what="the scp")
        # Phase 1: ten studies arrive; the worker is killed while it ingests them.
        sent = subprocess.run([*storescu, *map(str, first)], capture_output=True, text=True, timeout=60)
        assert sent.returncode == 0 and _acked(sent.stderr) == len(first), sent.stderr[-2000:]
        wait_for(lambda: _jobs(inst).get("running"), timeout=30, interval=0.005, what="the worker to start a job")
        worker.kill9()  # mid-job: the job stays 'running' until its lease runs out
        assert _jobs(inst).get("running") == 1
        # Phase 2: the other ten are being sent when the scp is killed.
        sender = subprocess.Popen([*storescu, *map(str, second)], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                  text=True)
        wait_for(lambda: len(list((home / "spool").rglob("*.dcm"))) >= len(first) // 2 + 5, timeout=30,
                 interval=0.002, what="part of the second send")
        scp.kill9()
        _, err = sender.communicate(timeout=60)
        acked_before_kill = _acked(err)
        assert 0 < acked_before_kill < len(second) or sender.returncode != 0
        # Restart both; the PACS retries the interrupted transfer, as PACS routers do.
        scp = Service(home, "scp", log=logs)
        worker = Service(home, "worker", log=logs)
        wait_for(lambda: subprocess.run([dcmtk("echoscu"), "-aec", "MEDSEARCH", "127.0.0.1", str(port)],
                                        capture_output=True).returncode == 0, timeout=30, what="the restarted scp")
        resent = subprocess.run([*storescu, *map(str, second)], capture_output=True, text=True, timeout=60)
        assert resent.returncode == 0, resent.stderr[-2000:]

        def settled():
            jobs = _jobs(inst)
            return jobs and set(jobs) == {"done"} and not list((home / "spool").rglob("*.dcm"))

        wait_for(settled, timeout=90, interval=0.25, what="every job to be done")
    finally:
        scp.stop()
        worker.stop()
    with inst.sessions() as s:
        per_series = s.execute(select(Series.n_instances)).scalars().all()
        n_studies = s.scalar(select(func.count()).select_from(Study))
    inst.close()
    assert n_studies == STUDIES
    assert sorted(per_series) == [SLICES] * STUDIES, "an instance was lost or ingested twice"
    assert_no_phi(logs.read_text())

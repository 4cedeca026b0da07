"""Fixtures for the PACS tests: free ports, a running Storage SCP, dcmtk, planted PHI canaries."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

#: Identifiers planted in every test series: none may appear in logs, job rows or spool names.
CANARY_NAME = "CANARY^SECRETNAME"
CANARY_ID = "CANARYID-4711"
CANARY_ACCESSION = "CANARYACC99"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dcmtk(tool: str) -> str:
    # pynetdicom installs Python tools with dcmtk's names (echoscu, storescu...) into the virtualenv's bin;
    # the peers under test are dcmtk's, so the virtualenv's bin is left out of the search
    venv_bin = (Path(sys.prefix) / "bin").resolve()
    dirs = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d and Path(d).resolve() != venv_bin]
    path = shutil.which(tool, path=os.pathsep.join(dirs))
    if path is None:
        pytest.fail(f"dcmtk's {tool} is not installed; run 'bash tests/system_deps.sh' (package dcmtk).",
                    pytrace=False)
    return path


def run_tool(*args, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout)


def wait_for(predicate, timeout=20.0, interval=0.1, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
def series_factory(tmp_path):
    """Write a tiny CT series with planted identifiers; returns its paths."""
    from medsearch.pacs.sample import write_ct_series

    counter = iter(range(10_000))

    def make(n=4, size=16, **kwargs) -> list[Path]:
        kwargs.setdefault("patient_name", CANARY_NAME)
        kwargs.setdefault("patient_id", CANARY_ID)
        kwargs.setdefault("accession", CANARY_ACCESSION)
        return write_ct_series(tmp_path / f"series{next(counter)}", n=n, size=size, **kwargs)

    return make


@pytest.fixture
def pacs_log(caplog):
    """All medsearch.pacs log records at INFO and above."""
    caplog.set_level(logging.INFO, logger="medsearch")
    return caplog


def assert_no_phi(text: str, uids: list[str] = ()) -> None:
    for canary in (CANARY_NAME, CANARY_ID, CANARY_ACCESSION, "SECRETNAME", *uids):
        assert canary not in text, f"identifier {canary!r} leaked"


@pytest.fixture
def make_receiver(home):
    """Start a Storage SCP on a free loopback port for an instance created with the given settings."""
    from medsearch.instance import Instance
    from medsearch.pacs.scp import Receiver

    started = []

    def make(settings: dict | None = None, quiet_seconds: float = 0.5, database_url: str | None = None):
        cfg = {"database_url": database_url, **(settings or {})}
        inst = Instance.create(home, settings=cfg)
        receiver = Receiver(inst, port=free_port(), host="127.0.0.1", quiet_seconds=quiet_seconds).start()
        started.append((receiver, inst))
        return receiver, inst

    yield make
    for receiver, inst in started:
        receiver.stop()
        inst.close()


ORTHANC = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


class OrthancPeer:
    """A real Orthanc started from a generated config on free loopback ports."""

    def __init__(self, root: Path, medsearch_port: int | None = None):
        import json

        for need, pkg in ((ORTHANC, "orthanc"), (DICOMWEB_PLUGIN, "orthanc-dicomweb")):
            if not Path(need).exists():
                pytest.fail(f"{need} is missing; run 'bash tests/system_deps.sh' (package {pkg}).", pytrace=False)
        self.http_port, self.dicom_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        storage = root / "orthanc-storage"
        storage.mkdir(parents=True)
        config = {
            "Name": "medsearch-test-orthanc", "StorageDirectory": str(storage), "IndexDirectory": str(storage),
            "HttpPort": self.http_port, "DicomPort": self.dicom_port, "DicomAet": "ORTHANC",
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "HttpServerEnabled": True,
            "DicomServerEnabled": True, "DicomCheckCalledAet": False, "StableAge": 1,
            "DicomModalities": {"medsearch": ["MEDSEARCH", "127.0.0.1", medsearch_port or 11112]},
            "Plugins": [DICOMWEB_PLUGIN],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "Ssl": False,
                         "StudiesMetadata": "Full", "SeriesMetadata": "Full"},
        }
        self.config = root / "orthanc.json"
        self.config.write_text(json.dumps(config))
        self.log = open(root / "orthanc.log", "w")
        self.proc = subprocess.Popen([ORTHANC, str(self.config)], stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(self._up, timeout=30, what="Orthanc's /system")

    def _up(self):
        import requests

        if self.proc.poll() is not None:
            raise AssertionError(f"Orthanc exited with {self.proc.returncode}; see {self.log.name}")
        try:
            return requests.get(self.url + "/system", timeout=1).ok
        except requests.ConnectionError:
            return False

    def upload(self, paths) -> list[str]:
        import requests

        ids = []
        for p in paths:
            r = requests.post(self.url + "/instances", data=Path(p).read_bytes(), timeout=10)
            r.raise_for_status()
            ids.append(r.json()["ParentStudy"])
        return sorted(set(ids))

    def stop(self):
        self.proc.kill()  # its storage is a throw-away temp folder: no need for a clean shutdown
        self.proc.wait(10)
        self.log.close()


@pytest.fixture
def orthanc_factory(tmp_path):
    peers = []

    def make(medsearch_port=None) -> OrthancPeer:
        peer = OrthancPeer(tmp_path / f"orthanc{len(peers)}", medsearch_port)
        peers.append(peer)
        return peer

    yield make
    for peer in peers:
        peer.stop()


@pytest.fixture(scope="session")
def synthetic_study(tmp_path_factory) -> Path:
    """One study of the synthetic archive (``medsearch synth``): its DICOM folder, with labels beside it."""
    import sys

    out = tmp_path_factory.mktemp("synth")
    medsearch = Path(sys.executable).parent / "medsearch"
    result = subprocess.run([str(medsearch), "synth", str(out), "--studies", "1", "--seed", "7"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    studies = sorted((out / "dicom").iterdir())
    assert len(studies) == 1
    return studies[0]


@pytest.fixture(scope="session")
def untrained_model_dir(tmp_path_factory) -> Path:
    """A model folder with untrained towers (as the search pipeline tests use): enough to encode and search."""
    import torch

    from medsearch.models.dual import DualEncoder
    from medsearch.models.reranker import RERANKER_FILE, CrossAttentionReranker, save_reranker
    from medsearch.models.train import save_model

    torch.manual_seed(0)
    model_dir = tmp_path_factory.mktemp("model")
    model = DualEncoder()
    save_model(model, model_dir, {"note": "untrained, for the PACS end-to-end test"})
    save_reranker(CrossAttentionReranker(image_dim=model.image.out_channels), model_dir / RERANKER_FILE,
                  {"keep": {"phrase": True, "report": True}})
    return model_dir

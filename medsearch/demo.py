"""``make demo``: the main job on the embedded defaults.

Generate the synthetic demo archive if it is missing, ingest it into a local
instance (SQLite, local FAISS index, the bundled model), create or reset the
demo radiologist account and print its credentials, then serve the web page on
http://127.0.0.1:8080.  Each stage runs the real CLI, so the demo exercises
exactly what an operator would run.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

ROOT = Path.cwd()
HOME = Path(os.environ.get("MEDSEARCH_HOME") or ROOT / "instance")
ARCHIVE = ROOT / "demo-archive"
DEMO_USER = "demo"
STUDIES = os.environ.get("DEMO_STUDIES", "40")  # not MEDSEARCH_*: those must be settings


def _run(args: list[str]) -> None:
    print(f"\n$ medsearch {' '.join(args)}", flush=True)
    env = {**os.environ, "MEDSEARCH_HOME": str(HOME), "HF_HUB_OFFLINE": "1"}
    rc = subprocess.run([sys.executable, "-m", "medsearch.cli", *args], env=env).returncode
    if rc != 0:
        raise SystemExit(f"\nThe demo failed at 'medsearch {args[0]}' (exit {rc}); the message above says why.")


def _demo_account() -> str:
    """Create the demo radiologist, or give it a new password when it exists (reruns)."""
    from medsearch.accounts import add_user, list_users, set_password
    from medsearch.instance import open_instance

    password = secrets.token_urlsafe(12)
    inst = open_instance(HOME)
    try:
        if any(u["name"] == DEMO_USER for u in list_users(inst)):
            set_password(inst, DEMO_USER, password, actor="demo")
        else:
            add_user(inst, DEMO_USER, password, "radiologist", actor="demo")
    finally:
        inst.close()
    return password


def main() -> int:
    print("== create the instance", flush=True)
    _run(["init"])
    if not (ARCHIVE / "labels.jsonl").exists():
        print("\n== generate the synthetic demo archive", flush=True)
        _run(["synth", str(ARCHIVE), "--studies", STUDIES, "--seed", "7"])
    print("\n== ingest it (de-identify, assemble, encode, index); a rerun stores nothing twice", flush=True)
    _run(["ingest", str(ARCHIVE)])
    print("\n== check the instance", flush=True)
    _run(["doctor"])
    password = _demo_account()
    print("\n" + "=" * 60)
    print(f"Demo radiologist account:  user '{DEMO_USER}'  password '{password}'")
    print("Open http://127.0.0.1:8080 and try '左肺下叶磨玻璃结节' or 'right lower lobe nodule 2 cm'.")
    print("=" * 60, flush=True)
    _run(["serve", "--host", "127.0.0.1", "--port", "8080"])
    return 0


if __name__ == "__main__":
    sys.exit(main())

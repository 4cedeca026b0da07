"""The ``medsearch synth`` command."""

import json

import pytest
from click.testing import CliRunner

from medsearch.cli import cli


def test_synth_writes_an_archive_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "arc"
    r = CliRunner().invoke(cli, ["synth", str(out), "--studies", "1", "--seed", "3", "--workers", "1"])
    assert r.exit_code == 0, r.output
    assert "wrote 1 studies" in r.output
    rows = (out / "labels.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(rows) == 1 and json.loads(rows[0])["series"]
    again = CliRunner().invoke(cli, ["synth", str(out), "--studies", "1"])
    assert again.exit_code == 7
    assert "already holds an archive" in again.output and "Fix:" in again.output


@pytest.mark.parametrize("args,needle", [(["--studies", "0"], "--studies must be at least 1"),
                                         (["--matrix", "300"], "Invalid value for '--matrix'")])
def test_synth_rejects_bad_options(tmp_path, args, needle):
    r = CliRunner().invoke(cli, ["synth", str(tmp_path / "x"), *args])
    assert r.exit_code != 0 and needle in r.output

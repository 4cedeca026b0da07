"""`medsearch eval` end to end: synth archive -> temporary instance (real de-identification
and encoding) -> both protocols, as JSON in the issue's schema."""

from __future__ import annotations

import json

from click.testing import CliRunner

from medsearch.cli import cli


def test_eval_cli_ingests_and_scores_a_tiny_archive(tmp_path):
    from medsearch.synth import generate_archive

    pool = tmp_path / "pool"
    generate_archive(pool, 3, seed=9002, workers=1, progress=False)
    result = CliRunner().invoke(cli, ["eval", "--archive", str(pool), "--json"])
    assert result.exit_code == 0, result.output[-2000:]
    data = json.loads(result.stdout)
    assert data["pool"] == 3
    assert set(data["report_to_volume"]) == {"en", "zh"} == set(data["phrase_to_volume"])
    assert set(data["report_to_volume"]["zh"]) == {"R@1", "R@5", "R@10", "R@50"}
    assert all(0.0 <= v <= 1.0 for lang in data["report_to_volume"].values() for v in lang.values())
    assert data["chance"]["report_to_volume"]["R@50"] == 1.0


def test_eval_cli_refuses_a_folder_without_labels(tmp_path):
    result = CliRunner().invoke(cli, ["eval", "--archive", str(tmp_path)])
    assert result.exit_code != 0
    assert "labels.jsonl" in result.output

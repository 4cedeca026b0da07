"""The scp, worker and pull commands through the CLI: thin wrappers with clear errors."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from medsearch.cli import cli
from medsearch.pacs import queue
from medsearch.pacs.spool import Spool


def run(home, *args):
    return CliRunner().invoke(cli, ["--home", str(home), *args], catch_exceptions=False)


def test_worker_once_ingests_the_queue_and_reports(sqlite_instance, series_factory):
    spool = Spool.for_instance(sqlite_instance)
    path = spool.add_sealed("abc.1", {p.name: p.read_bytes() for p in series_factory(n=3, size=32)})
    queue.enqueue(sqlite_instance, path, "scp")
    result = run(sqlite_instance.home, "worker", "--once")
    assert result.exit_code == 0, result.output
    assert "done=1" in result.output and "instances=3" in result.output
    assert spool.sealed() == []


def test_worker_retry_dead_requeues(sqlite_instance):
    queue.enqueue(sqlite_instance, "sealed/x.1", "scp")
    c = queue.claim(sqlite_instance, 60)
    queue.fail(sqlite_instance, c, "broken", max_attempts=1, backoff_seconds=0)
    result = CliRunner().invoke(cli, ["--home", str(sqlite_instance.home), "worker", "--retry-dead", "--once"])
    assert result.exit_code == 0 and "requeued 1 dead-lettered jobs" in result.output
    assert queue.dead_letters(sqlite_instance) == []


@pytest.mark.parametrize("args, code, text", [
    (["pull", "--dicomweb", "ftp://x/dicom-web"], 7, "must start with http"),
    (["pull", "--dicomweb", "http://127.0.0.1:9/dicom-web", "--since", "yesterday"], 7, "is not a date"),
    (["scp", "--ae-title", "A_TITLE_MUCH_TOO_LONG"], 2, "is not 1-16 characters"),
])
def test_bad_arguments_exit_with_the_problem_and_fix(sqlite_instance, args, code, text):
    result = CliRunner().invoke(cli, ["--home", str(sqlite_instance.home), *args])
    assert result.exit_code == code, result.output
    assert text in result.output and "Fix:" in result.output


def test_commands_without_an_instance_say_how_to_make_one(tmp_path):
    result = CliRunner().invoke(cli, ["--home", str(tmp_path / "none"), "worker", "--once"])
    assert result.exit_code == 3 and "medsearch init" in result.output


def test_worker_once_with_the_database_away_says_so(sqlite_instance):
    config = sqlite_instance.config_file
    config.write_text(config.read_text() + '\ndatabase_url = "postgresql://medsearch@127.0.0.1:9/none"\n')
    result = CliRunner().invoke(cli, ["--home", str(sqlite_instance.home), "worker", "--once"])
    assert result.exit_code == 5, result.output
    assert "database is unreachable" in result.output and "database_url" in result.output

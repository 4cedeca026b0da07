"""Fails when a setting or a CLI command is missing from docs/."""

from pathlib import Path

import click

from medsearch.cli import cli
from medsearch.settings import SETTINGS

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _commands(group: click.Group, prefix: str = ""):
    for name, cmd in group.commands.items():
        full = f"{prefix}{name}"
        yield full
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, full + " ")


def test_every_setting_is_documented():
    text = (DOCS / "configuration.md").read_text(encoding="utf-8")
    missing = [s.name for s in SETTINGS if f"`{s.name}`" not in text]
    assert not missing, f"undocumented settings in docs/configuration.md: {missing}"


def test_every_cli_command_is_documented():
    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    missing = [c for c in _commands(cli) if f"`medsearch {c}" not in text]
    assert not missing, f"undocumented commands in docs/cli.md: {missing}"


def test_readme_stays_short_and_links_docs():
    readme = (DOCS.parent / "README.md").read_text(encoding="utf-8")
    assert "make demo" in readme and "make test" in readme and "docs/" in readme
    assert len(readme.splitlines()) < 60

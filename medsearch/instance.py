"""An instance: one home directory with its config, keys, database and index.

Resources are created lazily on first use (flaskr's ``get_db`` pattern): opening
an instance reads and validates the config, and nothing else.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Any

import tomli_w

from medsearch.errors import InstanceError
from medsearch.keyring import Keyring
from medsearch.settings import Settings, load_settings

CONFIG_NAME = "config.toml"


def default_home() -> Path:
    return Path(os.environ.get("MEDSEARCH_HOME") or "instance").resolve()


class Instance:
    def __init__(self, home: Path, overrides: dict[str, Any] | None = None, env: dict[str, str] | None = None):
        self.home = Path(home).resolve()
        self.env = os.environ if env is None else env
        self.settings: Settings = load_settings(self.config_file, env=self.env, overrides=overrides)

    # -- paths
    @property
    def config_file(self) -> Path:
        return self.home / CONFIG_NAME

    def path(self, relative: str) -> Path:
        p = Path(relative)
        return p if p.is_absolute() else self.home / p

    @property
    def keys_dir(self) -> Path:
        return self.home / "keys"

    @property
    def index_dir(self) -> Path:
        return self.path(self.settings.index_dir)

    @property
    def data_dir(self) -> Path:
        return self.path(self.settings.data_dir)

    @property
    def spool_dir(self) -> Path:
        return self.path(self.settings.spool_dir)

    @property
    def database_url(self) -> str:
        return self.settings.database_url or f"sqlite:///{self.home / 'medsearch.db'}"

    # -- lazily created resources
    @cached_property
    def keyring(self) -> Keyring:
        return Keyring(self.keys_dir, self.path(self.settings.key_file), env=self.env)

    @cached_property
    def engine(self):
        from medsearch.store.db import make_engine

        return make_engine(self.database_url)

    @cached_property
    def sessions(self):
        from medsearch.store.db import make_sessionmaker

        return make_sessionmaker(self.engine)

    def track(self, event) -> int:
        """Record an audit event (the single way events leave the process)."""
        from medsearch.audit.log import track_event

        return track_event(self.sessions, self.keyring.secret("audit"), event)

    def close(self) -> None:
        if "engine" in self.__dict__:
            self.engine.dispose()

    # -- creation
    @classmethod
    def create(cls, home: Path, settings: dict[str, Any] | None = None,
               env: dict[str, str] | None = None) -> "Instance":
        """Create (or complete) an instance: config, keys, folders, migrated database.

        Idempotent: existing config values and keys are kept.
        """
        home = Path(home).resolve()
        home.mkdir(parents=True, exist_ok=True)
        config_file = home / CONFIG_NAME
        if not config_file.exists():
            body = {"medsearch": {k: v for k, v in (settings or {}).items() if v not in (None, "")}}
            tmp = config_file.with_suffix(".tmp")
            tmp.write_text(
                "# medsearch instance configuration; every setting is listed in docs/configuration.md\n"
                + tomli_w.dumps(body), encoding="utf-8")
            os.replace(tmp, config_file)
        inst = cls(home, env=env)
        Keyring.create(inst.keys_dir, inst.path(inst.settings.key_file))
        for folder in (inst.index_dir, inst.data_dir, inst.spool_dir):
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        from medsearch.store.db import upgrade

        upgrade(inst.engine)
        return inst


def open_instance(home: Path | None = None, overrides: dict[str, Any] | None = None) -> Instance:
    home = Path(home) if home else default_home()
    if not (home / CONFIG_NAME).exists():
        raise InstanceError(f"No medsearch instance at {home}.",
                            "Run 'medsearch init' (it uses $MEDSEARCH_HOME, or ./instance when unset).")
    return Instance(home, overrides=overrides)

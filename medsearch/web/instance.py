"""The instance resource: opened once per app, shared by all threads."""

from __future__ import annotations

from flask import Flask, current_app

from medsearch.instance import Instance, open_instance

_KEY = "medsearch.instance"


def instance_for(app: Flask) -> Instance:
    inst = app.extensions.get(_KEY)
    if inst is None:
        inst = app.config.get("MEDSEARCH_INSTANCE") or open_instance(app.config.get("MEDSEARCH_HOME"))
        app.extensions[_KEY] = inst
    return inst


def get_instance() -> Instance:
    return instance_for(current_app)


def init_app(app: Flask) -> None:
    app.extensions.setdefault(_KEY, None)
    if app.config.get("MEDSEARCH_INSTANCE") is not None:
        app.extensions[_KEY] = app.config["MEDSEARCH_INSTANCE"]

"""Liveness and Prometheus metrics."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from medsearch.web.instance import get_instance
from medsearch.web.metrics import collect_gauges, get_metrics
from medsearch.web.security import public, roles

bp = Blueprint("health", __name__)


@bp.route("/healthz")
@public
def healthz():
    """Liveness: the process answers.  (Readiness and deep checks: ``medsearch doctor``.)"""
    return jsonify({"status": "ok"})


@bp.route("/metrics")
@roles("admin")
def metrics():
    # Scrapers authenticate with an admin bearer token (Prometheus 'authorization'
    # config): the gauges describe the archive's size, which is not public.
    body = get_metrics().render(collect_gauges(get_instance()))
    return Response(body, content_type="text/plain; version=0.0.4; charset=utf-8")

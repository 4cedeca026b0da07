"""Prometheus metrics in the text exposition format (version 0.0.4), without a client library.

Requests are counted and timed per route *rule* (``/studies/<study>``), never
per concrete path, so that no pseudonym or query text reaches a label.  Ingest
and index gauges are read from the database at scrape time.
"""

from __future__ import annotations

import bisect
import threading
import time

from flask import Flask, current_app, g, request

_KEY = "medsearch.metrics"
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self):
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, str], int] = {}
        self.hist: dict[tuple[str, str], list] = {}  # (method, route) -> [bucket counts..., sum, count]

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            key = (method, route, str(status))
            self.requests[key] = self.requests.get(key, 0) + 1
            h = self.hist.setdefault((method, route), [0] * len(BUCKETS) + [0.0, 0])
            i = bisect.bisect_left(BUCKETS, seconds)
            if i < len(BUCKETS):
                h[i] += 1
            h[-2] += seconds
            h[-1] += 1

    def render(self, gauges: dict[str, tuple[str, dict[tuple, float]]]) -> str:
        out = ["# HELP medsearch_http_requests_total HTTP requests by method, route and status.",
               "# TYPE medsearch_http_requests_total counter"]
        with self._lock:
            for (m, r, s), n in sorted(self.requests.items()):
                out.append(f'medsearch_http_requests_total{{method="{m}",route="{_esc(r)}",status="{s}"}} {n}')
            out += ["# HELP medsearch_http_request_duration_seconds Request latency.",
                    "# TYPE medsearch_http_request_duration_seconds histogram"]
            for (m, r), h in sorted(self.hist.items()):
                labels = f'method="{m}",route="{_esc(r)}"'
                cum = 0
                for b, n in zip(BUCKETS, h):
                    cum += n
                    out.append(f'medsearch_http_request_duration_seconds_bucket{{{labels},le="{b}"}} {cum}')
                out.append(f'medsearch_http_request_duration_seconds_bucket{{{labels},le="+Inf"}} {h[-1]}')
                out.append(f"medsearch_http_request_duration_seconds_sum{{{labels}}} {h[-2]:.6f}")
                out.append(f"medsearch_http_request_duration_seconds_count{{{labels}}} {h[-1]}")
        for name, (help_text, values) in gauges.items():
            out += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
            for labels, v in sorted(values.items()):
                lab = ",".join(f'{k}="{_esc(str(val))}"' for k, val in labels)
                out.append(f"{name}{{{lab}}} {v}" if lab else f"{name} {v}")
        return "\n".join(out) + "\n"


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def collect_gauges(inst) -> dict:
    """Ingest and index gauges from the database."""
    from sqlalchemy import func, select

    from medsearch.store.models import Volume
    from medsearch.web.catalog import ingest_status

    st = ingest_status(inst)
    with inst.sessions() as s:
        vectors = s.execute(select(func.count(Volume.id)).where(Volume.vector_id.is_not(None))).scalar_one()
    return {
        "medsearch_ingest_jobs": ("Ingest jobs by status.", {(("status", k),): v for k, v in st["jobs"].items()}),
        "medsearch_volumes": ("Stored volumes by status.", {(("status", k),): v for k, v in st["volumes"].items()}),
        "medsearch_studies": ("Studies in the archive.", {(): st["studies"]}),
        "medsearch_series": ("Series in the archive.", {(): st["series"]}),
        "medsearch_index_vectors": ("Series with a vector in the index.", {(): vectors}),
        "medsearch_quarantined_files": ("Input files quarantined.", {(): st["quarantined"]}),
    }


def get_metrics() -> Metrics:
    m = current_app.extensions.get(_KEY)
    if m is None:
        m = current_app.extensions[_KEY] = Metrics()
    return m


def _start():
    g.t0 = time.perf_counter()


def _stop(resp):
    t0 = g.pop("t0", None)
    if t0 is not None:
        route = request.url_rule.rule if request.url_rule else "<unmatched>"
        get_metrics().observe(request.method, route, resp.status_code, time.perf_counter() - t0)
    return resp


def init_app(app: Flask) -> None:
    app.extensions[_KEY] = None
    app.before_request(_start)
    app.after_request(_stop)

"""The REST API under /api/v1 (bearer tokens; the page's own session also works for GETs).

Errors are JSON (``{"error", "problem", "fix"}``); lists are paginated with
``offset``/``limit`` and carry ``total`` and a ``next`` link.
"""

from __future__ import annotations

from flask import Blueprint, Response, g, jsonify, request, url_for

from medsearch.audit.events import StudyViewEvent
from medsearch.audit.log import verify_chain
from medsearch.audit.review import EventFilter, access_report, parse_time, query_events
from medsearch.errors import InputError
from medsearch.web import catalog
from medsearch.web.instance import get_instance
from medsearch.web.openapi import spec
from medsearch.web.searchform import MAX_K, check_text, parse_filters, parse_k
from medsearch.web.security import ALL_ROLES, public, roles

bp = Blueprint("api", __name__, url_prefix="/api/v1")
READ = ("radiologist", "admin", "pacs")
REVEAL = ("pacs", "admin")
REVIEW = ("compliance", "admin")
OPS = ("admin", "pacs")
MAX_UPLOAD = 512 * 2**20  # one series, held in memory only
MAX_OFFSET = 100  # offset + limit stays within the pipeline's k bound (200)


def _png(data: bytes) -> Response:
    return Response(data, mimetype="image/png")


def _page_args(args, default_limit: int, max_limit: int, max_offset: int = MAX_OFFSET) -> tuple[int, int]:
    try:
        offset = int(args.get("offset", 0))
        limit = int(args.get("limit", args.get("k", default_limit)))
    except (TypeError, ValueError):
        raise InputError("'offset' and 'limit' must be whole numbers.", "Use e.g. offset=0&limit=20.") from None
    if not 0 <= offset <= max_offset or not 1 <= limit <= max_limit:
        raise InputError(f"'offset' must be in 0..{max_offset} and 'limit' in 1..{max_limit}.",
                         "Page with offset and limit within those bounds.")
    return offset, limit


def _next(endpoint: str, offset: int, limit: int, total: int, **params) -> str | None:
    if offset + limit >= total:
        return None
    return url_for(endpoint, offset=offset + limit, limit=limit, **params)


@bp.route("/openapi.json")
@public
def openapi():
    return jsonify(spec())


@bp.route("/me")
@roles(*ALL_ROLES)
def me():
    return jsonify(g.principal.to_dict())


def _search_response(result: dict, offset: int, limit: int, endpoint: str, params: dict):
    results = result.get("results", [])
    total = result.get("total", len(results))
    body = dict(result)
    body.update(results=results[offset:offset + limit], total=total, offset=offset, limit=limit,
                next=_next(endpoint, offset, limit, min(total, len(results)), **params) if request.method == "GET"
                else None)
    return jsonify(body)


@bp.route("/search", methods=["GET", "POST"])
@roles(*READ)
def search():
    if request.method == "POST":
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise InputError("The request body must be a JSON object.",
                             'Send {"q": "...", "k": 10, "filters": {...}} with Content-Type application/json.')
        text = check_text(body.get("q") if isinstance(body.get("q"), str) else None)
        filters = parse_filters(body.get("filters") or {}) if isinstance(body.get("filters") or {}, dict) else None
        if filters is None:
            raise InputError("'filters' must be an object.", "Send filters as {\"modality\": \"CT\", ...}.")
        offset, limit = _page_args({"offset": body.get("offset", 0), "limit": body.get("k", 10)}, 10, MAX_K)
        params = {}
    else:
        text = check_text(request.args.get("q"))
        filters = parse_filters(request.args)
        offset, limit = _page_args(request.args, 10, MAX_K)
        params = {"q": text, **filters}
    parse_k(limit)
    result = catalog.run_query(get_instance(), text, offset + limit, filters, g.principal)
    return _search_response(result, offset, limit, "api.search", params)


@bp.route("/studies/<study>")
@roles(*READ)
def study(study: str):
    inst = get_instance()
    detail = catalog.study_detail(inst, study, g.principal)
    inst.track(StudyViewEvent(actor=g.principal.name, study=detail["study"], patient=detail["patient"]))
    return jsonify(detail)


@bp.route("/series/<series>")
@roles(*READ)
def series(series: str):
    return jsonify(catalog.series_detail(get_instance(), series, g.principal))


@bp.route("/series/<series>/thumbnail.png")
@roles(*READ)
def thumbnail(series: str):
    return _png(catalog.thumbnail_png(get_instance(), series, g.principal))


@bp.route("/series/<series>/slices/<int:index>.png")
@roles(*READ)
def slice_(series: str, index: int):
    window = request.args.get("window", "lung")
    size = request.args.get("size")
    max_size = int(size) if size and size.isdigit() and 32 <= int(size) <= 2048 else None
    return _png(catalog.slice_png(get_instance(), series, index, window, g.principal, max_size))


@bp.route("/series/<series>/similar")
@roles(*READ)
def similar(series: str):
    filters = parse_filters(request.args)
    offset, limit = _page_args(request.args, 10, MAX_K)
    result = catalog.run_query(get_instance(), None, offset + limit, filters, g.principal, similar_to=series)
    return _search_response(result, offset, limit, "api.similar", {"series": series, **filters})


@bp.route("/similar", methods=["POST"])
@roles(*READ)
def similar_upload():
    """"More like this" from an uploaded series (multipart/related; type=application/dicom), never stored."""
    from medsearch.web.dicomweb import boundary, parts_in_memory

    files = parts_in_memory(boundary(), MAX_UPLOAD)
    filters = parse_filters(request.args)
    offset, limit = _page_args(request.args, 10, MAX_K)
    result = catalog.run_query(get_instance(), None, offset + limit, filters, g.principal, upload=files)
    return _search_response(result, offset, limit, "api.similar_upload", filters)


@bp.route("/studies/<study>/reidentify", methods=["POST"])
@roles(*REVEAL)
def reidentify(study: str):
    body = request.get_json(silent=True)
    reason = body.get("reason") if isinstance(body, dict) and isinstance(body.get("reason"), str) else ""
    return jsonify(catalog.reveal_study(get_instance(), study, g.principal, reason))


@bp.route("/ingest/status")
@roles(*OPS)
def ingest_status():
    return jsonify(catalog.ingest_status(get_instance()))


@bp.route("/audit/events")
@roles(*REVIEW)
def audit_events():
    args = request.args
    flt = EventFilter(actor=args.get("user") or None, event_type=args.get("type") or None,
                      since=parse_time(args.get("since"), "since"), until=parse_time(args.get("until"), "until", end=True),
                      patient=args.get("patient") or None)
    offset, limit = _page_args(args, 100, 1000, 10**9)
    items, total = query_events(get_instance(), flt, limit=limit, offset=offset)
    params = {k: v for k, v in args.items() if k in ("user", "type", "since", "until", "patient")}
    return jsonify({"items": items, "total": total, "offset": offset, "limit": limit,
                    "next": _next("api.audit_events", offset, limit, total, **params)})


@bp.route("/audit/report")
@roles(*REVIEW)
def audit_report():
    """What one user did: counts, failures, studies viewed, re-identifications with reasons."""
    args = request.args
    user = (args.get("user") or "").strip()
    if not user:
        raise InputError("'user' is required.", "Pass ?user=<name>.")
    flt = EventFilter(since=parse_time(args.get("since"), "since"),
                      until=parse_time(args.get("until"), "until", end=True))
    return jsonify(access_report(get_instance(), user, flt))


@bp.route("/audit/verify")
@roles(*REVIEW)
def audit_verify():
    inst = get_instance()
    r = verify_chain(inst.sessions, inst.keyring.secret("audit"))
    return jsonify({"ok": r.ok, "checked": r.checked, "first_bad_id": r.first_bad_id, "problem": r.problem})

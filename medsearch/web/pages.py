"""The radiologists' page, the study view with break-glass, and the compliance page."""

from __future__ import annotations

import io
from urllib.parse import quote

from flask import Blueprint, Response, g, redirect, render_template, request

from medsearch.audit.events import EVENT_TYPES, StudyViewEvent
from medsearch.audit.log import verify_chain
from medsearch.audit.review import EventFilter, access_report, parse_time, query_events
from medsearch.errors import InputError, MedsearchError
from medsearch.vocab import DENSITIES, FINDING_TYPES, SITES
from medsearch.web import catalog
from medsearch.web.instance import get_instance
from medsearch.web.searchform import (MODALITIES, check_text, chips_from_parse, compose_query, parse_filters,
                                      parse_k)
from medsearch.web.security import roles

bp = Blueprint("pages", __name__)
CLINICAL = ("radiologist", "admin")
REVIEW = ("compliance", "admin")
PAGE_SIZE = 50


@bp.route("/")
@roles(*CLINICAL)
def index():
    inst = get_instance()
    args = request.args
    text = compose_query(args) or (args.get("q") or "").strip()
    similar = args.get("similar") or None
    ctx = {"q": text, "similar": similar, "filters": {}, "result": None, "chips": [], "shapes": {},
           "error": None, "vocab": {"findings": FINDING_TYPES, "sites": SITES, "densities": DENSITIES},
           "modalities": MODALITIES, "k": 20}
    if not text and not similar:
        return render_template("index.html", **ctx)
    try:
        ctx["filters"] = parse_filters(args)
        ctx["k"] = k = parse_k(args.get("k"), 20)
        if not similar:
            check_text(text)
        result = catalog.run_query(inst, text, k, ctx["filters"], g.principal, similar_to=similar)
    except MedsearchError as exc:
        if exc.http_status >= 500 and exc.http_status != 503:
            raise
        # Shown on the page with the form kept, so the user can correct and retry.
        ctx["error"] = exc
        # The parse is still shown when only the search behind it is unavailable.
        ctx["chips"] = chips_from_parse(catalog.parse_query(text)) if text and exc.http_status == 503 else []
        return render_template("index.html", **ctx), exc.http_status
    ctx["result"] = result
    ctx["chips"] = chips_from_parse(result.get("query"))
    ctx["shapes"] = catalog.series_shapes(inst, [r["series"] for r in result.get("results", []) if r.get("series")])
    return render_template("index.html", **ctx)


MAX_UPLOAD = 512 * 2**20


@bp.route("/similar", methods=["POST"])
@roles(*CLINICAL)
def similar_upload():
    """"More like this" from a DICOM series chosen in the browser: de-identified in memory, never stored."""
    inst = get_instance()
    files = request.files.getlist("series")
    ctx = {"q": "", "similar": "upload", "filters": {}, "result": None, "chips": [], "shapes": {}, "error": None,
           "vocab": {"findings": FINDING_TYPES, "sites": SITES, "densities": DENSITIES}, "modalities": MODALITIES,
           "k": 20}
    try:
        data = [f.read(MAX_UPLOAD + 1) for f in files if f.filename]
        if not data:
            raise InputError("No file was chosen.", "Choose the DICOM files of one series.")
        if sum(len(d) for d in data) > MAX_UPLOAD:
            raise InputError(f"The upload is larger than {MAX_UPLOAD // 2**20} MiB.", "Choose one series.")
        result = catalog.run_query(inst, None, 20, {}, g.principal, upload=data)
    except MedsearchError as exc:
        if exc.http_status >= 500 and exc.http_status != 503:
            raise
        ctx["error"] = exc
        return render_template("index.html", **ctx), exc.http_status
    ctx["result"] = result
    ctx["shapes"] = catalog.series_shapes(inst, [r["series"] for r in result.get("results", []) if r.get("series")])
    return render_template("index.html", **ctx)


def _int(value, default):
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


@bp.route("/studies/<study>")
@roles(*CLINICAL)
def study(study: str):
    inst = get_instance()
    detail = catalog.study_detail(inst, study, g.principal)
    inst.track(StudyViewEvent(actor=g.principal.name, study=detail["study"], patient=detail["patient"]))
    series_list = [s for s in detail["series"] if s["volume"]]
    wanted = request.args.get("series")
    current = next((s for s in series_list if s["series"] == wanted), series_list[0] if series_list else None)
    region = None
    key = None
    if current:
        key = current["key_slice"]
        region = current["region"]
        if wanted == current["series"] and request.args.get("slice") is not None:
            key = _int(request.args.get("slice"), key)
            parts = (request.args.get("region") or "").split(",")
            region = [_int(p, 0) for p in parts] if len(parts) == 4 else region
        depth = current["volume"]["shape"][0]
        key = min(max(key or 0, 0), depth - 1)
    window = request.args.get("window") if request.args.get("window") in catalog.WINDOWS else "lung"
    return render_template("study.html", study=detail, current=current, key=key, region=region, window=window,
                           windows=catalog.WINDOWS)


@bp.route("/studies/<study>/open-in-pacs", methods=["POST"])
@roles(*CLINICAL)
def open_in_pacs(study: str):
    """Break glass: decrypt the original identifiers (audited by the vault) and go to the PACS viewer."""
    inst = get_instance()
    ids = catalog.reveal_study(inst, study, g.principal, request.form.get("reason", ""))
    template = inst.settings.viewer_url_template
    try:
        url = template.format(study_uid=quote(ids["study_uid"] or "", safe=""),
                              accession=quote(ids["accession"] or "", safe=""))
    except (KeyError, IndexError, ValueError):
        raise InputError("The setting viewer_url_template is not a valid template.",
                         "Use only the placeholders {study_uid} and {accession}.") from None
    return redirect(url, code=303)


# --------------------------------------------------------------------------- compliance
def _filter_from(args) -> EventFilter:
    """The compliance filters from the query string (the page) or the form (an export)."""
    return EventFilter(actor=(args.get("user") or "").strip() or None,
                       event_type=(args.get("type") or "").strip() or None,
                       since=parse_time(args.get("since"), "since"),
                       until=parse_time(args.get("until"), "until", end=True),
                       patient=(args.get("patient") or "").strip() or None)


@bp.route("/audit")
@roles(*REVIEW)
def audit():
    inst = get_instance()
    flt = _filter_from(request.args)
    page = max(_int(request.args.get("page"), 1), 1)
    events, total = query_events(inst, flt, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE)
    reids, _ = query_events(inst, EventFilter(event_type="reidentify", actor=flt.actor, since=flt.since,
                                              until=flt.until, patient=flt.patient), limit=PAGE_SIZE)
    verify = None
    if request.args.get("verify"):
        verify = verify_chain(inst.sessions, inst.keyring.secret("audit"))
    report = access_report(inst, flt.actor, flt) if flt.actor and request.args.get("report") else None
    return render_template("audit.html", events=events, total=total, page=page, pages=max(1, -(-total // PAGE_SIZE)),
                           reids=reids, verify=verify, report=report, types=sorted(EVENT_TYPES),
                           args=request.args)


@bp.route("/audit/export", methods=["POST"])
@roles(*REVIEW)
def audit_export():
    """Download the filtered events.  A POST with the CSRF token: an export is itself an audited act,
    so another site must not be able to trigger one in a reviewer's name."""
    from medsearch.audit.export import FORMATS, export_events

    form = request.form
    fmt = form.get("format", "csv")
    if fmt not in FORMATS:
        raise InputError(f"Unknown export format '{fmt[:8]}'.", f"Use one of: {', '.join(FORMATS)}.")
    buf = io.StringIO()
    export_events(get_instance(), fmt, buf, _filter_from(form), actor=g.principal.name)
    ext, mime = {"csv": ("csv", "text/csv"), "json": ("json", "application/json"),
                 "atna": ("xml", "application/xml")}[fmt]
    return Response(buf.getvalue(), mimetype=mime,
                    headers={"Content-Disposition": f'attachment; filename="medsearch-audit.{ext}"'})

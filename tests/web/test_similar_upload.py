""""More like this" from an uploaded series: the API (multipart/related) and the page (a file form);
the series is de-identified in memory and never stored."""

from __future__ import annotations

import io
import json

import pytest
from sqlalchemy import func, select

from medsearch.store.models import AuditEvent, Series

BOUNDARY = "upload-boundary"


@pytest.fixture(scope="module")
def world_app(world):
    from medsearch.web import create_app

    return create_app({"MEDSEARCH_INSTANCE": world.inst, "TESTING": True})


@pytest.fixture(scope="module")
def series_files(world):
    folder = sorted((world.archive / "dicom").iterdir())[0]
    main = max(folder.iterdir(), key=lambda p: len(list(p.iterdir())))  # the main series, not the scout
    return [p.read_bytes() for p in sorted(main.iterdir())]


def _post_files(client, csrf, files):
    # Encoded in memory here: the test client's own encoder spools big bodies to unclosed temp files.
    from werkzeug.datastructures import FileStorage, MultiDict
    from werkzeug.test import encode_multipart

    values = MultiDict([("csrf_token", csrf)] + [("series", FileStorage(io.BytesIO(f), f"IM{i:05d}.dcm"))
                                                 for i, f in enumerate(files)])
    boundary, body = encode_multipart(values)
    return client.post("/similar", data=body, content_type=f"multipart/form-data; boundary={boundary}")


def _counts(inst):
    with inst.sessions() as s:
        series = s.execute(select(func.count(Series.id))).scalar_one()
    files = sum(1 for p in inst.data_dir.rglob("*") if p.is_file())
    return series, files


def _last_search(inst):
    with inst.sessions() as s:
        row = s.execute(select(AuditEvent).where(AuditEvent.event_type == "search")
                        .order_by(AuditEvent.id.desc()).limit(1)).scalar_one()
    return row.actor, json.loads(row.payload)


def test_api_upload_finds_similar_studies_and_stores_nothing(world, world_app, series_files):
    from medsearch import accounts

    token = accounts.create_token(world.inst, "upload-pacs", "pacs", 1)
    before = _counts(world.inst)
    body = b"".join(f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + f + b"\r\n"
                    for f in series_files) + f"--{BOUNDARY}--\r\n".encode()
    resp = world_app.test_client().post(
        "/api/v1/similar?limit=3", data=body,
        headers={"Authorization": f"Bearer {token}",
                 "Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'})
    assert resp.status_code == 200, resp.get_data(as_text=True)[:300]
    out = resp.get_json()
    assert out["query"]["similar_to"] == {"upload": len(series_files)} and 1 <= len(out["results"]) <= 3
    assert _counts(world.inst) == before, "an uploaded series must not be stored"
    actor, payload = _last_search(world.inst)
    assert actor == "upload-pacs" and payload["query"].startswith("similar:upload")


def test_page_upload_renders_results(world, world_app, series_files, login):
    client = world_app.test_client()
    token = login(client, "radiologist")
    before = _counts(world.inst)
    resp = _post_files(client, token, series_files)
    html = resp.get_data(as_text=True)
    assert resp.status_code == 200 and "the uploaded series" in html and 'class="card"' in html
    assert _counts(world.inst) == before


@pytest.mark.parametrize("files, status, problem", [
    ([], 400, "No file was chosen"),
    ([b"not dicom at all"], 400, ""),
])
def test_page_upload_refuses_bad_input(world_app, login, files, status, problem):
    client = world_app.test_client()
    token = login(client, "radiologist")
    resp = _post_files(client, token, files)
    assert resp.status_code == status and problem in resp.get_data(as_text=True)
    assert 'id="search-error"' in resp.get_data(as_text=True)

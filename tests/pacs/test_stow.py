"""STOW-RS through the dicomweb-client package against medsearch's web app, served over real HTTP."""

from __future__ import annotations

import threading

import pydicom
import pytest
import requests
from sqlalchemy import select

from medsearch.store.models import Series

from .conftest import CANARY_NAME


@pytest.fixture
def web(sqlite_instance):
    from medsearch.accounts import create_token
    from medsearch.web.serve import make_server

    server, scheme = make_server(sqlite_instance, "127.0.0.1", 0)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    token = create_token(sqlite_instance, "pacs-router", "pacs", 1, actor="test")
    yield f"{scheme}://127.0.0.1:{server.port}", token
    server.close()
    thread.join(1)  # waitress may linger in its poll loop; the thread is a daemon


def _client(url, token):
    from dicomweb_client.api import DICOMwebClient

    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    return DICOMwebClient(url=url + "/dicomweb", session=session)


def test_stow_rs_with_dicomweb_client_ingests_the_study(web, sqlite_instance, series_factory):
    url, token = web
    datasets = [pydicom.dcmread(p) for p in series_factory(n=4, size=32)]
    response = _client(url, token).store_instances(datasets)
    referenced = response.get("ReferencedSOPSequence", [])
    assert {str(item.ReferencedSOPInstanceUID) for item in referenced} == {str(d.SOPInstanceUID) for d in datasets}
    assert "FailedSOPSequence" not in response
    with sqlite_instance.sessions() as s:
        rows = s.execute(select(Series.n_instances, Series.description)).all()
    assert [r.n_instances for r in rows] == [4]
    assert CANARY_NAME not in str(rows)


def test_stow_rs_without_a_token_is_refused(web, series_factory):
    from requests.exceptions import HTTPError

    url, _ = web
    datasets = [pydicom.dcmread(p) for p in series_factory(n=1, size=32)]
    with pytest.raises(HTTPError) as err:
        _client(url, "not-a-token").store_instances(datasets)
    assert err.value.response.status_code == 401

"""Orthanc as the PACS: it forwards studies to the SCP (REST /modalities/{id}/store) and serves DICOMweb for pull."""

from __future__ import annotations

import json

import pydicom
import pytest
import requests
from sqlalchemy import select

from medsearch.pacs.worker import run_worker
from medsearch.store.models import IngestJob, Series

from .conftest import assert_no_phi, wait_for


def _jobs(inst):
    with inst.sessions() as s:
        return s.execute(select(IngestJob.spool_path, IngestJob.source, IngestJob.status)).all()


def test_orthanc_forwards_a_study_over_dimse(make_receiver, orthanc_factory, series_factory, pacs_log):
    receiver, inst = make_receiver({"scp_allowed_callers": ["ORTHANC@127.0.0.1"]}, quiet_seconds=0.5)
    orthanc = orthanc_factory(medsearch_port=receiver.port)
    series = series_factory(n=4, size=32)
    study = orthanc.upload(series)
    assert len(study) == 1
    echo = requests.post(f"{orthanc.url}/modalities/medsearch/echo", data="{}", timeout=10)
    assert echo.ok
    r = requests.post(f"{orthanc.url}/modalities/medsearch/store",
                      data=json.dumps({"Resources": study, "Synchronous": True}), timeout=30)
    assert r.ok, r.text
    assert r.json()["InstancesCount"] == 4 and r.json()["FailedInstancesCount"] == 0
    jobs = wait_for(lambda: _jobs(inst), timeout=10, what="the forwarded series to be queued")
    spooled = receiver.spool.files(jobs[0].spool_path)
    assert {pydicom.dcmread(p).SOPInstanceUID for p in spooled} == {pydicom.dcmread(p).SOPInstanceUID for p in series}
    report = run_worker(inst, once=True)
    assert (report.done, report.instances) == (1, 4), report.errors
    with inst.sessions() as s:
        assert s.execute(select(Series.n_instances, Series.modality)).all() == [(4, "CT")]
    assert_no_phi(pacs_log.text)


def test_orthanc_is_refused_when_not_an_allowed_caller(make_receiver, orthanc_factory, series_factory):
    receiver, inst = make_receiver({"scp_allowed_callers": ["PACS1"]})
    orthanc = orthanc_factory(medsearch_port=receiver.port)
    study = orthanc.upload(series_factory(n=1))
    r = requests.post(f"{orthanc.url}/modalities/medsearch/store",
                      data=json.dumps({"Resources": study, "Synchronous": True}), timeout=30)
    assert not r.ok
    assert not list(inst.spool_dir.rglob("*.dcm"))

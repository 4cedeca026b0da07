"""The deploy/ recipes stay consistent with the code: settings exist, units are hardened, compose is complete."""

from __future__ import annotations

import configparser
import json
from pathlib import Path

import pytest

from medsearch.settings import load_settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
HARDENING = {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateTmp": "yes", "CapabilityBoundingSet": "",
             "ReadWritePaths": "/var/lib/medsearch", "ProtectHome": "yes", "PrivateDevices": "yes"}


def test_sample_config_is_valid():
    settings = load_settings(DEPLOY / "config.toml", env={})
    assert settings.scp_ae_title == "MEDSEARCH" and settings.web_behind_tls_proxy is True


def test_there_is_a_unit_per_process():
    assert [u.stem for u in UNITS] == ["medsearch-scp", "medsearch-web", "medsearch-worker"]


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.stem)
def test_units_are_hardened_and_run_unprivileged(unit):
    parser = configparser.ConfigParser(strict=False, interpolation=None, allow_no_value=True)
    parser.optionxform = str
    parser.read_string(unit.read_text())
    service = parser["Service"]
    for key, value in HARDENING.items():
        assert service.get(key) == value, f"{unit.name}: {key}"
    assert service["User"] == "medsearch" and service["UMask"] == "0077"
    command = unit.stem.removeprefix("medsearch-").replace("web", "serve")
    assert f"medsearch {command}" in service["ExecStart"]


def test_compose_has_every_service_and_nginx_has_tls():
    compose = (DEPLOY / "docker-compose.yml").read_text()
    for service in ("postgres:", "web:", "scp:", "worker:", "nginx:", "orthanc:"):
        assert f"\n  {service}" in compose
    nginx = (DEPLOY / "nginx" / "medsearch.conf").read_text()
    assert "listen 443 ssl" in nginx and "ssl_protocols TLSv1.2 TLSv1.3" in nginx
    assert json.loads((DEPLOY / "orthanc" / "orthanc.json").read_text())["DicomModalities"]["medsearch"][0] == \
        "MEDSEARCH"

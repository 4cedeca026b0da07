"""Settings declared as data.

Each :class:`Setting` has a name, a default, a type and help text.  Values are
layered: the defaults, then the instance's ``config.toml``, then
``MEDSEARCH_<NAME>`` environment variables.  An unknown key or a value of the
wrong type stops start-up with a hint, so that a typo never silently falls back
to a default (a mistyped ``deid_retain_device_identity`` must not leak data).

``docs/configuration.md`` documents every setting; a test enforces it.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medsearch.errors import ConfigError

ENV_PREFIX = "MEDSEARCH_"
#: Environment variables with the prefix that are not settings.
NON_SETTING_ENV = {"MEDSEARCH_HOME", "MEDSEARCH_MASTER_KEY", "MEDSEARCH_USER"}


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    help: str
    type: type = str
    #: For list settings, the type of each item.
    item_type: type = str
    #: Allowed values, where the setting is an enumeration.
    choices: tuple = ()


SETTINGS: tuple[Setting, ...] = (
    # -- storage
    Setting("database_url", "", "SQLAlchemy URL of the database. Empty means SQLite at <home>/medsearch.db. "
            "The form postgresql://user@host:port/db selects PostgreSQL."),
    Setting("index_dir", "index", "Folder of the encrypted vector index, relative to the instance home."),
    Setting("data_dir", "data", "Folder of de-identified volumes and rendered slices, relative to the instance home."),
    Setting("key_file", "keys/master.key", "Master key file (mode 0600), relative to the instance home. "
            "MEDSEARCH_MASTER_KEY, when set, overrides it."),
    # -- logging
    Setting("log_level", "INFO", "Logging level.", choices=("DEBUG", "INFO", "WARNING", "ERROR")),
    Setting("log_format", "text", "Log line format.", choices=("text", "json")),
    # -- de-identification (PS3.15 Annex E options)
    Setting("deid_retain_dates", True, "Retain Longitudinal Temporal Information with Modified Dates: shift "
            "dates by a keyed per-patient offset so intervals are kept.", bool),
    Setting("deid_retain_patient_characteristics", False, "Retain Patient Characteristics: sex, and age "
            "capped at 90+.", bool),
    Setting("deid_clean_descriptors", True, "Clean Descriptors: scrub free-text descriptions.", bool),
    Setting("deid_quarantine_burned_in", True, "Clean Pixel Data: quarantine series flagged with burned-in "
            "annotation and secondary captures instead of ingesting them.", bool),
    Setting("deid_retain_device_identity", False, "Retain Device Identity.", bool),
    Setting("deid_safe_private_tags", [], "Private tags kept under the Retain Safe Private option, as "
            "'gggg,eeee@Creator' strings.", list),
    Setting("uid_root", "", "UID root for new UIDs. Empty means the 2.25 (UUID-derived) form.") ,
    # -- ingest
    Setting("ingest_modalities", ["CT", "MR"], "Modalities that ingest accepts; others are rejected.", list),
    Setting("ingest_workers", 1, "Worker processes that de-identify and assemble series in parallel during "
            "'medsearch ingest' (1: in-process; 0: one per core, at most 4). Small ingests run in-process.", int),
    # -- model and index
    Setting("model_dir", "", "Folder of a trained model. Empty means the model bundled with medsearch."),
    Setting("model_int8", False, "Run the towers' linear layers with INT8 dynamic quantization on the CPU "
            "(text about 2x faster; costs the shipped model 1.5 points of R@10, see docs/model.md).", bool),
    Setting("index_kind", "auto", "Vector index structure.", choices=("auto", "flat", "ivf", "ivfsq", "hnsw", "ivfpq")),
    Setting("index_flat_threshold", 20000, "Below this many vectors, 'auto' uses an exact flat index.", int),
    Setting("index_memory_budget_mb", 4096, "Memory budget for the index; 'auto' compresses (IVF-SQ8, then IVF-PQ) above it.", int),
    Setting("index_target_recall", 0.97, "Recall@10 against exact search that the approximate index's search "
            "effort (IVF nprobe, HNSW efSearch) is tuned to when it is built.", float),
    Setting("index_backend", "faiss", "Index backend.", choices=("faiss", "milvus")),
    Setting("milvus_uri", "", "Milvus URI for the milvus backend (a file path selects milvus-lite)."),
    # -- terminology
    Setting("terminology_dir", "", "Folder of the core terminology (TOML concept files). Empty means the "
            "terminology/ folder of the medsearch source tree, or the copy an installed wheel puts under "
            "<prefix>/share/medsearch/terminology."),
    Setting("terminology_imports", [], "TOML files or folders written by 'medsearch terms import-snomed' / "
            "'import-radlex', layered over the core terminology.", list),
    # -- search
    Setting("search_candidates", 1000, "Candidates taken from the ANN index before reranking.", int),
    Setting("search_cache_size", 256, "Entries in the hot-query cache.", int),
    Setting("search_cache_ttl_seconds", 300, "Lifetime of a hot-query cache entry.", int),
    Setting("search_threads", 1, "torch threads for query-time inference (text tower, reranker); 0 leaves "
            "torch's default. One is fastest per query; the server runs queries in parallel.", int),
    Setting("restricted_patients", [], "Patient pseudonyms restricted by policy (VIP, staff); their studies "
            "never appear in search results.", list),
    # -- web
    Setting("web_host", "127.0.0.1", "Address the web server binds."),
    Setting("web_port", 8080, "Port the web server binds.", int),
    Setting("web_threads", 8, "Worker threads of the WSGI server.", int),
    Setting("tls_cert", "", "PEM certificate for HTTPS. Empty: plain HTTP (put nginx with TLS in front)."),
    Setting("tls_key", "", "PEM private key for HTTPS."),
    Setting("web_behind_tls_proxy", False, "The server sits behind a TLS-terminating proxy (deploy/nginx): trust "
            "its X-Forwarded-* headers and mark session cookies Secure.", bool),
    Setting("session_idle_minutes", 30, "Idle time after which a web session ends.", int),
    Setting("login_max_failures", 5, "Failed logins before a lockout.", int),
    Setting("login_lockout_minutes", 15, "Length of a login lockout.", int),
    Setting("token_days", 90, "Default lifetime of an API token, in days.", int),
    Setting("viewer_url_template", "http://pacs.local/viewer?StudyInstanceUID={study_uid}&AccessionNumber={accession}",
            "Where 'Open in PACS' redirects; {study_uid} and {accession} are filled in."),
    Setting("syslog_address", "", "host:port of an RFC 5424 syslog collector (TLS) for audit events. Empty: off."),
    Setting("syslog_ca_file", "", "PEM CA bundle that signs the syslog collector's certificate. Empty: system CAs."),
    Setting("login_rate_per_minute", 10, "Login attempts allowed per client address per minute.", int),
    # -- PACS
    Setting("scp_ae_title", "MEDSEARCH", "AE title of the Storage SCP."),
    Setting("scp_port", 11112, "Port of the Storage SCP.", int),
    Setting("scp_allowed_callers", [], "Calling AE titles allowed to send, optionally AE@host. Empty: any.", list),
    Setting("scp_quiet_seconds", 10, "Seconds without new instances after which a series is complete.", int),
    Setting("spool_dir", "spool", "Folder where received instances are spooled, relative to the instance home."),
    Setting("worker_max_attempts", 5, "Attempts before an ingest job goes to the dead-letter list.", int),
    Setting("worker_backoff_seconds", 30, "Delay before the first retry of a failed ingest job; it doubles "
            "with each further attempt (capped at one hour).", int),
    Setting("worker_lease_seconds", 120, "A claimed ingest job whose worker sent no heartbeat for this long "
            "(the worker died) is claimed again.", int),
    Setting("scp_tls_cert", "", "PEM certificate of the Storage SCP. With scp_tls_key set, the SCP speaks "
            "DICOM over TLS only (PS3.15 Annex B)."),
    Setting("scp_tls_key", "", "PEM private key of the Storage SCP's certificate."),
    Setting("scp_tls_ca", "", "PEM CA bundle: when set, senders must present a client certificate it signs."),
    Setting("scp_max_pdu", 262144, "Largest PDU the Storage SCP receives, in bytes (0: unlimited). Larger PDUs "
            "mean fewer round trips per instance.", int),
)

BY_NAME = {s.name: s for s in SETTINGS}


def _hint(name: str) -> str:
    close = difflib.get_close_matches(name, BY_NAME, n=1)
    return f"Did you mean '{close[0]}'?" if close else "See docs/configuration.md for the list of settings."


def _coerce(setting: Setting, value: Any, source: str) -> Any:
    """Check a value from TOML (typed) or the environment (a string)."""
    want = setting.type
    from_env = isinstance(value, str) and source.startswith("environment")
    try:
        if want is bool:
            if from_env:
                low = value.strip().lower()
                if low not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                    raise ValueError
                value = low in ("1", "true", "yes", "on")
            elif not isinstance(value, bool):
                raise ValueError
        elif want is int:
            if from_env:
                value = int(value)
            elif isinstance(value, bool) or not isinstance(value, int):
                raise ValueError
        elif want is float:
            if from_env:
                value = float(value)
            elif isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError
            value = float(value)
        elif want is list:
            if from_env:
                value = [v.strip() for v in value.split(",") if v.strip()]
            elif not isinstance(value, list) or not all(isinstance(v, setting.item_type) for v in value):
                raise ValueError
        elif want is str:
            if not isinstance(value, str):
                raise ValueError
    except ValueError:
        raise ConfigError(
            f"Setting '{setting.name}' from {source} must be of type {want.__name__}.",
            f"Set it to a {want.__name__} value, e.g. {setting.default!r}.",
        ) from None
    if setting.choices and value not in setting.choices:
        raise ConfigError(
            f"Setting '{setting.name}' from {source} must be one of {', '.join(setting.choices)}.",
            f"Pick one of those values (default {setting.default!r}).",
        )
    return value


class Settings:
    """Resolved, validated settings.  Attribute access: ``settings.web_port``."""

    def __init__(self, values: dict[str, Any], sources: dict[str, str]):
        self._values = values
        self.sources = sources

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None

    def as_dict(self) -> dict[str, Any]:
        return dict(self._values)


def validate(values: dict[str, Any], source: str) -> dict[str, Any]:
    out = {}
    for key, value in values.items():
        if key not in BY_NAME:
            raise ConfigError(f"Unknown setting '{key}' in {source}.", _hint(key))
        out[key] = _coerce(BY_NAME[key], value, source)
    return out


def load_settings(config_file: Path | None = None, env: dict[str, str] | None = None,
                  overrides: dict[str, Any] | None = None) -> Settings:
    """Defaults, then ``config_file`` (TOML), then ``MEDSEARCH_*`` variables, then ``overrides``."""
    env = os.environ if env is None else env
    values = {s.name: s.default for s in SETTINGS}
    sources = {s.name: "default" for s in SETTINGS}
    if config_file is not None and config_file.exists():
        try:
            data = tomllib.loads(config_file.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"The config file {config_file} is not valid TOML ({exc}).",
                              "Correct the syntax; docs/configuration.md shows an example.") from None
        data = data.get("medsearch", data)
        for key, value in validate(data, f"config file {config_file}").items():
            values[key] = value
            sources[key] = str(config_file)
    env_values = {}
    for key, value in env.items():
        if key.startswith(ENV_PREFIX) and key not in NON_SETTING_ENV:
            name = key[len(ENV_PREFIX):].lower()
            if name not in BY_NAME:
                raise ConfigError(f"Unknown setting in environment variable {key}.",
                                  _hint(name) + f" Or unset {key}.")
            env_values[name] = value
    for name, value in env_values.items():
        values[name] = _coerce(BY_NAME[name], value, f"environment variable {ENV_PREFIX}{name.upper()}")
        sources[name] = "environment"
    if overrides:
        for key, value in validate(overrides, "overrides").items():
            values[key] = value
            sources[key] = "override"
    return Settings(values, sources)

import pytest

from medsearch.errors import ConfigError
from medsearch.settings import BY_NAME, SETTINGS, load_settings


def test_defaults_without_config(tmp_path):
    s = load_settings(tmp_path / "missing.toml", env={})
    for setting in SETTINGS:
        assert getattr(s, setting.name) == setting.default


def test_layering_file_then_env(tmp_path):
    cfg = tmp_path / "config.toml"
    cfg.write_text('[medsearch]\nweb_port = 9000\nlog_format = "json"\n')
    s = load_settings(cfg, env={"MEDSEARCH_WEB_PORT": "9100"})
    assert s.web_port == 9100 and s.sources["web_port"] == "environment"
    assert s.log_format == "json" and s.sources["log_format"] == str(cfg)


@pytest.mark.parametrize("body, fragment", [
    ('web_prot = 9000', "Did you mean 'web_port'"),
    ('web_port = "9000"', "must be of type int"),
    ('deid_retain_dates = "yes"', "must be of type bool"),
    ('log_format = "xml"', "must be one of text, json"),
    ('ingest_modalities = "CT"', "must be of type list"),
    ('web_port = [', "not valid TOML"),
])
def test_bad_config_file_is_rejected_with_hint(tmp_path, body, fragment):
    cfg = tmp_path / "config.toml"
    cfg.write_text(body + "\n")
    with pytest.raises(ConfigError) as err:
        load_settings(cfg, env={})
    assert fragment in str(err.value)
    assert "Fix:" in str(err.value) or "Did you mean" in str(err.value)


@pytest.mark.parametrize("env, fragment", [
    ({"MEDSEARCH_WEB_PROT": "1"}, "Did you mean 'web_port'"),
    ({"MEDSEARCH_WEB_PORT": "eighty"}, "must be of type int"),
    ({"MEDSEARCH_MODEL_INT8": "maybe"}, "must be of type bool"),
])
def test_bad_environment_is_rejected(tmp_path, env, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_settings(None, env=env)


def test_env_types_are_parsed():
    s = load_settings(None, env={"MEDSEARCH_MODEL_INT8": "on", "MEDSEARCH_INGEST_MODALITIES": "CT, MR,PT",
                                 "MEDSEARCH_DATABASE_URL": "postgresql://u@h:5432/db"})
    assert s.model_int8 is True
    assert s.ingest_modalities == ["CT", "MR", "PT"]
    assert s.database_url == "postgresql://u@h:5432/db"


def test_non_setting_env_vars_are_allowed():
    s = load_settings(None, env={"MEDSEARCH_HOME": "/x", "MEDSEARCH_MASTER_KEY": "abc"})
    assert s.web_port == BY_NAME["web_port"].default


def test_every_setting_has_help_and_a_default_of_its_type():
    for s in SETTINGS:
        assert s.help.strip(), s.name
        assert isinstance(s.default, s.type), s.name

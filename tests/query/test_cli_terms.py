import json
from pathlib import Path

from click.testing import CliRunner

from medsearch.cli import cli

FIX = Path(__file__).with_name("fixtures")


def run(args, home):
    return CliRunner().invoke(cli, ["--home", str(home), *args], catch_exceptions=False)


def test_terms_parse_json(tmp_path):
    result = run(["terms", "parse", "LLL 磨玻璃结节 2cm, 无胸腔积液", "--json"], tmp_path)
    assert result.exit_code == 0, result.output
    d = json.loads(result.output)
    assert d["canonical"] == "left lower lobe 20 mm ground-glass nodule, no pleural effusion"
    assert [f["concept"]["term"] for f in d["findings"]] == ["nodule", "pleural effusion"]


def test_terms_parse_text(tmp_path):
    result = run(["terms", "parse", "no pneumothorax, RLL nodule with air bronchograms"], tmp_path)
    assert result.exit_code == 0
    assert "NOT pneumothorax" in result.output and "unmatched: air, bronchograms" in result.output


def test_terms_parse_uses_the_instance_terminology_setting(tmp_path):
    (tmp_path / "config.toml").write_text(f'[medsearch]\nterminology_dir = "{tmp_path / "none"}"\n', encoding="utf-8")
    result = run(["terms", "parse", "GGO"], tmp_path)
    assert result.exit_code == 2 and "terminology_dir" in result.output


def test_terms_import_then_parse_with_the_layer(tmp_path):
    out = tmp_path / "layers" / "snomed.toml"
    result = run(["terms", "import-snomed", str(FIX / "snomed"), "--out", str(out), "--json"], tmp_path)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["concepts"] == 4
    (tmp_path / "config.toml").write_text(f'[medsearch]\nterminology_imports = ["{out}"]\n', encoding="utf-8")
    d = json.loads(run(["terms", "parse", "lone nodulus", "--json"], tmp_path).output)
    assert d["findings"][0]["concept"]["term"] == "nodule"
    result = run(["terms", "import-radlex", str(FIX / "radlex.csv"), "--out", str(tmp_path / "r.toml")], tmp_path)
    assert result.exit_code == 0 and "RadLex: 3 cross-referenced concepts" in result.output

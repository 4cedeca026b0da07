"""SNOMED CT RF2 and RadLex CSV importers, on small files in those formats (tests/query/fixtures)."""

import shutil
import tomllib
from pathlib import Path

import pytest

from medsearch.errors import ConfigError, InputError
from medsearch.query.importers.radlex import import_radlex
from medsearch.query.importers.snomed import import_snomed
from medsearch.query.parser import Parser
from medsearch.query.terminology import load_terminology

FIX = Path(__file__).with_name("fixtures")


@pytest.fixture(scope="module")
def core():
    return load_terminology()


@pytest.fixture(scope="module")
def snomed_layer(tmp_path_factory, core):
    out = tmp_path_factory.mktemp("sct") / "snomed.toml"
    return import_snomed(FIX / "snomed", core, out), out


def test_snomed_counts_and_checks_cross_references(snomed_layer, core):
    result, out = snomed_layer
    assert result.matched == 5  # nodule, mass, pleural effusion, right lower lobe, right lung
    assert "ms:pneumothorax=36118008" in result.inactive
    assert "ms:emphysema=87433001" in result.missing
    assert result.concepts == 4  # two nodule subtypes (depth 2), an effusion subtype, a part of the RLL
    data = tomllib.loads(out.read_text(encoding="utf-8"))
    ext = {e["concept"]: e for e in data["extend"]}
    assert "Fluid in pleural cavity" in ext["ms:pleural-effusion"]["en"]
    assert "胸膜腔液体潴留" in ext["ms:pleural-effusion"]["zh_hans"]
    assert "Old nodule name" not in ext["ms:nodule"]["en"]  # inactive description
    concepts = {c["id"]: c for c in data["concept"]}
    assert concepts["sct:900000101"]["term"] == "Lone nodulus"  # the preferred synonym of the language refset
    assert concepts["sct:900000102"]["is_a"] == ["sct:900000101"]
    assert concepts["sct:900000103"]["part_of"] == ["ms:right-lower-lobe"]
    assert "sct:900000105" not in concepts  # inactive


def test_snomed_layer_parses_and_rolls_up(snomed_layer, core):
    _, out = snomed_layer
    term = load_terminology(imports=[out])
    assert term.skipped_imports >= 1  # "Effusion" stays the core's
    parser = Parser(term)
    (f,) = parser.parse("tiny lone nodulus in the right basal pyramid").findings
    assert (f.concept.term, f.site.term, f.laterality) == ("nodule", "right lower lobe", "right")
    (g,) = parser.parse("fluid in pleural cavity").findings
    assert g.concept.term == "pleural effusion"
    assert parser.parse("effusion").findings[0].concept.term == "pleural effusion"


def test_snomed_depth_limits_descendants(tmp_path, core):
    result = import_snomed(FIX / "snomed", core, tmp_path / "d1.toml", depth=1)
    assert result.concepts == 3


def test_radlex(tmp_path, core):
    out = tmp_path / "radlex.toml"
    result = import_radlex(FIX / "radlex.csv", core, out)
    assert result.matched == 3 and result.concepts == 2
    assert "ms:mass=RID3874" in result.missing
    term = load_terminology(imports=[out])
    parser = Parser(term)
    (f,) = parser.parse("satellite nodulus, right basal zone").findings
    assert (f.concept.term, f.site.term) == ("nodule", "right lower lobe")
    assert parser.parse("old nodulus").findings == []  # obsolete


def _broken_release(tmp_path, name, mutate):
    dst = tmp_path / "rel"
    shutil.copytree(FIX / "snomed", dst)
    (path,) = dst.rglob(name)
    mutate(path)
    return dst


@pytest.mark.parametrize("name,mutate,problem", [
    ("sct2_Concept_*", lambda p: p.unlink(), "No RF2 concept snapshot"),
    ("sct2_Relationship_*", lambda p: p.unlink(), "No RF2 relationship snapshot"),
    ("sct2_Concept_*", lambda p: p.write_text("id,active\n1,1\n", encoding="utf-8"), "RF2 header"),
    ("sct2_Description_*", lambda p: p.write_text(p.read_text(encoding="utf-8") + "1\t2\n", encoding="utf-8"),
     "fields"),
    ("sct2_Description_*", lambda p: p.write_bytes(p.read_bytes() + b"\xff\xfe\n"), "not UTF-8"),
])
def test_snomed_bad_release(tmp_path, core, name, mutate, problem):
    rel = _broken_release(tmp_path, name, mutate)
    with pytest.raises(InputError) as err:
        import_snomed(rel, core, tmp_path / "out.toml")
    assert problem in err.value.problem and err.value.fix


@pytest.mark.parametrize("content,problem", [("Label,Other\nx,y\n", "lacks the column"),
                                             (b"Class ID,Preferred Label\n\xff,x\n", "not UTF-8")])
def test_radlex_bad_csv(tmp_path, core, content, problem):
    path = tmp_path / "r.csv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(InputError) as err:
        import_radlex(path, core, tmp_path / "out.toml")
    assert problem in err.value.problem


def test_missing_inputs(tmp_path, core):
    with pytest.raises(InputError, match="does not exist"):
        import_snomed(tmp_path / "none", core, tmp_path / "o.toml")
    with pytest.raises(InputError, match="does not exist"):
        import_radlex(tmp_path / "none.csv", core, tmp_path / "o.toml")


def test_layer_with_unknown_extend_target_is_refused(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[extend]]\nconcept = "ms:nope"\nen = ["x"]\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="unknown concept"):
        load_terminology(imports=[bad])

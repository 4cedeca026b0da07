"""The terminology data: coverage the issue asks for, agreement with medsearch/vocab.py, validation."""

import shutil
from pathlib import Path

import pytest

from medsearch import vocab
from medsearch.errors import ConfigError
from medsearch.query.terminology import AXES, BUNDLED_DIR, bundled_dir, load_terminology

REQUIRED_FINDINGS = ("nodule", "mass", "ground-glass opacity", "consolidation", "pleural effusion", "pneumothorax",
                     "emphysema", "atelectasis", "cavity", "calcification", "bronchiectasis", "lymphadenopathy",
                     "pericardial effusion", "fracture")
REQUIRED_ANATOMY = ("lung", "right lung", "left lung", *vocab.LOBES, "lingula", "pleura", "hilum", "mediastinum",
                    "heart", "liver dome", "rib")


@pytest.fixture(scope="module")
def term():
    return load_terminology()


def test_bundled_folder_is_the_repository_terminology():
    assert BUNDLED_DIR == Path(__file__).resolve().parents[2] / "terminology"
    assert (BUNDLED_DIR / "README.md").exists()


def test_without_a_source_tree_the_terminology_is_the_installed_copy(tmp_path):
    # an installed wheel has no <repo>/terminology; its data-files put the folder under the prefix
    assert bundled_dir(tmp_path / "no-source-tree", prefix=str(tmp_path)) == \
        tmp_path / "share" / "medsearch" / "terminology"
    assert bundled_dir(BUNDLED_DIR, prefix=str(tmp_path)) == BUNDLED_DIR


@pytest.mark.slow
def test_the_wheel_ships_the_terminology_where_bundled_dir_looks(tmp_path):
    import subprocess
    import sys
    import zipfile

    # build from a copy, so that the build leaves nothing in the checkout
    root = Path(__file__).resolve().parents[2]
    src = tmp_path / "src"
    for name in ("medsearch", "terminology"):
        shutil.copytree(root / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "dist"), str(src)], check=True, capture_output=True, timeout=300)
    wheel = next((tmp_path / "dist").glob("medsearch-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {Path(n).name for n in names if "/data/share/medsearch/terminology/" in n}
    assert shipped == {p.name for p in BUNDLED_DIR.iterdir() if p.suffix in (".toml", ".md")}


def test_preferred_terms_are_the_vocabulary(term):
    findings = {c.term for c in term.concepts.values() if c.kind == "finding"}
    anatomy = {c.term for c in term.concepts.values() if c.kind == "anatomy"}
    assert set(vocab.FINDING_TYPES) | {"calcification"} <= findings
    assert set(REQUIRED_FINDINGS) <= findings
    assert set(vocab.SITES) <= anatomy
    assert set(REQUIRED_ANATOMY) <= anatomy


def test_eighteen_bronchopulmonary_segments(term):
    segs = [c for c in term.concepts.values() if c.kind == "anatomy" and "segment of" in c.term]
    assert len(segs) == 18
    right = [c for c in segs if c.laterality == "right"]
    assert len(right) == 10
    lobes = {term.concepts[c.part_of[0]].term for c in segs}
    assert lobes == set(vocab.LOBES) | {"lingula"}
    assert all(term.within(c.id, term.by_term[c.laterality + " lung"].id) for c in segs)


def test_every_qualifier_value_has_terms_in_both_languages(term):
    have = {(q.axis, q.value) for q in term.qualifiers.values() if q.en and q.zh_hans and q.zh_hant}
    assert have == {(axis, v) for axis, values in AXES.items() for v in values}


def test_every_concept_has_chinese_in_both_scripts(term):
    for c in term.concepts.values():
        assert c.zh_hans and len(c.zh_hans) == len(c.zh_hant), c.id
        assert c.en, c.id


@pytest.mark.parametrize("term_name,abbr", [("right upper lobe", "RUL"), ("left lower lobe", "LLL"),
                                            ("ground-glass opacity", "GGO"), ("pneumothorax", "PTX")])
def test_abbreviations(term, term_name, abbr):
    assert abbr in term.by_term[term_name].en


def test_site_hierarchy_agrees_with_vocab(term):
    for a in vocab.SITES:
        for b in vocab.SITES:
            assert term.within(term.by_term[a].id, term.by_term[b].id) == vocab.site_within(a, b), (a, b)
    for site, side in vocab.LOBE_SIDE.items():
        assert term.laterality_of(term.by_term[site].id) == side
    for child, parent in vocab.PARENT_SITE.items():
        c = term.by_term[child]
        assert term.by_term[parent].id in c.part_of


def test_right_lung_contains_its_lobes_and_segments(term):
    right = term.by_term["right lung"].id
    inside = [c.term for c in term.concepts.values() if term.within(c.id, right) and c.id != right]
    assert {"right upper lobe", "right middle lobe", "right lower lobe"} <= set(inside)
    assert not any(t.startswith("left") for t in inside)
    assert term.sided[(term.by_term["lower lobe"].id, "right")] == term.by_term["right lower lobe"].id


def test_cross_references_are_plausible(term):
    for c in term.concepts.values():
        assert c.snomed == "" or c.snomed.isdigit(), c.id
        assert c.radlex == "" or c.radlex.startswith("RID"), c.id


# ------------------------------------------------------------------ validation
def _copy(tmp_path: Path) -> Path:
    dst = tmp_path / "terminology"
    shutil.copytree(BUNDLED_DIR, dst)
    return dst


BROKEN = {
    "duplicate id": ('[[concept]]\nid = "ms:nodule"\nkind = "finding"\nterm = "x"\nen = ["x"]\n', "duplicate ID"),
    "dangling link": ('[[concept]]\nid = "ms:x"\nkind = "anatomy"\nterm = "x"\nis_a = ["ms:nope"]\n', "unknown concept"),
    "bad qualifier": ('[[qualifier]]\nid = "ms:q-x"\naxis = "density"\nvalue = "fluffy"\n', "fluffy"),
    "clash": ('[[concept]]\nid = "ms:x"\nkind = "finding"\nterm = "x"\nen = ["GGO"]\n', "more than one thing"),
    "cue clash": ('[stopwords]\nen = ["nodule"]\n', "also terms"),
    "bad kind": ('[[concept]]\nid = "ms:x"\nkind = "thing"\nterm = "x"\n', "kind"),
    "unknown field": ('[[concept]]\nid = "ms:x"\nkind = "finding"\nterm = "x"\nsnomedct = "1"\n', "unknown field"),
    "not toml": ('[[concept]\n', "not valid"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_terminology_is_refused_with_a_fix(tmp_path, case):
    text, problem = BROKEN[case]
    folder = _copy(tmp_path)
    (folder / "zz_extra.toml").write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_terminology(folder)
    assert problem in err.value.problem and err.value.fix


def test_missing_folder_names_the_setting(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_terminology(tmp_path / "nowhere")
    assert "terminology_dir" in err.value.fix


def test_empty_folder_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="no .toml"):
        load_terminology(tmp_path)


def test_environment_override_selects_another_terminology(tmp_path, monkeypatch):
    from medsearch.query import parse

    folder = _copy(tmp_path)
    text = (folder / "findings.toml").read_text(encoding="utf-8")
    (folder / "findings.toml").write_text(text.replace('en = ["pneumothorax",', 'en = ["zzq air leak test",'),
                                          encoding="utf-8")
    assert parse("zzq air leak test").findings == []
    monkeypatch.setenv("MEDSEARCH_TERMINOLOGY_DIR", str(folder))
    assert parse("zzq air leak test").findings[0].concept.term == "pneumothorax"
    monkeypatch.setenv("MEDSEARCH_TERMINOLOGY_DIR", str(tmp_path / "missing"))
    with pytest.raises(ConfigError):
        parse("GGO")

"""The concept map: concepts, qualifiers and cue words, loaded from TOML files.

The core terminology is the ``terminology/`` folder of the source tree (or the
folder named by the ``terminology_dir`` setting); files written by the SNOMED CT
and RadLex importers are layered on top (``terminology_imports``).  Core files
are validated strictly: a duplicate ID, a dangling link, an unknown qualifier
value or a surface form that means two things stops loading with the file and
the fix.  Imported files may only add: where they clash with the core, the core
wins and the clash is counted (:attr:`Terminology.skipped_imports`).
"""

from __future__ import annotations

import os
import sys
import tomllib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from medsearch import vocab
from medsearch.errors import ConfigError
from medsearch.query.normalize import normalize

#: Where a wheel installs the shipped terminology (pyproject.toml's data-files), under the environment's prefix.
INSTALLED_SUBDIR = ("share", "medsearch", "terminology")


def bundled_dir(source: Path | None = None, prefix: str | None = None) -> Path:
    """The shipped terminology: ``<repo>/terminology`` in a source checkout (and its editable install), else
    the copy a wheel installs at ``<prefix>/share/medsearch/terminology``."""
    source = source if source is not None else Path(__file__).resolve().parents[2] / "terminology"
    if source.is_dir():
        return source
    return Path(prefix if prefix is not None else sys.prefix).joinpath(*INSTALLED_SUBDIR)


#: The terminology shipped with medsearch (see :func:`bundled_dir`).
BUNDLED_DIR = bundled_dir()

AXES: dict[str, tuple[str, ...]] = {
    "laterality": vocab.LATERALITIES, "density": vocab.DENSITIES, "shape": vocab.SHAPES,
    "count": vocab.COUNTS, "change": vocab.CHANGES,
}
CUE_ROLES = ("negation_pre", "negation_post", "scope_break", "conjunction", "link_back", "distribution", "unmodelled", "stopwords")
KINDS = ("finding", "anatomy")


@dataclass(frozen=True)
class Variant:
    """Surface forms that name a concept *and* fix some qualifiers ("GGN")."""

    surfaces: tuple[str, ...]
    qualifiers: tuple[tuple[str, str], ...]


@dataclass
class Concept:
    id: str
    kind: str
    term: str
    plural: str = ""
    en: list[str] = field(default_factory=list)
    zh_hans: list[str] = field(default_factory=list)
    zh_hant: list[str] = field(default_factory=list)
    snomed: str = ""
    radlex: str = ""
    is_a: list[str] = field(default_factory=list)
    part_of: list[str] = field(default_factory=list)
    laterality: str = ""
    countable: bool = False
    as_density: str = ""
    default_site: str = ""
    variants: list[Variant] = field(default_factory=list)
    #: False for concepts added by an importer; parses roll those up to a core ancestor.
    core: bool = True
    source: str = ""

    @property
    def surfaces(self) -> list[str]:
        # An imported concept's preferred term may clash with the core; the importer
        # lists it under ``en`` as well, where clashes are dropped.
        head = [self.term] if self.core else []
        return [*head, *self.en, *self.zh_hans, *self.zh_hant]


@dataclass
class Qualifier:
    id: str
    axis: str
    value: str
    en: list[str] = field(default_factory=list)
    zh_hans: list[str] = field(default_factory=list)
    zh_hant: list[str] = field(default_factory=list)
    snomed: str = ""
    radlex: str = ""
    source: str = ""

    @property
    def surfaces(self) -> list[str]:
        return [*self.en, *self.zh_hans, *self.zh_hant]


@dataclass
class Terminology:
    concepts: dict[str, Concept]
    qualifiers: dict[str, Qualifier]
    #: normalised surface form -> cue roles
    cues: dict[str, frozenset[str]]
    sources: tuple[Path, ...] = ()
    skipped_imports: int = 0

    # ---------------------------------------------------------------- lookups
    def get(self, concept_id: str) -> Concept:
        return self.concepts[concept_id]

    @cached_property
    def by_term(self) -> dict[str, Concept]:
        return {c.term: c for c in self.concepts.values() if c.core}

    def find(self, id_or_term: str) -> Concept | None:
        return self.concepts.get(id_or_term) or self.by_term.get(id_or_term)

    def parents(self, concept_id: str) -> list[str]:
        c = self.concepts[concept_id]
        return [*c.is_a, *c.part_of]

    @cached_property
    def _ancestors(self) -> dict[str, frozenset[str]]:
        memo: dict[str, frozenset[str]] = {}

        def walk(cid: str, seen: tuple[str, ...]) -> frozenset[str]:
            if cid in memo:
                return memo[cid]
            out = {cid}
            for p in self.parents(cid):
                if p not in seen:
                    out |= walk(p, seen + (p,))
            memo[cid] = frozenset(out)
            return memo[cid]

        return {cid: walk(cid, (cid,)) for cid in self.concepts}

    def ancestors(self, concept_id: str) -> frozenset[str]:
        """The concept and everything it is a kind of or part of (transitively)."""
        return self._ancestors[concept_id]

    def within(self, concept_id: str, query_id: str) -> bool:
        return query_id in self._ancestors.get(concept_id, ())

    @cached_property
    def sided(self) -> dict[tuple[str, str], str]:
        """(unsided concept id, laterality) -> the sided concept: (lower lobe, right) -> right lower lobe."""
        out = {}
        for c in self.concepts.values():
            if c.laterality and c.core:
                for p in c.is_a:
                    out[(p, c.laterality)] = c.id
        return out

    def core_of(self, concept_id: str) -> str:
        """The concept itself if core, else its nearest core ancestor (breadth first)."""
        frontier = [concept_id]
        seen = set()
        while frontier:
            nxt = []
            for cid in frontier:
                if cid in seen or cid not in self.concepts:
                    continue
                seen.add(cid)
                if self.concepts[cid].core:
                    return cid
                nxt.extend(self.parents(cid))
            frontier = nxt
        return concept_id

    def laterality_of(self, concept_id: str) -> str:
        """The laterality a site implies: its own, else that of a sided ancestor."""
        for cid in [concept_id, *sorted(self.ancestors(concept_id) - {concept_id})]:
            lat = self.concepts[cid].laterality
            if lat:
                return lat
        return ""


# ------------------------------------------------------------------- loading
def _bad(path: Path, problem: str, fix: str) -> ConfigError:
    return ConfigError(f"Terminology file {path}: {problem}", fix)


def _strings(path: Path, table: dict, key: str) -> list[str]:
    value = table.get(key, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _bad(path, f"'{key}' of {table.get('id', '?')} must be a list of strings.",
                   f'Write it as {key} = ["...", "..."].')
    return value


def _variant(path: Path, cid: str, table: dict) -> Variant:
    quals = []
    for key, value in table.items():
        if key in ("en", "zh_hans", "zh_hant"):
            continue
        if key not in AXES or value not in AXES[key]:
            raise _bad(path, f"variant of {cid} has {key} = {value!r}, which is not a qualifier value.",
                       "Use one of: " + "; ".join(f"{a}: {', '.join(v)}" for a, v in AXES.items()) + ".")
        quals.append((key, value))
    surfaces = tuple(_strings(path, table, "en") + _strings(path, table, "zh_hans") + _strings(path, table, "zh_hant"))
    return Variant(surfaces, tuple(quals))


def _read(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise _bad(path, f"not valid UTF-8 TOML ({exc}).", "Correct the syntax; terminology/README.md shows the format.") from None


def _concept(path: Path, t: dict, core: bool) -> Concept:
    for key in ("id", "kind", "term"):
        if not isinstance(t.get(key), str) or not t[key]:
            raise _bad(path, f"a [[concept]] lacks '{key}'.", "Every concept needs id, kind and term.")
    if t["kind"] not in KINDS:
        raise _bad(path, f"concept {t['id']} has kind {t['kind']!r}.", f"Use one of: {', '.join(KINDS)}.")
    lat = t.get("laterality", "")
    if lat and lat not in vocab.LATERALITIES:
        raise _bad(path, f"concept {t['id']} has laterality {lat!r}.", "Use left, right or bilateral.")
    dens = t.get("as_density", "")
    if dens and dens not in vocab.DENSITIES:
        raise _bad(path, f"concept {t['id']} has as_density {dens!r}.", f"Use one of: {', '.join(vocab.DENSITIES)}.")
    known = {"id", "kind", "term", "plural", "en", "zh_hans", "zh_hant", "snomed", "radlex", "is_a", "part_of",
             "laterality", "countable", "as_density", "default_site", "variant"}
    unknown = sorted(set(t) - known)
    if unknown:
        raise _bad(path, f"concept {t['id']} has unknown field(s) {', '.join(unknown)}.",
                   f"Known fields: {', '.join(sorted(known))}.")
    return Concept(
        id=t["id"], kind=t["kind"], term=t["term"], plural=t.get("plural", ""),
        en=_strings(path, t, "en"), zh_hans=_strings(path, t, "zh_hans"), zh_hant=_strings(path, t, "zh_hant"),
        snomed=str(t.get("snomed", "")), radlex=str(t.get("radlex", "")),
        is_a=_strings(path, t, "is_a"), part_of=_strings(path, t, "part_of"), laterality=lat,
        countable=bool(t.get("countable", False)), as_density=dens, default_site=t.get("default_site", ""),
        variants=[_variant(path, t["id"], v) for v in t.get("variant", [])], core=core, source=path.name,
    )


def _qualifier(path: Path, t: dict) -> Qualifier:
    axis, value = t.get("axis"), t.get("value")
    if axis not in AXES or value not in AXES[axis]:
        raise _bad(path, f"qualifier {t.get('id', '?')} has axis {axis!r} / value {value!r}.",
                   "Use an axis and value of medsearch/vocab.py: " + "; ".join(f"{a}: {', '.join(v)}" for a, v in AXES.items()) + ".")
    return Qualifier(id=t["id"], axis=axis, value=value, en=_strings(path, t, "en"), zh_hans=_strings(path, t, "zh_hans"),
                     zh_hant=_strings(path, t, "zh_hant"), snomed=str(t.get("snomed", "")),
                     radlex=str(t.get("radlex", "")), source=path.name)


def _toml_files(path: Path, what: str) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(path.rglob("*.toml"))
    raise ConfigError(f"The {what} {path} does not exist.",
                      "Point the terminology_dir / terminology_imports settings (or MEDSEARCH_TERMINOLOGY_DIR) "
                      "at the terminology/ folder of the medsearch source, or at files written by "
                      "'medsearch terms import-snomed' / 'import-radlex'.")


def load_terminology(core_dir: Path | None = None, imports: list[Path] | tuple[Path, ...] = ()) -> Terminology:
    """Load and validate the core terminology, then layer imported files on top."""
    core_dir = Path(core_dir) if core_dir else BUNDLED_DIR
    concepts: dict[str, Concept] = {}
    qualifiers: dict[str, Qualifier] = {}
    cues: dict[str, set[str]] = {}
    files = _toml_files(core_dir, "terminology folder")
    if not files:
        raise ConfigError(f"The terminology folder {core_dir} holds no .toml files.",
                          "Point terminology_dir at the terminology/ folder of the medsearch source.")
    for path in files:
        data = _read(path)
        for t in data.get("concept", []):
            c = _concept(path, t, core=True)
            if c.id in concepts or c.id in qualifiers:
                raise _bad(path, f"duplicate ID {c.id}.", "IDs are unique and stable: pick a new one.")
            concepts[c.id] = c
        for t in data.get("qualifier", []):
            q = _qualifier(path, t)
            if q.id in qualifiers or q.id in concepts:
                raise _bad(path, f"duplicate ID {q.id}.", "IDs are unique and stable: pick a new one.")
            qualifiers[q.id] = q
        for role in CUE_ROLES:
            for lang in ("en", "zh_hans", "zh_hant"):
                for s in data.get(role, {}).get(lang, []):
                    cues.setdefault(normalize(s), set()).add(role)
    for c in concepts.values():
        for link in [*c.is_a, *c.part_of, *([c.default_site] if c.default_site else [])]:
            if link not in concepts:
                raise ConfigError(f"Terminology: concept {c.id} ({c.source}) links to unknown concept {link}.",
                                  "Fix the ID in is_a / part_of / default_site, or add the concept.")
    term = Terminology(concepts, qualifiers, {k: frozenset(v) for k, v in cues.items()}, tuple(files))
    _check_surfaces(term)
    skipped = 0
    for item in imports:
        for path in _toml_files(Path(item), "terminology import"):
            skipped += _layer(term, path)
    term.skipped_imports = skipped
    return term


def surface_meanings(term: Terminology) -> dict[str, set[tuple]]:
    """normalised surface -> the meanings it has (concept, variant or qualifier)."""
    out: dict[str, set[tuple]] = {}
    for c in term.concepts.values():
        for s in c.surfaces:
            out.setdefault(normalize(s), set()).add(("concept", c.id, ()))
        for v in c.variants:
            for s in v.surfaces:
                out.setdefault(normalize(s), set()).add(("concept", c.id, v.qualifiers))
    for q in term.qualifiers.values():
        for s in q.surfaces:
            out.setdefault(normalize(s), set()).add(("qualifier", q.axis, q.value))
    return out


def _check_surfaces(term: Terminology) -> None:
    meanings = surface_meanings(term)
    clashes = sorted(s for s, m in meanings.items() if len(m) > 1)
    if clashes:
        raise ConfigError(f"Terminology: these surface forms mean more than one thing: {', '.join(clashes[:10])}.",
                          "Keep each synonym under one concept, variant or qualifier.")
    cue_clashes = sorted(s for s in term.cues if s in meanings)
    if cue_clashes:
        raise ConfigError(f"Terminology: these cue words are also terms: {', '.join(cue_clashes[:10])}.",
                          "Remove them from cues.toml or from the concept.")


def _layer(term: Terminology, path: Path) -> int:
    """Add an imported file's concepts and synonyms; return how many clashing surfaces were skipped."""
    data = _read(path)
    taken = surface_meanings(term)
    skipped = 0
    new = []
    for t in data.get("concept", []):
        c = _concept(path, t, core=False)
        if c.id in term.concepts:
            continue  # a core concept: its core definition wins
        new.append(c)
        term.concepts[c.id] = c
    for t in data.get("extend", []):
        target = term.concepts.get(t.get("concept", ""))
        if target is None:
            raise _bad(path, f"[[extend]] names unknown concept {t.get('concept')!r}.",
                       "Re-run the importer against this terminology.")
        for lang in ("en", "zh_hans", "zh_hant"):
            for s in _strings(path, t, lang):
                n = normalize(s)
                if n in taken or n in term.cues:
                    skipped += ("concept", target.id, ()) not in taken.get(n, ())
                    continue
                getattr(target, lang).append(s)
                taken[n] = {("concept", target.id, ())}
    for c in new:
        for link in [*c.is_a, *c.part_of]:
            if link not in term.concepts:
                raise _bad(path, f"imported concept {c.id} links to unknown concept {link}.",
                           "Re-run the importer against this terminology.")
        for lang in ("en", "zh_hans", "zh_hant"):
            keep = []
            for s in getattr(c, lang):
                n = normalize(s)
                if n in taken or n in term.cues:
                    skipped += ("concept", c.id, ()) not in taken.get(n, ())
                    continue
                keep.append(s)
                taken[n] = {("concept", c.id, ())}
            setattr(c, lang, keep)
    term.__dict__.pop("_ancestors", None)
    term.__dict__.pop("by_term", None)
    return skipped


# ------------------------------------------------------------------ settings
def configured_paths(settings=None) -> tuple[Path, tuple[Path, ...]]:
    """(core folder, import paths) from settings, else from MEDSEARCH_TERMINOLOGY_* variables."""
    if settings is None:
        from medsearch.settings import load_settings

        env = {k: v for k, v in os.environ.items() if k in ("MEDSEARCH_TERMINOLOGY_DIR", "MEDSEARCH_TERMINOLOGY_IMPORTS")}
        settings = load_settings(env=env)
    core = Path(settings.terminology_dir) if settings.terminology_dir else BUNDLED_DIR
    return core, tuple(Path(p) for p in settings.terminology_imports)

"""The query parser: normalise, correct typos, find sizes, match terms, assemble findings."""

from __future__ import annotations

import os
import re
import threading
from functools import lru_cache
from pathlib import Path

from medsearch.errors import InputError
from medsearch.query.assemble import Tok, assemble
from medsearch.query.canonical import phrase
from medsearch.query.lexicon import Lexicon, Match
from medsearch.query.model import ParsedQuery
from medsearch.query.normalize import has_cjk, is_cjk, normalize
from medsearch.query.sizes import find_sizes
from medsearch.query.terminology import Terminology, configured_paths, load_terminology
from medsearch.query.typos import TypoCorrector

#: Longer input is refused: a query or one report, not a document dump.
MAX_CHARS = 20000

_SENTENCE_END = re.compile(r"(?<!\d)\.|\.(?!\d)|[;:!?。；！？\n]")
_COMMA = re.compile(r"[,，]")
_NUMBER = re.compile(r"(?<![\d.])(\d+)(?![\d.])\s*(?:枚|个|個|处|處)?")
_LATIN_WORD = re.compile(r"[a-z][a-z'/]*")
# Between "钙化" and "结节" only these may stand for "钙化" to act as the density.
_ADJ_GAP = re.compile(r"[\s的性]*")


class Parser:
    """Parses English, Chinese and mixed radiology text.  Build once; :meth:`parse` is thread-safe."""

    def __init__(self, term: Terminology):
        self.term = term
        self.lexicon = Lexicon(term)
        self.typos = TypoCorrector(self.lexicon.term_words, self.lexicon.words)

    def parse(self, text: str) -> ParsedQuery:
        if not isinstance(text, str):
            raise InputError("The query must be text.", "Pass a string, e.g. 'LLL GGN 2cm'.")
        if len(text) > MAX_CHARS:
            raise InputError(f"The text is {len(text)} characters long; the parser takes at most {MAX_CHARS}.",
                             "Parse one query or one report at a time.")
        norm = self.typos.correct(normalize(text))
        sizes = find_sizes(norm)
        tokens = self.lexicon.segment(norm) if has_cjk(norm) else None
        matches = self.lexicon.match(norm, [(s.start, s.end) for s in sizes], tokens)
        toks = self._tokens(norm, matches, sizes)
        sentences = self._sentences(norm, toks)
        findings, orphans = assemble(sentences, self.term)
        if findings:
            canonical = ", ".join(
                phrase(self.term, f.concept.id, f.site.id if f.site else None, f.laterality, f.size_min, f.size_max,
                       f.density, f.shape, f.count, f.change, f.negated) for f in findings)
        else:
            canonical = self._orphan_phrase(orphans)
        return ParsedQuery(findings, canonical, self._unmatched(norm, toks, tokens))

    # ---------------------------------------------------------------- tokens
    def _tokens(self, text: str, matches: list[Match], sizes) -> list[Tok]:
        toks: list[Tok] = [Tok(s.start, s.end, "Z", (s.min, s.max)) for s in sizes]
        for m in matches:
            e = m.entry
            if e.kind == "concept":
                kind = "F" if self.term.concepts[e.ref].kind == "finding" else "S"
                toks.append(Tok(m.start, m.end, kind, (e.ref, e.qualifiers)))
            elif e.kind == "qualifier":
                toks.append(Tok(m.start, m.end, "Q", (e.ref, e.value)))
            elif "unmodelled" not in e.roles:  # unmodelled words stay uncovered: they are reported
                toks.append(Tok(m.start, m.end, "CUE", e.roles))
        covered = sorted((t.start, t.end) for t in toks)
        for m in _NUMBER.finditer(text):
            if not any(s < m.end(1) and m.start(1) < e for s, e in covered):
                toks.append(Tok(m.start(), m.end(), "N", int(m.group(1))))
        for m in _SENTENCE_END.finditer(text):
            if not any(s <= m.start() < e for s, e in covered):
                toks.append(Tok(m.start(), m.end(), "END"))
        for m in _COMMA.finditer(text):
            toks.append(Tok(m.start(), m.end(), "SEP"))
        toks.sort(key=lambda t: (t.start, t.end))
        return self._adjectives(text, toks)

    def _adjectives(self, text: str, toks: list[Tok]) -> list[Tok]:
        """钙化 before 结节 is a density; a number before a countable finding is its count."""
        out: list[Tok] = []
        for k, t in enumerate(toks):
            nxt = toks[k + 1] if k + 1 < len(toks) else None
            adjacent = nxt is not None and nxt.kind == "F" and _ADJ_GAP.fullmatch(text[t.end:nxt.start])
            countable = adjacent and self.term.concepts[nxt.data[0]].countable
            if t.kind == "F" and countable and self.term.concepts[t.data[0]].as_density:
                out.append(Tok(t.start, t.end, "Q", ("density", self.term.concepts[t.data[0]].as_density)))
            elif t.kind == "N":
                if countable and t.data > 0:
                    out.append(Tok(t.start, t.end, "Q", ("count", "single" if t.data == 1 else "multiple")))
            else:
                out.append(t)
        return out

    @staticmethod
    def _sentences(text: str, toks: list[Tok]) -> list[list[Tok]]:
        sentences: list[list[Tok]] = [[]]
        for t in toks:
            if t.kind == "END":
                sentences.append([])
            else:
                sentences[-1].append(t)
        return [s for s in sentences if s]

    def _orphan_phrase(self, orphans: list[Tok]) -> str:
        """Without findings, the canonical phrase names what was understood ("right lower lobe")."""
        site = lat = size = None
        quals: dict[str, str] = {}
        for t in orphans:
            if t.kind == "S" and site is None:
                site = t.data[0]
                lat = lat or dict(t.data[1]).get("laterality")
            elif t.kind == "Z" and size is None:
                size = t.data
            elif t.kind == "Q":
                if t.data[0] == "laterality":
                    lat = lat or t.data[1]
                else:
                    quals.setdefault(t.data[0], t.data[1])
        if site and lat in ("left", "right"):
            site = self.term.sided.get((site, lat), site)
        if site:
            site = self.term.core_of(site)
        return phrase(self.term, None, site, lat, *(size or (None, None)), quals.get("density"), quals.get("shape"),
                      quals.get("count"), quals.get("change"))

    def _unmatched(self, text: str, toks: list[Tok], jieba_tokens) -> list[str]:
        covered = bytearray(len(text))
        for t in toks:
            covered[t.start:t.end] = b"\x01" * (t.end - t.start)
        found: list[tuple[int, str]] = []  # (position, word): English and Chinese in text order
        for m in _LATIN_WORD.finditer(text):
            if not any(covered[m.start():m.end()]):
                found.append((m.start(), m.group().strip("'/")))
        for word, s, _ in jieba_tokens or ():
            piece = "".join(ch for i, ch in enumerate(word, s) if not covered[i] and is_cjk(ch))
            if piece:
                found.append((s, piece))
        words = [w for _, w in sorted(found)]
        seen: set[str] = set()
        return [w for w in words if w and not (w in seen or seen.add(w))]


_lock = threading.Lock()


@lru_cache(maxsize=4)
def _parser_for(core: Path, imports: tuple[Path, ...]) -> Parser:
    return Parser(load_terminology(core, imports))


def get_parser(settings=None) -> Parser:
    """The parser for ``settings`` (an instance's), else for the MEDSEARCH_TERMINOLOGY_* environment.

    Built on first use and cached: loading the terminology and jieba takes about a second.
    """
    core, imports = configured_paths(settings)
    with _lock:
        return _parser_for(core, imports)


def default_parser() -> Parser:
    """The parser of the MEDSEARCH_TERMINOLOGY_* environment (settings are resolved once per value)."""
    return _default_for(os.environ.get("MEDSEARCH_TERMINOLOGY_DIR"), os.environ.get("MEDSEARCH_TERMINOLOGY_IMPORTS"))


@lru_cache(maxsize=4)
def _default_for(core: str | None, imports: str | None) -> Parser:
    return get_parser()

"""The matcher: every surface form of the terminology in one Aho-Corasick automaton,
plus a jieba tokenizer whose user dictionary is generated from the terminology.

Matching is "longest match across both languages": the automaton reports every
occurrence of every surface form, English and Chinese alike, and a dynamic
programme picks the non-overlapping set that covers the most characters (ties:
fewer, longer matches).  So "右肺门" is 右 + 肺门 rather than 右肺 + 门, and
"磨玻璃影" is the concept ground-glass opacity rather than 磨玻璃 + 影.

English matches must sit on word boundaries.  A one-character Chinese match
(右, 无, 双, ...) is kept only where jieba puts a word boundary on both sides
of it, or where it touches another match (右 + 肺门).
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import NamedTuple

import ahocorasick

from medsearch.query.normalize import has_cjk, is_cjk, normalize
from medsearch.query.terminology import Terminology, surface_meanings

#: jieba frequency given to terminology words, high enough to keep them whole.
USERDICT_FREQ = 200000


@dataclass(frozen=True)
class Entry:
    """What a surface form means: a concept (with fixed qualifiers), a qualifier, or a cue."""

    kind: str  # "concept" | "qualifier" | "cue"
    ref: str = ""  # concept id, or qualifier axis
    value: str = ""  # qualifier value
    qualifiers: tuple[tuple[str, str], ...] = ()
    roles: frozenset[str] = frozenset()


class Match(NamedTuple):
    start: int
    end: int
    entry: Entry


def jieba_userdict(term: Terminology) -> str:
    """The jieba user dictionary (``word freq tag`` lines) of every Chinese surface form."""
    lines = set()
    for surface, meanings in surface_meanings(term).items():
        if has_cjk(surface) and " " not in surface:
            kind = next(iter(meanings))[0]
            lines.add(f"{surface} {USERDICT_FREQ} {'n' if kind == 'concept' else 'a'}")
    for surface in term.cues:
        if has_cjk(surface) and " " not in surface:
            lines.add(f"{surface} {USERDICT_FREQ} c")
    return "\n".join(sorted(lines)) + "\n"


def _latin_boundary(text: str, start: int, end: int) -> bool:
    before = text[start - 1] if start > 0 else " "
    after = text[end] if end < len(text) else " "
    first, last = text[start], text[end - 1]
    ok_start = not (first.isascii() and first.isalnum()) or not (before.isascii() and before.isalpha())
    ok_end = not (last.isascii() and last.isalnum()) or not (after.isascii() and after.isalpha())
    return ok_start and ok_end


class Lexicon:
    """Built once per terminology (about a second, most of it jieba's dictionary)."""

    def __init__(self, term: Terminology):
        self.term = term
        self.entries: list[Entry] = []
        self.automaton = ahocorasick.Automaton()
        self.words: set[str] = set()  # English words of terms and cues, for typo correction
        self.term_words: set[str] = set()
        index: dict[Entry, int] = {}

        def add(surface: str, entry: Entry, is_term: bool) -> None:
            if not surface:
                return
            i = index.setdefault(entry, len(self.entries))
            if i == len(self.entries):
                self.entries.append(entry)
            self.automaton.add_word(surface, (len(surface), i))
            for w in surface.split():
                if w.isascii() and w.isalpha():
                    (self.term_words if is_term else self.words).add(w)

        for surface, meanings in surface_meanings(term).items():
            kind, ref, extra = next(iter(meanings))
            if kind == "concept":
                add(surface, Entry("concept", ref, qualifiers=extra), True)
            else:
                add(surface, Entry("qualifier", ref, extra), True)
        for surface, roles in term.cues.items():
            add(surface, Entry("cue", roles=roles), False)
        self.automaton.make_automaton()
        self._jieba = None

    # ------------------------------------------------------------------ jieba
    @property
    def jieba(self):
        """A private jieba tokenizer (the global one is left alone) with the terminology as user dictionary."""
        if self._jieba is None:
            import jieba

            jieba.setLogLevel(logging.WARNING)
            tok = jieba.Tokenizer()
            tok.load_userdict(io.StringIO(jieba_userdict(self.term)))
            self._jieba = tok
        return self._jieba

    def segment(self, text: str) -> list[tuple[str, int, int]]:
        """jieba tokens ``(word, start, end)`` of normalised text."""
        return list(self.jieba.tokenize(text, HMM=True))

    # --------------------------------------------------------------- matching
    def candidates(self, text: str) -> list[Match]:
        out = []
        for end_idx, (length, i) in self.automaton.iter(text):
            start, end = end_idx - length + 1, end_idx + 1
            if _latin_boundary(text, start, end):
                out.append(Match(start, end, self.entries[i]))
        return out

    def match(self, text: str, blocked: list[tuple[int, int]] = (),
              tokens: list[tuple[str, int, int]] | None = None) -> list[Match]:
        """The best non-overlapping matches in normalised ``text``, avoiding ``blocked`` spans (sizes)."""
        n = len(text)
        free = bytearray(b"\x01") * (n + 1)
        for s, e in blocked:
            free[s:e] = b"\x00" * (e - s)
        by_start: dict[int, list[Match]] = {}
        for m in self.candidates(text):
            if all(free[m.start:m.end]):
                by_start.setdefault(m.start, []).append(m)
        if not by_start:
            return []
        # best[i] = (covered chars, -matches) over text[i:]; choice[i] = match taken at i (or None)
        best = [(0, 0)] * (n + 1)
        choice: list[Match | None] = [None] * (n + 1)
        for i in range(n - 1, -1, -1):
            best[i] = best[i + 1]
            for m in by_start.get(i, ()):
                cov, neg = best[m.end]
                cand = (cov + m.end - m.start, neg - 1)
                if cand > best[i]:
                    best[i], choice[i] = cand, m
        picked = []
        i = 0
        while i < n:
            m = choice[i]
            if m is not None:  # taking it was strictly better than skipping i
                picked.append(m)
                i = m.end
            else:
                i += 1
        return self._check_single_cjk(text, picked, tokens)

    def _check_single_cjk(self, text: str, picked: list[Match], tokens) -> list[Match]:
        singles = [k for k, m in enumerate(picked) if m.end - m.start == 1 and is_cjk(text[m.start])]
        if not singles:
            return picked
        if tokens is None:
            tokens = self.segment(text)
        bounds = {s for _, s, _ in tokens} | {e for _, _, e in tokens}
        drop = set()
        for k in singles:
            m = picked[k]
            touches = (k > 0 and picked[k - 1].end == m.start) or (k + 1 < len(picked) and picked[k + 1].start == m.end)
            if not touches and not (m.start in bounds and m.end in bounds):
                drop.add(k)
        return [m for k, m in enumerate(picked) if k not in drop]

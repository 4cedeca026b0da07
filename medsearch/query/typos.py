"""English typo tolerance: one edit (insert, delete, substitute, swap) on words over 6 letters.

Only words of the terminology are targets, and only a word the terminology does
not know is corrected, and only when exactly one target is one edit away: "pnuemothorax"
becomes "pneumothorax", "nodular" stays "nodular".  Candidates come from a
deletion index (the SymSpell idea), so a correction costs a few dict look-ups.
"""

from __future__ import annotations

import re

MIN_LEN = 7  # "longer than 6 letters"
_WORD = re.compile(r"[a-z]+")


def _deletes(word: str) -> set[str]:
    return {word[:i] + word[i + 1:] for i in range(len(word))}


def osa_distance_le1(a: str, b: str) -> bool:
    """True when ``a`` and ``b`` are at most one edit apart (optimal string alignment, swap = 1)."""
    if a == b:
        return True
    la, lb = len(a), len(b)
    if abs(la - lb) > 1:
        return False
    i = 0
    while i < min(la, lb) and a[i] == b[i]:
        i += 1
    if la == lb:
        if a[i + 1:] == b[i + 1:]:
            return True
        return i + 1 < la and a[i] == b[i + 1] and a[i + 1] == b[i] and a[i + 2:] == b[i + 2:]
    if la > lb:
        return a[i + 1:] == b[i:]
    return a[i:] == b[i + 1:]


class TypoCorrector:
    """Corrects unknown long English words to the one terminology word one edit away."""

    def __init__(self, target_words: set[str], known_words: set[str]):
        self.known = set(known_words) | set(target_words)
        self.index: dict[str, set[str]] = {}
        for w in target_words:
            if len(w) >= MIN_LEN:
                for key in _deletes(w) | {w}:
                    self.index.setdefault(key, set()).add(w)

    def candidates(self, word: str) -> set[str]:
        found = set()
        for key in _deletes(word) | {word}:
            found |= self.index.get(key, set())
        return {c for c in found if osa_distance_le1(word, c)}

    def correct_word(self, word: str) -> str:
        if len(word) < MIN_LEN or word in self.known:
            return word
        # an inflection of a term word ("collapsed", "effusions") is a word, not a typo
        cands = {c for c in self.candidates(word) if word not in (c + "s", c + "d")}
        return next(iter(cands)) if len(cands) == 1 else word

    def correct(self, text: str) -> str:
        """``text`` (normalised) with unknown long words corrected."""
        return _WORD.sub(lambda m: self.correct_word(m.group()), text)

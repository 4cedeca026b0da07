"""Text normalisation shared by the terminology and the parser.

Terms and query text go through the same function, so that "Ground-Glass",
"ground glass" and "ｇｒｏｕｎｄ　ｇｌａｓｓ" meet in the automaton as "ground glass".
"""

from __future__ import annotations

import re
import unicodedata

_DASHES = str.maketrans({c: "-" for c in "\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe63"})
# A hyphen between letters joins words ("part-solid", "sub-centimeter"); between
# digits it is a range ("2-3 cm") and stays.
_WORD_HYPHEN = re.compile(r"(?<=[a-z])-(?=[a-z])")
_SPACES = re.compile(r"[ \t\u3000\xa0]+")


def normalize(text: str) -> str:
    """NFKC (full-width to half-width), lower case, one kind of dash, word hyphens as spaces."""
    text = unicodedata.normalize("NFKC", text).translate(_DASHES).lower()
    text = _WORD_HYPHEN.sub(" ", text)
    return _SPACES.sub(" ", text).strip()


def is_cjk(ch: str) -> bool:
    return "\u3400" <= ch <= "\u9fff" or "\uf900" <= ch <= "\ufaff"


def has_cjk(text: str) -> bool:
    return any(is_cjk(c) for c in text)

"""The matcher: jieba user dictionary, longest match across languages, boundaries."""

import pytest

from medsearch.query.lexicon import USERDICT_FREQ, jieba_userdict
from medsearch.query.normalize import normalize
from medsearch.query.parser import default_parser


@pytest.fixture(scope="module")
def lex():
    return default_parser().lexicon


def _spans(lex, text):
    norm = normalize(text)
    return [norm[m.start:m.end] for m in lex.match(norm)]


def test_userdict_lists_chinese_terms_in_both_scripts(lex):
    lines = jieba_userdict(lex.term).splitlines()
    words = {line.split()[0] for line in lines}
    assert {"右肺下叶", "右肺下葉", "磨玻璃", "胸腔积液", "胸腔積液", "未见", "双下肺"} <= words
    assert all(line.split()[1] == str(USERDICT_FREQ) for line in lines)
    assert not any(w.isascii() for w in words)


def test_jieba_keeps_terms_whole(lex):
    words = [w for w, _, _ in lex.segment("右肺下叶见磨玻璃结节，双下肺少许肺不张")]
    assert "右肺下叶" in words and "双下肺" in words and "肺不张" in words


@pytest.mark.parametrize("text,spans", [
    ("右肺门", ["右", "肺门"]),           # 3 characters covered beats 右肺 + 门
    ("磨玻璃影", ["磨玻璃影"]),             # one match beats 磨玻璃 + 影
    ("肺气肿", ["肺气肿"]),
    ("left lower lobe nodule", ["left lower lobe", "nodule"]),
    ("LLL磨玻璃结节", ["lll", "磨玻璃", "结节"]),
    ("rolling", []),                      # no "rll"-like match inside a word
    ("nodules", ["nodules"]),
])
def test_longest_match(lex, text, spans):
    assert _spans(lex, text) == spans


def test_single_cjk_needs_a_word_boundary(lex):
    # 无 inside 无论 is not a negation; 右 touching 肺门 is a side
    assert "无" not in _spans(lex, "无论如何")
    assert _spans(lex, "右肺门")[0] == "右"

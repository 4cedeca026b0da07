"""The phrase set: at least 300 phrases, half Chinese, each with its expected structured parse."""

from collections import Counter
from pathlib import Path

import pytest

from medsearch.query import parse
from medsearch.query.evaluate import compact, exact_match, load_phrases

PHRASES = load_phrases(Path(__file__).with_name("phrases.jsonl"))


def test_the_set_is_large_and_half_chinese():
    langs = Counter(p["lang"] for p in PHRASES)
    assert len(PHRASES) >= 300
    assert langs["zh"] >= len(PHRASES) / 2
    assert langs["mixed"] >= 5
    assert sum(any(f.get("negated") for f in p["findings"]) for p in PHRASES) >= 30
    assert len({p["text"] for p in PHRASES}) == len(PHRASES)


@pytest.mark.parametrize("item", PHRASES, ids=[f"{i:03d}" for i in range(len(PHRASES))])
def test_phrase(item):
    parsed = parse(item["text"])
    assert exact_match(parsed, item["findings"]), (item["text"], compact(parsed))
    if "canonical" in item:
        assert parsed.canonical == item["canonical"]

import pytest

from medsearch.query.typos import TypoCorrector, osa_distance_le1

TARGETS = {"pneumothorax", "pleural", "effusion", "consolidation", "atelectasis", "emphysema", "nodule", "spiculated"}


@pytest.mark.parametrize("a,b,ok", [
    ("pneumothorax", "pnuemothorax", True),  # swap
    ("pleural", "plueral", True), ("effusion", "efusion", True), ("effusion", "effusionn", True),
    ("effusion", "effusiom", True), ("effusion", "efusionn", False), ("consolidation", "consolidatoin", True),
    ("emphysema", "emphysemaaa", False), ("abc", "abc", True),
])
def test_osa_distance(a, b, ok):
    assert osa_distance_le1(a, b) is ok
    assert osa_distance_le1(b, a) is ok


@pytest.fixture()
def corrector():
    return TypoCorrector(TARGETS, {"measuring", "nodular"})


@pytest.mark.parametrize("wrong,right", [("pnuemothorax", "pneumothorax"), ("plueral", "pleural"),
                                          ("efusion", "effusion"), ("consolidaton", "consolidation"),
                                          ("spicualted", "spiculated"), ("emphysma", "emphysema")])
def test_corrects_one_edit_on_long_words(corrector, wrong, right):
    assert corrector.correct(f"small {wrong} seen") == f"small {right} seen"


@pytest.mark.parametrize("word", ["nodlue",  # six letters: too short to correct
                                  "nodular",  # a known word
                                  "measuring",
                                  "pneumothoraxes",  # two edits away
                                  "spiculateds",  # an inflection, not a typo
                                  ])
def test_leaves_short_known_and_far_words(corrector, word):
    assert corrector.correct(word) == word


def test_ambiguous_words_are_left_alone():
    c = TypoCorrector({"abcdefgx", "abcdefgy"}, set())
    assert c.correct("abcdefgz") == "abcdefgz"

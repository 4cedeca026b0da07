import pytest

from medsearch.query.normalize import normalize
from medsearch.query.sizes import find_sizes

CASES = [
    ("2 cm", [(20, 20)]), ("20mm", [(20, 20)]), ("2.1 x 1.8 cm", [(21, 21)]), ("1.2cm×1.0cm", [(12, 12)]),
    ("2.1 x 1.8 x 1.5 cm", [(21, 21)]), ("大于2厘米", [(20, None)]), ("<5 mm", [(None, 5)]), ("2-3 cm", [(20, 30)]),
    ("2~3cm", [(20, 30)]), ("2至3厘米", [(20, 30)]), ("between 2 and 3 cm", [(20, 30)]), ("sub-centimeter", [(None, 10)]),
    ("subcentimetre", [(None, 10)]), ("亚厘米", [(None, 10)]), ("亞厘米", [(None, 10)]), ("2cm以上", [(20, None)]),
    ("5mm以下", [(None, 5)]), ("≥8mm", [(8, None)]), ("at least 6 mm", [(6, None)]), ("up to 4 mm", [(None, 4)]),
    ("３ｃｍ", [(30, 30)]), ("2-cm", [(20, 20)]), ("3 公分", [(30, 30)]), ("8 millimeters", [(8, 8)]),
    ("from 6 mm to 9 mm", [(9, 9)]), ("2 cm and 3 cm", [(20, 20), (30, 30)]), ("4.5毫米", [(4.5, 4.5)]),
    ("小于或等于5毫米", [(None, 5)]), ("10 mm or larger", [(10, None)]),
]


@pytest.mark.parametrize("text,expected", CASES)
def test_sizes(text, expected):
    assert [(s.min, s.max) for s in find_sizes(normalize(text))] == expected


@pytest.mark.parametrize("text", ["RLL S6", "T12 vertebra", "nodule 8", "2 nodules", "10%", "series 3 image 45"])
def test_no_size_without_a_unit(text):
    assert find_sizes(normalize(text)) == []


def test_span_covers_the_comparison():
    (s,) = find_sizes(normalize("nodule > 8 mm here"))
    assert normalize("nodule > 8 mm here")[s.start:s.end] == "> 8 mm"

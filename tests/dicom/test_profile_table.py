"""The generated Table E.1-1 matches its committed source and names its edition."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from medsearch.dicom import _generate_profile, profile_table

DATA = Path(_generate_profile.__file__).parent / "data"


def test_generated_module_is_up_to_date():
    committed = Path(profile_table.__file__).read_text(encoding="utf-8")
    assert _generate_profile.generate() == committed, "run: python -m medsearch.dicom._generate_profile"


def test_source_and_licence_are_committed():
    assert (DATA / "LICENSE-dicom-standard.txt").read_text().startswith("Copyright (c) 2017 Innolitics")
    assert "2024" in profile_table.EDITION and "Table E.1-1" in profile_table.EDITION
    assert profile_table.SOURCE_COMMIT in Path(profile_table.__file__).read_text()


def test_every_row_is_present_with_its_action():
    rows = json.loads((DATA / "confidentiality_profile_attributes.json").read_text())
    assert profile_table.ROW_COUNT == len(rows) == 621
    generated = Counter(action for *_, action, _ in profile_table.ROWS)
    generated[profile_table.PRIVATE_ROW[1]] += 1
    assert generated == Counter(r["basicProfile"] for r in rows)
    assert set(generated) == {"X", "D", "U", "Z", "X/D", "X/Z", "X/Z/D", "Z/D", "X/Z/U*"}


def test_repeating_groups_have_masks():
    masked = {name: (value, mask) for value, mask, name, *_ in profile_table.ROWS if mask != 0xFFFFFFFF}
    assert masked == {"Curve Data": (0x50000000, 0xFF000000), "Overlay Data": (0x60003000, 0xFF00FFFF),
                      "Overlay Comments": (0x60004000, 0xFF00FFFF)}
    assert profile_table.PRIVATE_ROW == ("Private Attributes", "X", {"rtnSafePrivOpt": "C"})

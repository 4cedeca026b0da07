"""Generate :mod:`medsearch.dicom.profile_table` from the machine-readable PS3.15 Table E.1-1.

Usage::

    python -m medsearch.dicom._generate_profile [SOURCE_JSON]

SOURCE_JSON defaults to the copy committed beside this script
(``medsearch/dicom/data/confidentiality_profile_attributes.json``, from the
innolitics/dicom-standard project, MIT licence in ``data/LICENSE-dicom-standard.txt``).
The output is deterministic, so a test regenerates it and compares: the table
the code uses can never drift from its source.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_SOURCE = HERE / "data" / "confidentiality_profile_attributes.json"
OUTPUT = HERE / "profile_table.py"

SOURCE_NAME = "innolitics/dicom-standard, standard/confidentiality_profile_attributes.json"
SOURCE_COMMIT = "8670abdd9ad16c61af5146ef857899699bdd9c5f"
EDITION = "DICOM PS3.15 Table E.1-1, 2024 editions (source file as last changed on 2024-04-18)"

#: Option columns of the source, in the order the table module lists them.
OPTION_COLUMNS = ("rtnLongFullDatesOpt", "rtnLongModifDatesOpt", "rtnPatCharsOpt", "rtnDevIdOpt",
                  "rtnInstIdOpt", "rtnUIDsOpt", "rtnSafePrivOpt", "cleanDescOpt", "cleanGraphOpt",
                  "cleanStructContOpt")
PRIVATE_ROW = "(GGGG,EEEE) WHERE GGGG IS ODD"


def parse_tag(text: str) -> tuple[int, int]:
    """``(60XX,4000)`` -> (value, mask): an element matches when ``tag & mask == value``."""
    body = text.strip().strip("()").replace(",", "")
    if len(body) != 8:
        raise ValueError(f"unexpected tag {text!r}")
    value = int(body.upper().replace("X", "0"), 16)
    mask = int("".join("0" if c in "xX" else "F" for c in body), 16)
    return value, mask


def render(rows: list[dict], digest: str) -> str:
    out = [
        '"""PS3.15 Table E.1-1, the Basic Application Level Confidentiality Profile. GENERATED: do not edit.',
        "",
        f"Edition: {EDITION}.",
        f"Source:  {SOURCE_NAME} at commit {SOURCE_COMMIT}",
        f"         (sha256 of the JSON: {digest}).",
        "Regenerate with ``python -m medsearch.dicom._generate_profile``.",
        "",
        "Each row is (tag, mask, name, basic action, {option column: action}); an element matches a row",
        "when ``tag_int & mask == tag``.  Masks other than 0xFFFFFFFF are the 50xx/60xx repeating groups.",
        "The private-attributes row is kept apart as PRIVATE_ROW.",
        '"""',
        "",
        f"EDITION = {EDITION!r}",
        f"SOURCE = {SOURCE_NAME!r}",
        f"SOURCE_COMMIT = {SOURCE_COMMIT!r}",
        f"SOURCE_SHA256 = {digest!r}",
        f"OPTION_COLUMNS = {OPTION_COLUMNS!r}",
        "",
        "ROWS = (",
    ]
    private = None
    body = []
    for row in rows:
        options = {k: row[k] for k in OPTION_COLUMNS if row.get(k)}
        if row["tag"].strip().upper() == PRIVATE_ROW:
            private = (row["name"], row["basicProfile"], options)
            continue
        value, mask = parse_tag(row["tag"])
        body.append((value, mask, row["name"], row["basicProfile"], options))
    for value, mask, name, action, options in sorted(body, key=lambda r: (r[0], r[1])):
        out.append(f"    (0x{value:08X}, 0x{mask:08X}, {name!r}, {action!r}, {options!r}),")
    out.append(")")
    out.append("")
    out.append(f"PRIVATE_ROW = {private!r}")
    out.append(f"ROW_COUNT = {len(body) + (1 if private else 0)}")
    out.append("")
    return "\n".join(out)


def generate(source: Path = DEFAULT_SOURCE) -> str:
    raw = source.read_bytes()
    rows = json.loads(raw)
    return render(rows, hashlib.sha256(raw).hexdigest())


def main(argv: list[str]) -> int:
    source = Path(argv[0]) if argv else DEFAULT_SOURCE
    OUTPUT.write_text(generate(source), encoding="utf-8")
    print(f"wrote {OUTPUT} from {source}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))

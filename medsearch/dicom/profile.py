"""Apply the Basic Application Level Confidentiality Profile (PS3.15 E.1, Table E.1-1).

The rows come from the generated :mod:`medsearch.dicom.profile_table`; this
module decides the action for each element and applies it, at every depth of
nested sequences.

Action codes (PS3.15 Table E.1-1 legend):

* ``D`` replace with a non-zero-length dummy value consistent with the VR;
* ``Z`` replace with a zero-length value (or a dummy);
* ``X`` remove;
* ``K`` keep (sequences are kept, and their items de-identified recursively);
* ``C`` clean: replace with values of similar meaning known not to identify
  (dates are shifted by the keyed per-patient offset; free text is reduced to
  imaging vocabulary, see :mod:`medsearch.dicom.descriptors`);
* ``U`` replace a UID with a keyed replacement that is consistent everywhere.

Compound codes (X/Z, X/D, Z/D, X/Z/D, X/Z/U*) are resolved by the attribute's
Type in the image IODs this product ingests (:data:`ATTRIBUTE_TYPE`): Type 1
takes the last code (D or U), Type 2 takes Z, Type 3 (and unknown) takes X.

Options (settings ``deid_*``) replace the basic action by the option column's
action.  When two enabled options disagree, the one that discloses less wins
(C over K): for example, with Retain Device Identity and Modified Dates both on,
a calibration date is shifted rather than kept.

Beyond the table, and stricter than it:

* private elements are removed unless on the safe-list (Retain Safe Private);
* whole overlay (60xx) and curve (50xx) groups and icon images are removed;
* group lengths and public tags unknown to the data dictionary are removed;
* a UID element the table does not list is replaced (U) unless it names a
  class, transfer syntax or another well-known UID, because modalities embed
  dates and MRNs in instance UIDs.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from pydicom.datadict import dictionary_has_tag, dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import UID_dictionary

from medsearch.dicom import profile_table
from medsearch.dicom.descriptors import clean_text
from medsearch.dicom.pseudonym import shift_date
from medsearch.dicom.uids import new_uid
from medsearch.errors import ConfigError

#: PS3.15 Table E.1-1 option columns that settings can switch on.
SETTING_COLUMNS = {
    "deid_retain_dates": "rtnLongModifDatesOpt",
    "deid_retain_patient_characteristics": "rtnPatCharsOpt",
    "deid_clean_descriptors": "cleanDescOpt",
    "deid_retain_device_identity": "rtnDevIdOpt",
}

#: CID 7050 De-identification Method codes (scheme DCM).
CODE_BASIC = ("113100", "Basic Application Confidentiality Profile")
CODE_CLEAN_PIXEL = ("113101", "Clean Pixel Data Option")
CODE_CLEAN_DESCRIPTORS = ("113105", "Clean Descriptors Option")
CODE_MODIFIED_DATES = ("113107", "Retain Longitudinal Temporal Information Modified Dates Option")
CODE_PATIENT_CHARS = ("113108", "Retain Patient Characteristics Option")
CODE_DEVICE_IDENTITY = ("113109", "Retain Device Identity Option")
CODE_SAFE_PRIVATE = ("113111", "Retain Safe Private Option")

#: Attribute Type (PS3.3) of the compound-action attributes, taking the most demanding Type over the
#: CT Image, MR Image, Enhanced CT Image and Enhanced MR Image IODs (so the output stays conformant
#: for each).  Attributes not listed are Type 3 here.  Sources: PS3.3 C.7.6.1 General Image,
#: C.7.1.1 Patient, C.7.6.4 Contrast/Bolus, C.7.5.2 Enhanced General Equipment, C.7.6.16
#: Multi-frame Functional Groups, C.8.15.2 / C.8.13.1 Enhanced CT/MR Image, C.17.3 Acquisition Context.
ATTRIBUTE_TYPE: dict[int, int] = {
    0x00400555: 2,  # Acquisition Context Sequence (Acquisition Context module)
    0x0008002A: 1,  # Acquisition DateTime (Enhanced CT/MR Image, 1C for ORIGINAL images)
    0x00080023: 1,  # Content Date (Multi-frame Functional Groups)
    0x00080033: 1,  # Content Time (Multi-frame Functional Groups)
    0x00180010: 2,  # Contrast/Bolus Agent (Contrast/Bolus module)
    0x00181000: 1,  # Device Serial Number (Enhanced General Equipment)
    0x00102203: 2,  # Patient's Sex Neutered (Patient module, 2C)
    0x00100020: 2,  # Patient ID (Patient module)
    0x00700084: 2,  # Content Creator's Name (Type 2 wherever it is used)
    0x00081140: 1,  # Referenced Image Sequence (1C in Enhanced CT/MR Image)
    0x00082112: 1,  # Source Image Sequence (1C for derived Enhanced CT/MR images)
}

#: Keywords of elements removed with the overlay/curve groups: icon images can show the face.
REMOVE_KEYWORDS = frozenset({"IconImageSequence"})
_TIME = re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$")
DUMMY_TEXT = "ANONYMIZED"
DUMMY_BY_VR: dict[str, object] = {
    "AE": "ANONYMIZED", "AS": "000D", "CS": "ANONYMIZED", "DA": "19000101", "DT": "19000101000000",
    "TM": "000000", "DS": "0", "IS": "0", "LO": DUMMY_TEXT, "LT": DUMMY_TEXT, "SH": DUMMY_TEXT,
    "ST": DUMMY_TEXT, "UT": DUMMY_TEXT, "UC": DUMMY_TEXT, "PN": DUMMY_TEXT, "UR": "",
    "FL": 0.0, "FD": 0.0, "SL": 0, "SS": 0, "UL": 0, "US": 0, "SV": 0, "UV": 0,
    "OB": b"\x00\x00", "OD": b"\x00" * 8, "OF": b"\x00" * 4, "OL": b"\x00" * 4, "OV": b"\x00" * 8,
    "OW": b"\x00\x00", "UN": b"\x00\x00", "AT": 0,
}


@dataclass(frozen=True)
class Options:
    """The PS3.15 options in force, from settings ``deid_*``."""

    retain_dates: bool = True
    retain_patient_characteristics: bool = False
    clean_descriptors: bool = True
    quarantine_burned_in: bool = True
    retain_device_identity: bool = False
    #: Safe private elements as (group, element low byte, private creator).
    safe_private: frozenset = frozenset()

    @classmethod
    def from_settings(cls, settings) -> "Options":
        return cls(
            retain_dates=settings.deid_retain_dates,
            retain_patient_characteristics=settings.deid_retain_patient_characteristics,
            clean_descriptors=settings.deid_clean_descriptors,
            quarantine_burned_in=settings.deid_quarantine_burned_in,
            retain_device_identity=settings.deid_retain_device_identity,
            safe_private=parse_safe_private(settings.deid_safe_private_tags),
        )

    @property
    def columns(self) -> frozenset[str]:
        """Option columns of Table E.1-1 that are switched on."""
        cols = {column for name, column in SETTING_COLUMNS.items() if getattr(self, name.removeprefix("deid_"))}
        if self.safe_private:
            cols.add("rtnSafePrivOpt")
        return frozenset(cols)

    def method_codes(self) -> list[tuple[str, str]]:
        """CID 7050 codes for DeidentificationMethodCodeSequence, in a stable order.

        Clean Pixel Data (113101) is *not* claimed: quarantining flagged series keeps them out
        of the output, but the pixels of what is written have not been inspected or cleaned.
        """
        codes = [CODE_BASIC]
        if self.clean_descriptors:
            codes.append(CODE_CLEAN_DESCRIPTORS)
        if self.retain_dates:
            codes.append(CODE_MODIFIED_DATES)
        if self.retain_patient_characteristics:
            codes.append(CODE_PATIENT_CHARS)
        if self.retain_device_identity:
            codes.append(CODE_DEVICE_IDENTITY)
        if self.safe_private:
            codes.append(CODE_SAFE_PRIVATE)
        return codes


def parse_safe_private(entries: Iterable[str]) -> frozenset:
    """Parse 'gggg,eeee@Creator' strings of setting ``deid_safe_private_tags``."""
    out = set()
    for entry in entries:
        try:
            tag_text, creator = entry.split("@", 1)
            group_text, elem_text = tag_text.strip().strip("()").split(",")
            group, elem = int(group_text, 16), int(elem_text, 16)
            if group % 2 == 0 or elem < 0x1000 or not creator.strip():
                raise ValueError
        except ValueError:
            raise ConfigError(f"Setting 'deid_safe_private_tags' has an invalid entry {entry!r}.",
                              "Write entries as 'gggg,eeee@Private Creator' with an odd group, e.g. "
                              "'0019,100C@GEMS_ACQU_01'.") from None
        out.add((group, elem & 0xFF, creator.strip()))
    return frozenset(out)


@dataclass(frozen=True)
class Rule:
    name: str
    basic: str
    options: dict


def _build_rules() -> tuple[dict[int, Rule], list[tuple[int, int, Rule]]]:
    exact, masked = {}, []
    for value, mask, name, basic, options in profile_table.ROWS:
        rule = Rule(name, basic, options)
        if mask == 0xFFFFFFFF:
            exact[value] = rule
        else:
            masked.append((value, mask, rule))
    return exact, masked


EXACT_RULES, MASKED_RULES = _build_rules()


def resolve_compound(tag: int, code: str) -> str:
    """Resolve X/Z, X/D, Z/D, X/Z/D and X/Z/U* by the attribute's Type."""
    if "/" not in code:
        return code
    codes = code.replace("*", "").split("/")
    kind = ATTRIBUTE_TYPE.get(tag, 3)
    if kind == 1:
        return codes[-1]
    if kind == 2 and "Z" in codes:
        return "Z"
    return codes[0]


def rule_for(tag: int) -> Rule | None:
    rule = EXACT_RULES.get(tag)
    if rule is None:
        for value, mask, masked in MASKED_RULES:
            if tag & mask == value:
                return masked
    return rule


@functools.lru_cache(maxsize=8192)
def action_for(tag: int, options: Options) -> tuple[str, str | None]:
    """(action, the option column that chose it or None) for a public tag listed in the table."""
    rule = rule_for(tag)
    if rule is None:
        return "K", None
    chosen = [(code, col) for col, code in rule.options.items() if col in options.columns]
    if chosen:
        # C discloses less than K: prefer it when enabled options disagree.
        code, col = sorted(chosen, key=lambda c: 0 if c[0] == "C" else 1)[0]
        return code, col
    return resolve_compound(tag, rule.basic), None


@dataclass
class Context:
    """Per-instance inputs of the profile: keys and the patient's date shift."""

    uid_secret: bytes
    uid_root: str
    shift_days: int | None
    options: Options
    #: Counters of actions taken, by code (no values): for tests and the audit summary.
    counts: dict = field(default_factory=dict)

    def count(self, code: str) -> None:
        self.counts[code] = self.counts.get(code, 0) + 1


def _values(elem: DataElement) -> list:
    if isinstance(elem.value, (list, MultiValue)):
        return list(elem.value)
    return [] if elem.value in (None, "") else [elem.value]


def _set_values(elem: DataElement, values: list) -> None:
    elem.value = values if len(values) > 1 else (values[0] if values else None)


def _dummy(elem: DataElement, ctx: Context):
    if elem.VR == "UI":
        return [new_uid(ctx.uid_secret, v, ctx.uid_root) for v in _values(elem)] or [new_uid(ctx.uid_secret, "")]
    return DUMMY_BY_VR.get(elem.VR, DUMMY_TEXT)


def _shift_da(text: str, days: int) -> str | None:
    try:
        return shift_date(dt.datetime.strptime(text.strip()[:8], "%Y%m%d").date(), days).strftime("%Y%m%d")
    except ValueError:
        return None


def _shift_dt(text: str, days: int) -> str | None:
    text = text.strip()
    if len(text) < 8:
        return None  # a year or year-month alone: too coarse to shift exactly, so it is dropped
    shifted = _shift_da(text[:8], days)
    return shifted + text[8:] if shifted else None


def _clean_dates(elem: DataElement, ctx: Context) -> bool:
    """Shift DA/DT values; TM is kept (a whole-day shift does not change a time of day).

    Returns False when a value cannot be shifted safely: the caller then empties the element.
    """
    if elem.VR == "TM":
        # Kept, but only when every value really is a time: text in a TM element is not kept.
        return all(_TIME.match(str(v).strip()) for v in _values(elem))
    if elem.VR not in ("DA", "DT") or ctx.shift_days is None:
        return False
    shifter = _shift_da if elem.VR == "DA" else _shift_dt
    out = []
    for v in _values(elem):
        shifted = shifter(str(v), ctx.shift_days)
        if shifted is None:
            return False
        out.append(shifted)
    _set_values(elem, out)
    return True


def _clean_text(elem: DataElement) -> bool:
    if elem.VR not in ("LO", "LT", "SH", "ST", "UT", "UC", "CS", "PN"):
        return False
    out = [clean_text(v) for v in _values(elem)]
    _set_values(elem, [v for v in out if v])
    return True


def _apply_clean(elem: DataElement, column: str | None, ctx: Context) -> None:
    if elem.VR == "SQ":
        return  # items are de-identified by the recursion
    if column in ("rtnLongModifDatesOpt", "rtnLongFullDatesOpt"):
        ok = _clean_dates(elem, ctx)
    elif column in ("cleanDescOpt", "rtnPatCharsOpt"):
        ok = _clean_text(elem)
    else:
        ok = False
    if not ok:
        # Nothing safe of similar meaning exists: fall back to a dummy value (D).
        elem.value = _dummy(elem, ctx)


def _remap_uids(elem: DataElement, ctx: Context) -> None:
    _set_values(elem, [new_uid(ctx.uid_secret, v, ctx.uid_root) for v in _values(elem)])


def _is_well_known_uid_element(elem: DataElement) -> bool:
    keyword = elem.keyword or ""
    if keyword.endswith(("ClassUID", "SyntaxUID", "SchemeUID")):
        return True
    values = _values(elem)
    return bool(values) and all(str(v) in UID_dictionary for v in values)


def _private_is_safe(ds: Dataset, tag: Tag, options: Options) -> bool:
    if not options.safe_private or tag.element < 0x1000:
        return False
    creator_elem = ds.get((tag.group, tag.element >> 8))
    creator = str(creator_elem.value).strip() if creator_elem is not None else ""
    return (tag.group, tag.element & 0xFF, creator) in options.safe_private


def _is_overlay_or_curve(tag: Tag) -> bool:
    return (0x6000 <= tag.group <= 0x60FF or 0x5000 <= tag.group <= 0x50FF) and tag.group % 2 == 0


PRIVATE = "private"


@functools.lru_cache(maxsize=16384)
def _classify(tag: int, options: Options) -> tuple[str, str | None]:
    """The action for a tag, before looking at its value: PRIVATE, or (code, option column).

    Cached per (tag, options): the same few hundred tags recur in every file.
    """
    group, element = tag >> 16, tag & 0xFFFF
    if group % 2:
        return PRIVATE, None
    if element == 0 or _is_overlay_or_curve(Tag(tag)) or not dictionary_has_tag(tag) \
            or keyword_for_tag(tag) in REMOVE_KEYWORDS:
        return "X", None  # group lengths, overlays, curves, icons, tags unknown to the dictionary
    return action_for(tag, options)


def _plain_vr(ds: Dataset, tag: Tag) -> str | None:
    """The element's VR without converting its value (None when ambiguous or unknown)."""
    raw = ds.get_item(tag)
    vr = getattr(raw, "VR", None)
    if not vr:
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            return None
    return None if " or " in vr else vr


def apply_profile(ds: Dataset, ctx: Context, on_item: Callable[[Dataset], None] | None = None) -> None:
    """De-identify ``ds`` in place, recursing into every sequence item at every depth.

    Elements are removed or replaced without decoding their values where the action does not
    depend on them (most of them): decoding every raw value would dominate ingest time.

    Args:
        ds: a dataset, or a sequence item.
        ctx: keys, date shift and options.
        on_item: optional hook called on each nested item after it is processed (tests use it).
    """
    safe_creators: set[int] = set()
    for tag in list(ds.keys()):
        code, column = _classify(int(tag), ctx.options)
        if code == PRIVATE:
            if tag.is_private_creator:
                continue  # decided below, once we know whether any element of its block stays
            if _private_is_safe(ds, tag, ctx.options):
                safe_creators.add((tag.group << 16) | (tag.element >> 8))
                ctx.count("private-kept")
                continue
            code = "X"
        vr = _plain_vr(ds, tag) if code != "X" else None
        if code == "X":
            del ds[tag]
            ctx.count(code)
            continue
        if vr is not None and vr not in ("SQ", "UI"):
            # Fast paths: the value is not needed to keep, empty or replace it.
            if code == "K":
                ctx.count(code)
                continue
            if code == "Z" and isinstance(raw := ds.get_item(tag), RawDataElement):
                ctx.count(code)
                ds[tag] = raw._replace(value=b"", length=0)  # still undecoded: empty it without decoding
                continue
            if code in ("Z", "D"):
                ctx.count(code)
                ds[tag] = DataElement(tag, vr, None if code == "Z" else DUMMY_BY_VR.get(vr, DUMMY_TEXT))
                continue
        elem = ds[tag]
        if rule_for(int(tag)) is None and elem.VR == "UI" and not _is_well_known_uid_element(elem):
            code = "U"  # a UID the table does not list may still embed a date or an MRN
        ctx.count(code)
        if code == "Z":
            elem.value = Sequence([]) if elem.VR == "SQ" else None
            continue
        if code == "D" and elem.VR != "SQ":
            elem.value = _dummy(elem, ctx)
        elif code == "U" and elem.VR == "UI":
            _remap_uids(elem, ctx)
        elif code == "C":
            _apply_clean(elem, column, ctx)
        if elem.VR == "SQ":
            for item in elem.value:
                apply_profile(item, ctx, on_item)
                if on_item is not None:
                    on_item(item)
    # Private creators stay only for blocks that still hold a safe element.
    for tag in [t for t in ds.keys() if t.is_private_creator]:
        if (tag.group << 16) | tag.element not in safe_creators:
            del ds[tag]

"""Synthetic protected health information, placed wherever scanners put it.

Every name is *generated* from syllables (never a list of real people), and
every identifier comes from the seed; the point is to give de-identification
realistic things to find: names in several character sets (Latin-1,
Cyrillic, Chinese in UTF-8 with an ideographic component), identifiers,
birth dates, addresses, accession numbers, physicians, operators, stations,
vendor private tags, identifiers inside free-text descriptions and dates
embedded in UIDs.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np

#: pydicom's registered UID root for generated UIDs; everything after it is ours.
UID_ROOT = "1.2.826.0.1.3680043.8.498."

_LATIN_ON = ["Bra", "Cor", "Dal", "El", "Fen", "Gar", "Hol", "Is", "Jor", "Kel", "Lun", "Mar", "Nor", "Or",
             "Pel", "Quin", "Ros", "Sal", "Tor", "Ul", "Val", "Wen", "Yar", "Zel"]
_LATIN_MID = ["a", "e", "i", "o", "u", "ae", "ei", "ou", "é", "ö", "å", "ü", "ø", "è"]
_LATIN_CODA = ["lin", "ron", "vik", "sen", "berg", "dor", "mont", "quist", "hardt", "ley", "ssier", "nez",
               "ric", "tal", "win", "zak"]
_GIVEN_ON = ["Al", "Be", "Ca", "Da", "E", "Fi", "Gi", "Ha", "I", "Jo", "Ka", "Le", "Mi", "No", "O", "Pa",
             "Ri", "Sa", "Te", "Vi"]
_GIVEN_CODA = ["ra", "na", "lia", "ris", "ton", "mir", "ella", "vin", "dra", "nus", "rine", "las", "mo", "zia"]
_CYR_ON = ["Вол", "Кар", "Лев", "Мир", "Нор", "Сав", "Тар", "Бел", "Гор", "Дан"]
_CYR_MID = ["а", "о", "е", "и", "у"]
_CYR_CODA = ["ский", "ов", "ин", "енко", "ович"]
_CYR_GIVEN = ["Ари", "Вели", "Дари", "Ела", "Зори", "Ками", "Лади", "Мира", "Ради", "Свет"]
_CYR_GIVEN_CODA = ["на", "слав", "мир", "ан", "ия"]
# Chinese: common surnames with rare given-name pairings, romanised in pinyin.
_ZH_SURNAME = {"王": "Wang", "李": "Li", "张": "Zhang", "刘": "Liu", "陈": "Chen", "杨": "Yang", "黄": "Huang",
               "赵": "Zhao", "吴": "Wu", "周": "Zhou", "徐": "Xu", "孙": "Sun", "马": "Ma", "朱": "Zhu"}
_ZH_GIVEN = {"梓": "zi", "轩": "xuan", "涵": "han", "睿": "rui", "泽": "ze", "昕": "xin", "瑶": "yao", "霖": "lin",
             "璟": "jing", "珂": "ke", "翊": "yi", "岚": "lan", "澈": "che", "芮": "rui", "骁": "xiao", "沐": "mu"}
_ZH_CITY = ["杭州市", "成都市", "南京市", "武汉市", "西安市"]
_ZH_ROAD = ["梧桐路", "银杏街", "青禾路", "云栖大道", "枫林巷"]
_STREETS = ["Alderbank Road", "Quillfeather Lane", "Morrow Street", "Juniper Close", "Saltmarsh Avenue"]
_TOWNS = ["Elmstead", "Northvale", "Cranmoor", "Ashgrove", "Brightwater"]
_INSTITUTIONS = [("Northvale General Hospital", "12 Harbour Road, Northvale"),
                 ("St. Elowen Medical Centre", "4 Cathedral Walk, Cranmoor"),
                 ("Ashgrove University Hospital", "200 College Drive, Ashgrove"),
                 ("青禾市第一人民医院", "青禾市云栖大道88号"),
                 ("Brightwater Chest Clinic", "7 Pier Street, Brightwater")]


@dataclass
class Person:
    """A synthetic person; ``dicom_name`` is a PN value in ``charset``."""

    family: str
    given: str
    dicom_name: str
    charset: str | None   # SpecificCharacterSet, None for the default repertoire
    romanized: str        # ASCII form, e.g. for burned-in text


@dataclass
class PatientIdentity:
    person: Person
    sex: str
    birth_date: dt.date
    patient_id: str
    other_id: str
    issuer: str
    address: str
    phone: str
    height_m: float
    weight_kg: float


@dataclass
class StudyIdentity:
    study_date: dt.date
    study_time: dt.time
    accession: str
    study_id: str
    institution: str
    institution_address: str
    department: str
    referring: Person
    performing: Person
    reading: Person
    operator: Person
    station: str
    device_serial: str
    uid_key: int


def _ascii(s: str) -> str:
    table = str.maketrans({"é": "e", "ö": "o", "å": "a", "ü": "u", "ø": "o", "è": "e"})
    return s.translate(table)


def make_person(rng: np.random.Generator, style: str | None = None) -> Person:
    """A generated name; ``style`` is latin, latin1, cyrillic or chinese (random when None)."""
    style = style or str(rng.choice(["latin", "latin1", "cyrillic", "chinese"], p=[0.35, 0.25, 0.15, 0.25]))
    pick = lambda seq: seq[int(rng.integers(len(seq)))]  # noqa: E731
    if style == "chinese":
        fam = pick(list(_ZH_SURNAME))
        g = "".join(pick(list(_ZH_GIVEN)) for _ in range(int(rng.integers(1, 3))))
        fam_py = _ZH_SURNAME[fam]
        g_py = "".join(_ZH_GIVEN[c] for c in g).capitalize()
        name = f"{fam_py}^{g_py}={fam}^{g}"
        return Person(fam_py, g_py, name, "ISO_IR 192", f"{fam_py.upper()} {g_py.upper()}")
    if style == "cyrillic":
        fam = pick(_CYR_ON) + pick(_CYR_MID) + pick(_CYR_CODA)
        given = pick(_CYR_GIVEN) + pick(_CYR_GIVEN_CODA)
        translit = _translit(fam), _translit(given)
        return Person(fam, given, f"{fam}^{given}", "ISO_IR 144", f"{translit[0].upper()} {translit[1].upper()}")
    fam = pick(_LATIN_ON) + pick(_LATIN_MID if style == "latin1" else ["a", "e", "i", "o", "u"]) + pick(_LATIN_CODA)
    given = pick(_GIVEN_ON) + pick(_GIVEN_CODA)
    if style == "latin":
        return Person(fam, given, f"{fam.upper()}^{given.upper()}", None, f"{fam.upper()} {given.upper()}")
    return Person(fam, given, f"{fam}^{given}", "ISO_IR 100", f"{_ascii(fam).upper()} {given.upper()}")


_TR = dict(zip("абвгдеёжзийклмнопрстуфхцчшщъыьэюяАБВГДЕЁЖЗИЙКЛМНОПРСТУФХЦЧШЩЪЫЬЭЮЯ",
               ["a", "b", "v", "g", "d", "e", "e", "zh", "z", "i", "y", "k", "l", "m", "n", "o", "p", "r", "s", "t",
                "u", "f", "kh", "ts", "ch", "sh", "sch", "", "y", "", "e", "yu", "ya"] * 2))


def _translit(s: str) -> str:
    out = "".join(_TR.get(c, c) for c in s)
    return out[:1].upper() + out[1:]


def make_patient(rng: np.random.Generator, sex: str, age_at_first: int, first_date: dt.date) -> PatientIdentity:
    person = make_person(rng)
    birth = first_date - dt.timedelta(days=int(age_at_first * 365.25 + rng.integers(0, 365)))
    if person.charset == "ISO_IR 192" and rng.random() < 0.7:
        address = f"{_ZH_CITY[int(rng.integers(5))]}{_ZH_ROAD[int(rng.integers(5))]}{int(rng.integers(1, 300))}号"
    else:
        address = f"{int(rng.integers(1, 400))} {_STREETS[int(rng.integers(5))]}, {_TOWNS[int(rng.integers(5))]}"
    return PatientIdentity(
        person=person, sex=sex, birth_date=birth,
        patient_id=f"{int(rng.integers(10**7, 10**8))}",
        other_id=f"MRN{int(rng.integers(10**6, 10**7))}",
        issuer=str(rng.choice(["NVGH", "SEMC", "AUH", "QHFH"])),
        address=address, phone=f"+99-{int(rng.integers(100, 999))}-{int(rng.integers(1000000, 9999999))}",
        height_m=round(float(rng.uniform(1.5, 1.92)), 2), weight_kg=round(float(rng.uniform(48, 115)), 1))


def make_study_identity(rng: np.random.Generator, date: dt.date) -> StudyIdentity:
    inst, addr = _INSTITUTIONS[int(rng.integers(len(_INSTITUTIONS)))]
    chinese_site = not inst.isascii()
    # Staff names follow the hospital's locale; patients come from anywhere.
    staff = (lambda: make_person(rng, "chinese")) if chinese_site else \
        (lambda: make_person(rng, str(rng.choice(["latin", "latin1"], p=[0.6, 0.4]))))
    t = dt.time(int(rng.integers(7, 20)), int(rng.integers(60)), int(rng.integers(60)))
    return StudyIdentity(
        study_date=date, study_time=t, accession=f"A{int(rng.integers(10**8, 10**9))}",
        study_id=str(int(rng.integers(1000, 99999))), institution=inst, institution_address=addr,
        department="放射科" if chinese_site else str(rng.choice(["Radiology", "Diagnostic Imaging"])),
        referring=staff(), performing=staff(), reading=staff(), operator=staff(),
        station=f"CT{int(rng.integers(1, 9))}-{str(rng.choice(['EAST', 'WEST', 'ER', 'OPD']))}",
        device_serial=f"{int(rng.integers(10**4, 10**6))}", uid_key=int(rng.integers(10**9, 10**10)))


def uid(kind: int, key: int, when: dt.datetime, *parts: int) -> str:
    """``<root><kind>.<key>.<yyyymmddhhmmss>[.<part>...]``: a UID with its date inside, as many scanners make them."""
    s = f"{UID_ROOT}{kind}.{key}.{when:%Y%m%d%H%M%S}" + "".join(f".{p}" for p in parts)
    if len(s) > 64:
        raise ValueError("UID too long")
    return s


def age_string(birth: dt.date, on: dt.date) -> str:
    years = on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))
    return f"{years:03d}Y"

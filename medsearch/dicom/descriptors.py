"""Clean Descriptors: scrub free text down to imaging vocabulary.

Free-text descriptions (SeriesDescription, StudyDescription, ProtocolName,
ImageComments, ...) are where technologists type names, MRNs and dates.  No
pattern can find every identifier in free text, so cleaning works the other way
round: a token survives only if it is known imaging vocabulary or a short
measurement ("1.25MM", "120KV"); everything else is dropped.  "CT CHEST W/O
CONTRAST 1.25MM" stays useful; "CHEST JOHN DOE 12345678" becomes "CHEST".

The cost is that a description made only of unknown words becomes empty: we
prefer losing a description to leaking a name.
"""

from __future__ import annotations

import re

#: Words that may survive cleaning: modality, anatomy, technique and series vocabulary.
SAFE_WORDS = frozenset("""
CT MR MRI CTA PET SPECT CR DX US XA NM RT SR OT SEG
AX AXIAL COR CORONAL SAG SAGITTAL OBL OBLIQUE MPR MIP MINIP VR 3D 2D SCOUT TOPOGRAM LOCALIZER LOC
HEAD BRAIN NECK CHEST THORAX LUNG LUNGS PULMONARY ABDOMEN ABD PELVIS SPINE CSPINE TSPINE LSPINE
CARDIAC HEART CORONARY AORTA LIVER KIDNEY KIDNEYS RENAL BONE BONES SOFT TISSUE MEDIASTINUM MEDIASTINAL
EXTREMITY KNEE SHOULDER HIP ANKLE WRIST ELBOW HAND FOOT WHOLE BODY WB SINUS SINUSES ORBIT ORBITS
LEFT RIGHT BILATERAL LT RT BIL UPPER LOWER
WITH WITHOUT W WO W/O W/ AND OR NO NON CONTRAST CONT IV ORAL ENHANCED UNENHANCED PLAIN NATIVE
ARTERIAL VENOUS PORTAL DELAYED LATE EARLY PHASE PHASES ANGIO ANGIOGRAPHY PERFUSION
HIGH LOW RES RESOLUTION HR HRCT THIN THICK SLICE SLICES RECON RECONSTRUCTION STANDARD STD SHARP SMOOTH
KERNEL LUNG_KERNEL BONE_KERNEL SOFT_KERNEL FILTER ITERATIVE DOSE LDCT SCREENING ROUTINE PROTOCOL
INSPIRATION EXPIRATION INSP EXP PRONE SUPINE FEET HEAD_FIRST FIRST
T1 T2 FLAIR DWI ADC SWI GRE SE TSE FSE STIR PD DIXON FAT SAT WATER IN OUT OPP POST PRE GAD
SERIES STUDY IMAGE IMAGES EXAM SUMMARY DOSE_REPORT REPORT
""".split())

#: A short measurement: at most 3 integer digits (never a year, date or MRN), an optional unit.
_MEASURE = re.compile(r"^[+-]?\d{1,3}(\.\d{1,3})?(MM|CM|M|KV|KVP|MAS|MA|S|MS|SEC|%|X|MIN|H)?$")
_SPLIT = re.compile(r"[\s,;:_\-()\[\]{}|]+")
MAX_LEN = 64


def clean_text(value: str) -> str:
    """Keep only vocabulary tokens and short measurements; '' when nothing survives."""
    kept = []
    for token in _SPLIT.split(str(value).upper()):
        if not token:
            continue
        if token in SAFE_WORDS or _MEASURE.match(token):
            kept.append(token)
        elif "+" in token and all(t in SAFE_WORDS or _MEASURE.match(t) for t in token.split("+") if t):
            kept.append(token)  # "C+" / "T1+GAD" style
    return " ".join(kept)[:MAX_LEN].strip()

"""A hospital's own archive as training data: DICOM series plus reports.

Reports come from a CSV or JSONL file keyed by accession number (columns
``accession_number`` and ``report`` — or ``report_en``/``report_zh``), or from
DICOM SR documents in the archive.  The accession number is used in memory
only, to join a report to its study; nothing identifying is kept: the study key
is a hash of the StudyInstanceUID, only pixel data is read from the images, and
report text is scrubbed of names, dates and IDs (:func:`scrub_report`).
Finding labels for the attribute heads are parsed from the report by the
terminology.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
from tqdm import tqdm

from medsearch.errors import InputError
from medsearch.models.data import Study, _study_key, save_cached, scrub_report


def read_reports(path: Path) -> dict[str, dict]:
    """accession number -> {"en": text, "zh": text} from a CSV or JSONL file."""
    path = Path(path)
    rows: list[dict] = []
    if path.suffix.lower() == ".csv":
        with path.open(encoding="utf-8-sig", newline="") as fh:
            rows = list(csv.DictReader(fh))
    elif path.suffix.lower() in (".jsonl", ".json"):
        rows = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    else:
        raise InputError("The reports file must be .csv or .jsonl.",
                         "Export reports as CSV or JSONL with columns accession_number and report.")
    out = {}
    for row in rows:
        acc = str(row.get("accession_number") or "").strip()
        if not acc:
            raise InputError("A row of the reports file has no accession_number.",
                             "Give every report its study's accession number.")
        en = row.get("report_en") or row.get("report") or ""
        out[acc] = {"en": en, "zh": row.get("report_zh") or en}
    return out


def _sr_text(ds) -> str:
    parts = []
    for item in getattr(ds, "ContentSequence", []) or []:
        if getattr(item, "ValueType", "") == "TEXT" and getattr(item, "TextValue", ""):
            parts.append(str(item.TextValue))
        parts.append(_sr_text(item))
    return "\n".join(p for p in parts if p)


def _findings_from_report(text: str) -> list[dict]:
    from medsearch.query import parse

    out = []
    for f in parse(text).findings:
        if f.negated:
            continue
        size = f.size_max or f.size_min
        out.append({"type": f.concept.term, "site": f.site.term if f.site else None, "laterality": f.laterality,
                    "density": f.density, "diameter_mm": size})
    return out


def load_hospital_archive(archive: Path, reports: Path | None, cache_dir=None, progress: bool = True,
                          spacing_mm=None, shape=None) -> list[Study]:
    """Studies of a hospital archive: the largest CT series of each study with its report, resampled
    onto the canonical grid ``spacing_mm``/``shape`` (None: the default grid)."""
    from medsearch.models.data import _load_main_series, grid_cache_dir
    from medsearch.models.preprocess import CANONICAL_SHAPE

    files = [p for p in Path(archive).rglob("*") if p.is_file()]
    series: dict[str, list[Path]] = defaultdict(list)
    study_of: dict[str, tuple[str, str]] = {}
    sr_reports: dict[str, str] = {}
    for p in tqdm(files, desc="scan", unit="file", disable=not progress):
        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - not DICOM: skipped, like ingest does
            continue
        modality = str(getattr(ds, "Modality", ""))
        if modality == "SR":
            sr_reports[str(getattr(ds, "AccessionNumber", ""))] = _sr_text(ds)
        elif modality == "CT" and "LOCALIZER" not in [str(v).upper() for v in getattr(ds, "ImageType", [])]:
            series[str(ds.SeriesInstanceUID)].append(p)
            study_of[str(ds.SeriesInstanceUID)] = (str(ds.StudyInstanceUID), str(getattr(ds, "AccessionNumber", "")))
    texts = {acc: {"en": t, "zh": t} for acc, t in sr_reports.items()}
    if reports:
        texts.update(read_reports(reports))
    main: dict[str, str] = {}
    for uid, paths in series.items():
        study = study_of[uid][0]
        if study not in main or len(paths) > len(series[main[study]]):
            main[study] = uid
    cache = grid_cache_dir(cache_dir, shape or CANONICAL_SHAPE)
    studies = []
    for study_uid, series_uid in tqdm(sorted(main.items()), desc="load", unit="study", disable=not progress):
        report = texts.get(study_of[series_uid][1])
        if not report:
            continue
        key = _study_key(study_uid)
        cached = cache / f"{key}.npy" if cache else None
        if cached is not None and cached.exists():
            hu = np.load(cached)
        else:
            hu = _load_main_series(series[series_uid], spacing_mm, shape)
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                save_cached(cached, hu)
        en, zh = scrub_report(report["en"]), scrub_report(report["zh"])
        studies.append(Study(key, hu, _findings_from_report(en), en, zh))
    if not studies:
        raise InputError("No CT study of the archive has a report.",
                         "Pass --reports FILE (CSV/JSONL keyed by accession_number) or include DICOM SR reports.")
    return studies

"""Generating a whole archive: DICOM tree, ``labels.jsonl``, ``reports.jsonl`` and previews.

Layout (folder names carry no identifiers)::

    OUT/dicom/ST00000/SE001/IM00001.dcm     localizer
    OUT/dicom/ST00000/SE002/IM000NN.dcm     main axial series (or one enhanced multi-frame file)
    OUT/dicom/ST00000/SE003/...             thick mediastinal series (some studies)
    OUT/dicom/ST00000/SE099/IM00001.dcm     burned-in secondary capture (a few studies)
    OUT/labels.jsonl                        ground truth, one study per line
    OUT/reports.jsonl                       {"accession_number", "report_en", "report_zh"} per study
    OUT/preview/                            PNGs with --preview
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from tqdm import tqdm

from medsearch.errors import InputError
from medsearch.synth.acquisition import MATRICES
from medsearch.synth.dicom_writer import write_study
from medsearch.synth.study import generate_study


def _one(args) -> dict:
    seed, index, matrix, out, preview = args
    study = generate_study(seed, index, matrix)
    folder = Path(out) / "dicom" / f"ST{index:05d}"
    records = write_study(study, folder, seed)
    labels = dict(study.labels)
    paths = {r["series_uid"]: r for r in records}
    labels["series"] = [{**s, "path": f"dicom/{folder.name}/{paths[s['series_uid']]['path']}", "files": paths[s["series_uid"]]["files"]}
                        for s in labels["series"]]
    if preview:
        from medsearch.synth.preview import write_previews

        write_previews(study, Path(out) / "preview" / f"ST{index:05d}")
    return labels


def generate_archive(out: Path, studies: int, seed: int, matrix: int = 128, preview: bool = False,
                     workers: int | None = None, progress: bool = True) -> dict:
    """Write ``studies`` synthetic studies under ``out``; returns a summary.

    Args:
        workers: processes (default: the machine's cores); output is identical
            for any number of workers.
    """
    if studies < 1:
        raise InputError("--studies must be at least 1.", "pass --studies N with N >= 1.")
    if int(matrix) not in MATRICES:
        raise InputError(f"matrix {matrix} is not supported.", f"use one of {', '.join(map(str, MATRICES))}.")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError("the output path exists and is not a folder.", "choose a new folder for OUT.")
    if (out / "labels.jsonl").exists():
        raise InputError("the output folder already holds an archive (labels.jsonl).",
                         "choose an empty folder or delete the old archive first.")
    out.mkdir(parents=True, exist_ok=True)
    workers = workers or max(1, min(os.cpu_count() or 1, studies))
    jobs = [(int(seed), i, int(matrix), str(out), bool(preview)) for i in range(studies)]
    t0 = time.perf_counter()
    results: list[dict] = []
    bar = tqdm(total=studies, desc="synth", unit="study", disable=not progress)
    if workers == 1:
        for j in jobs:
            results.append(_one(j))
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for r in pool.map(_one, jobs, chunksize=1):
                results.append(r)
                bar.update()
    bar.close()
    with open(out / "labels.jsonl", "w", encoding="utf-8") as fh:
        for r in results:
            fh.write(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n")
    with open(out / "reports.jsonl", "w", encoding="utf-8") as fh:
        for r in results:
            fh.write(json.dumps({"accession_number": r["accession_number"], "report_en": r["report_en"],
                                 "report_zh": r["report_zh"]}, ensure_ascii=False, sort_keys=True) + "\n")
    elapsed = time.perf_counter() - t0
    counts: dict[str, int] = {}
    for r in results:
        for f in r["findings"]:
            counts[f["type"]] = counts.get(f["type"], 0) + 1
    return {"studies": studies, "patients": len({r["patient_index"] for r in results}),
            "files": sum(s["files"] for r in results for s in r["series"]),
            "normal": sum(r["normal"] for r in results), "findings": counts, "seconds": round(elapsed, 2),
            "out": str(out)}

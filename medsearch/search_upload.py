"""Query by example from an uploaded DICOM series: de-identified in memory, never stored.

The upload goes through the same de-identification as ingest
(:func:`medsearch.dicom.deidentify.deidentify`, the instance's PS3.15 options
and keys) before any pixel reaches the encoder, and nothing is written: no
file, no database row, no vault record, no index vector.  Only the embedding
and the predicted findings leave this module, and they are dropped after the
search.
"""

from __future__ import annotations

import io

import numpy as np

from medsearch.errors import InputError

MAX_FILES = 4000


def _read(item):
    import pydicom
    from pydicom.errors import InvalidDicomError

    from medsearch.dicom.reading import quiet

    data = item if isinstance(item, (bytes, bytearray, memoryview)) else getattr(item, "read", None)
    if data is None:
        raise InputError("An uploaded item is neither bytes nor a binary file.", "Upload the DICOM files themselves.")
    raw = bytes(data) if not callable(data) else data()
    try:
        with quiet():
            return pydicom.dcmread(io.BytesIO(raw), force=False)
    except (InvalidDicomError, EOFError, ValueError, TypeError, OSError):
        raise InputError("An uploaded file is not a DICOM file.", "Upload only the DICOM files of one CT series.") \
            from None


def deidentified_datasets(inst, files) -> list:
    """Read and de-identify uploaded files in memory; all must belong to one series."""
    from medsearch.dicom.deidentify import Keys, deidentify
    from medsearch.dicom.profile import Options
    from medsearch.dicom.quarantine import Quarantined

    files = list(files or [])
    if not files:
        raise InputError("No files were uploaded.", "Upload the DICOM files of one CT series.")
    if len(files) > MAX_FILES:
        raise InputError(f"More than {MAX_FILES} files were uploaded.", "Upload one series at a time.")
    keys, options = Keys.from_instance(inst), Options.from_settings(inst.settings)
    datasets, series = [], set()
    for item in files:
        ds = _read(item)
        try:
            result = deidentify(ds, keys, options)
        except Quarantined as exc:
            raise InputError(f"The upload cannot be used: {exc.problem}", exc.fix) from None
        series.add(result.series)
        datasets.append(result.dataset)
    if len(series) != 1:
        raise InputError(f"The upload holds {len(series)} series.", "Upload the files of exactly one series.")
    return datasets


def encode_upload(inst, files) -> tuple[np.ndarray, list[dict], int]:
    """(embedding, predicted findings, number of files) of an uploaded series."""
    from medsearch.dicom.volume import load_series
    from medsearch.models.registry import get_encoder

    datasets = deidentified_datasets(inst, files)
    vol = load_series(datasets)  # a SeriesError names what is wrong with the geometry
    encoded = get_encoder(inst).encode_volume(vol)
    findings = [dict(f) for f in (encoded.findings or [])]
    for f in findings:  # the encoder speaks "type"/"finding_type" depending on the caller
        f.setdefault("finding_type", f.get("type"))
    return np.asarray(encoded.embedding, dtype=np.float32).reshape(-1), findings, len(datasets)

"""Synthetic chest-CT archive: anatomy, findings, acquisitions, PHI, DICOM, reports, ground truth.

Public API (imported lazily, so that ``import medsearch.synth`` stays cheap):

- :func:`generate_study` ``(seed, index, matrix=128, findings=None) -> SynthStudy``: the in-memory
  study (HU volume ``(z, y, x)`` float32, spacing, affine, labels, lobe map, finding masks), exactly
  what the DICOM files of that study decode to.
- :func:`generate_archive` ``(out, studies, seed, matrix=128, preview=False, workers=None)``: the
  DICOM archive with ``labels.jsonl`` and ``reports.jsonl``.
"""

from __future__ import annotations

__all__ = ["generate_study", "generate_archive", "SynthStudy"]


def __getattr__(name):
    if name in ("generate_study", "SynthStudy"):
        from medsearch.synth import study

        return getattr(study, name)
    if name == "generate_archive":
        from medsearch.synth.archive import generate_archive

        return generate_archive
    raise AttributeError(name)

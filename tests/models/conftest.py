"""Fixtures of the model tests: a tiny phantom dataset built from the vocabulary.

The phantom is drawn directly on a small canonical-like grid (z, y, x) = (32, 48, 48):
a soft-tissue body, two air-filled lungs, and each finding as a blob of its
density in its lobe.  It is small and fast, for shape, determinism and resume
tests; the shipped model is trained on the synthetic archive (medsearch.synth).
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from medsearch import vocab
from medsearch.models.data import Study

#: A small grid (the towers are fully convolutional) keeps the tests fast; the shipped
#: model's grid is medsearch.models.preprocess.CANONICAL_SHAPE.
CANONICAL_SHAPE = (32, 48, 48)

# Lobe centres on the canonical grid (z, y, x); RAS: the patient's right is high x.
_LOBE_CENTRE = {"right upper lobe": (22, 24, 33), "right middle lobe": (16, 20, 34),
                "right lower lobe": (11, 28, 33), "left upper lobe": (22, 24, 15),
                "left lower lobe": (11, 28, 15)}
_DENSITY_HU = {"solid": 40.0, "part-solid": -300.0, "ground-glass": -550.0, "calcified": 400.0}


def _phantom(findings: list[dict], rng: np.random.Generator) -> np.ndarray:
    z, y, x = np.mgrid[:CANONICAL_SHAPE[0], :CANONICAL_SHAPE[1], :CANONICAL_SHAPE[2]]
    hu = np.full(CANONICAL_SHAPE, -1000.0, dtype=np.float32)
    hu[((y - 24) / 20) ** 2 + ((x - 24) / 23) ** 2 < 1] = 40.0
    for cx in (15, 33):
        hu[((y - 25) / 14) ** 2 + ((x - cx) / 7) ** 2 + ((z - 16) / 13) ** 2 < 1] = -850.0
    for f in findings:
        cz, cy, cx = _LOBE_CENTRE[f["site"]]
        r = max(1.0, f["diameter_mm"] / 2 / 7.2)
        hu[((z - cz) * 10 / 7.2) ** 2 + (y - cy) ** 2 + (x - cx) ** 2 < r * r] = _DENSITY_HU[f["density"]]
    hu += rng.normal(0, 15, hu.shape).astype(np.float32)
    return np.clip(hu, -1024, 3071).astype(np.int16)


def make_phantom_studies(n: int, seed: int) -> list[Study]:
    rng, nrng = random.Random(seed), np.random.default_rng(seed)
    studies = []
    for i in range(n):
        findings = []
        for _ in range(rng.choice((0, 1, 1, 2))):
            lobe = rng.choice(vocab.LOBES)
            findings.append({"type": "nodule", "site": lobe, "laterality": vocab.LOBE_SIDE[lobe],
                             "density": rng.choice(vocab.DENSITIES), "diameter_mm": rng.uniform(6, 30)})
        text = ". ".join(f"{f['density']} nodule in the {f['site']}, {f['diameter_mm']:.0f} mm"
                         for f in findings) or "No abnormality."
        studies.append(Study(f"phantom-{seed}-{i}", _phantom(findings, nrng), findings, text, text))
    return studies


@pytest.fixture(scope="session")
def phantom_studies():
    return make_phantom_studies(12, seed=1)

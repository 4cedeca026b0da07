"""The closed vocabulary shared by the synthetic archive, the terminology, the
model's attribute heads and the search filters.

These strings are the terminology's preferred terms (``terminology/``); labels,
predictions and parsed queries all use them, so that a finding generated as
"ground-glass opacity" in the "left lower lobe" is predicted, parsed and
matched under the same names.
"""

from __future__ import annotations

FINDING_TYPES: tuple[str, ...] = (
    "nodule", "mass", "ground-glass opacity", "consolidation", "pleural effusion", "pneumothorax",
    "emphysema", "atelectasis", "cavity",
)

LOBES: tuple[str, ...] = (
    "right upper lobe", "right middle lobe", "right lower lobe", "left upper lobe", "left lower lobe",
)
#: The lingula is part of the left upper lobe; a finding may be sited there.
LINGULA = "lingula"
#: Sites of findings: a lobe (or the lingula) for parenchymal findings,
#: a lung for diffuse ones, the pleura for effusion and pneumothorax.
SITES: tuple[str, ...] = LOBES + (LINGULA, "right lung", "left lung", "pleura")

LATERALITIES: tuple[str, ...] = ("left", "right", "bilateral")
DENSITIES: tuple[str, ...] = ("solid", "part-solid", "ground-glass", "calcified")
SHAPES: tuple[str, ...] = ("round", "lobulated", "spiculated")
COUNTS: tuple[str, ...] = ("single", "multiple")
CHANGES: tuple[str, ...] = ("new", "growing", "stable", "resolved")

#: Size bins (mm, upper bound exclusive) used by the attribute heads.
SIZE_BINS_MM: tuple[float, ...] = (6.0, 10.0, 20.0, 30.0, float("inf"))

LOBE_SIDE = {
    "right upper lobe": "right", "right middle lobe": "right", "right lower lobe": "right",
    "left upper lobe": "left", "left lower lobe": "left", LINGULA: "left",
    "right lung": "right", "left lung": "left",
}
#: part-of: lingula ⊂ left upper lobe ⊂ left lung, etc.
PARENT_SITE = {
    "right upper lobe": "right lung", "right middle lobe": "right lung", "right lower lobe": "right lung",
    "left upper lobe": "left lung", "left lower lobe": "left lung", LINGULA: "left upper lobe",
}


def size_bin(diameter_mm: float) -> int:
    for i, upper in enumerate(SIZE_BINS_MM):
        if diameter_mm < upper:
            return i
    return len(SIZE_BINS_MM) - 1


def site_within(site: str, query_site: str) -> bool:
    """True when ``site`` is ``query_site`` or part of it (lingula within left lung)."""
    while site:
        if site == query_site:
            return True
        site = PARENT_SITE.get(site, "")
    return False

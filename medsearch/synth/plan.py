"""Who is scanned when: patients, their follow-up studies and what each study shows.

The plan is a pure function of the seed, computed patient by patient, so that
study ``index`` can be generated without generating the studies before it
(training reads studies at random), and so that an archive of N studies is
the first N studies of any larger archive with the same seed.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from medsearch.synth.anatomy import PatientAnatomy, sample_anatomy
from medsearch.synth.findings import FindingSpec, sample_finding, sample_nodule, split_bilateral
from medsearch.synth.phi import PatientIdentity, make_patient

#: Relative frequency of finding types in studies that have findings.
TYPE_WEIGHTS = {"nodule": 0.3, "ground-glass opacity": 0.1, "consolidation": 0.1, "pleural effusion": 0.12,
                "atelectasis": 0.1, "emphysema": 0.07, "mass": 0.07, "pneumothorax": 0.06, "cavity": 0.06}
TRAJECTORIES = ("appears", "grows", "stable", "resolves")


def rng_for(seed: int, *path: int) -> np.random.Generator:
    """An independent generator for a node of the plan (seed, kind, patient, visit, ...)."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, *path])


@dataclass
class PatientPlan:
    seed: int
    index: int
    n_visits: int
    sex: str
    age: int
    first_date: dt.date
    anatomy: PatientAnatomy
    identity: PatientIdentity
    chronic: list[FindingSpec]
    tracked: FindingSpec | None
    trajectory: str | None
    intervals: list[int] = field(default_factory=list)


def patient_plan(seed: int, p: int) -> PatientPlan:
    rng = rng_for(seed, 1, p)
    n = int(rng.choice([1, 2, 3], p=[0.78, 0.14, 0.08]))
    sex = str(rng.choice(["M", "F"]))
    age = int(np.clip(rng.normal(62, 13), 25, 92))
    first = dt.date(2014, 1, 1) + dt.timedelta(days=int(rng.integers(0, 365 * 9)))
    anatomy = sample_anatomy(rng, sex, age)
    identity = make_patient(rng, sex, age, first)
    chronic = []
    if rng.random() < 0.12 + (0.1 if age > 65 else 0):
        chronic += split_bilateral(sample_finding(rng, "emphysema"))
    if rng.random() < 0.12:
        granuloma = sample_nodule(rng)
        granuloma.density, granuloma.shape = "calcified", "round"
        granuloma.diameter_mm = round(float(rng.uniform(3, 8)), 1)
        granuloma.lesion_id = f"p{p}-granuloma"
        chronic.append(granuloma)
    tracked, trajectory = None, None
    if n > 1 and rng.random() < 0.85:
        trajectory = str(rng.choice(TRAJECTORIES))
        tracked = sample_nodule(rng)
        if tracked.density == "calcified":
            tracked.density = "solid"
        tracked.diameter_mm = round(float(rng.uniform(4, 14)), 1)
        tracked.shape = "round" if tracked.shape == "spiculated" and trajectory != "grows" else tracked.shape
        tracked.lesion_id = f"p{p}-tracked"
    intervals = [int(rng.integers(80, 500)) for _ in range(n - 1)]
    return PatientPlan(seed, p, n, sex, age, first, anatomy, identity, chronic, tracked, trajectory, intervals)


@lru_cache(maxsize=64)
def _visit_table(seed: int, upto: int) -> tuple[tuple[int, int], ...]:
    table: list[tuple[int, int]] = []
    p = 0
    while len(table) <= upto:
        n = int(rng_for(seed, 1, p).choice([1, 2, 3], p=[0.78, 0.14, 0.08]))
        table += [(p, v) for v in range(n)]
        p += 1
    return tuple(table)


def locate(seed: int, index: int) -> tuple[int, int]:
    """(patient, visit) of study ``index``."""
    upto = max(64, 1 << int(index).bit_length())
    return _visit_table(seed, upto)[index]


@dataclass
class VisitPlan:
    patient: PatientPlan
    visit: int
    date: dt.date
    findings: list[FindingSpec]
    resolved: list[FindingSpec]     # lesions of the prior study no longer seen
    prior_date: dt.date | None


def _tracked_at(pp: PatientPlan, v: int) -> tuple[FindingSpec | None, FindingSpec | None]:
    """The tracked lesion as seen at visit ``v`` and, if it resolved, as last seen."""
    t = pp.tracked
    if t is None:
        return None, None
    import copy
    spec = copy.deepcopy(t)
    rng = rng_for(pp.seed, 3, pp.index)
    growth = [1.0] + [float(rng.uniform(1.2, 1.55)) for _ in range(pp.n_visits)]
    if pp.trajectory == "appears":
        if v == 0:
            return None, None
        spec.change = "new" if v == 1 else "stable"
        spec.prior_diameter_mm = None if v == 1 else spec.diameter_mm
        return spec, None
    if pp.trajectory == "grows":
        d = t.diameter_mm * float(np.prod(growth[: v + 1]))
        spec.diameter_mm = round(min(d, 29.0), 1)
        if v > 0:
            spec.change = "growing"
            spec.prior_diameter_mm = round(min(t.diameter_mm * float(np.prod(growth[:v])), 29.0), 1)
        return spec, None
    if pp.trajectory == "stable":
        if v > 0:
            spec.change, spec.prior_diameter_mm = "stable", spec.diameter_mm
        return spec, None
    # resolves: present until the last visit
    if v == pp.n_visits - 1:
        return None, spec
    if v > 0:
        spec.change, spec.prior_diameter_mm = "stable", spec.diameter_mm
    return spec, None


def visit_plan(seed: int, index: int) -> VisitPlan:
    p, v = locate(seed, index)
    pp = patient_plan(seed, p)
    date = pp.first_date + dt.timedelta(days=sum(pp.intervals[:v]))
    prior = pp.first_date + dt.timedelta(days=sum(pp.intervals[: v - 1])) if v > 0 else None
    rng = rng_for(seed, 2, p, v)
    findings: list[FindingSpec] = []
    import copy
    for c in pp.chronic:
        c2 = copy.deepcopy(c)
        if v > 0 and c2.type == "nodule":
            c2.change, c2.prior_diameter_mm = "stable", c2.diameter_mm
        findings.append(c2)
    tracked, resolved = _tracked_at(pp, v)
    if tracked is not None:
        findings.append(tracked)
    # Acute or incidental findings of this study: a realistic share of studies is normal.
    n_new = int(rng.choice([0, 1, 2, 3, 4], p=[0.38, 0.3, 0.18, 0.09, 0.05]))
    names = list(TYPE_WEIGHTS)
    w = np.array([TYPE_WEIGHTS[k] for k in names])
    used_pleura: set[str] = set()
    for _ in range(n_new):
        if len(findings) >= 4:
            break
        ftype = names[int(rng.choice(len(names), p=w / w.sum()))]
        if ftype == "emphysema" and any(f.type == "emphysema" for f in findings):
            continue
        spec = sample_finding(rng, ftype)
        if ftype in ("pleural effusion", "pneumothorax"):
            sides = {"left", "right"} if spec.laterality == "bilateral" else {spec.laterality}
            if sides & used_pleura:
                continue
            used_pleura |= sides
        if ftype == "nodule" and rng.random() < 0.25 and len(findings) <= 2:
            extra = [sample_nodule(rng, "multiple") for _ in range(int(rng.integers(1, 3)))]
            spec.count = "multiple"
            for e in extra:
                e.diameter_mm = round(min(e.diameter_mm, 8.0), 1)
                e.density = "solid" if e.density == "part-solid" else e.density
            new = [spec] + extra
        else:
            new = split_bilateral(spec)
        if len(findings) + len(new) > 4:
            continue
        if v > 0:
            for f in new:
                f.change = "new"
        findings += new
    n_nod = sum(f.type == "nodule" for f in findings)
    for f in findings:
        if f.type == "nodule":
            f.count = "multiple" if n_nod > 1 else "single"
    return VisitPlan(pp, v, date, findings, [resolved] if resolved else [], prior)

"""Findings: what a study shows (sampling), and drawing them into the chest (rendering).

A :class:`FindingSpec` is what a radiologist would report (type, site, size,
density, shape); :func:`render_findings` draws each into the clean HU volume and
returns the voxel mask it occupies, from which the labels' centre and slice
range are measured.  Realistic attenuation (HU) per the issue:

=============  ===========================
solid lesion   20-60
ground glass   -700 to -300
fluid          0-20
calcification  above 200
=============  ===========================
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from medsearch.synth.anatomy import SITE_CODES, Anatomy, PatientAnatomy
from medsearch.synth.geometry import Grid
from medsearch.synth.tubes import Segments, rasterize
from medsearch.vocab import LINGULA, LOBE_SIDE, LOBES

#: Types whose lesion is a discrete, measurable focus.
FOCAL = ("nodule", "mass", "cavity")
PLEURAL = ("pleural effusion", "pneumothorax")


@dataclass
class FindingSpec:
    """One finding as reported; ``diameter_mm`` is the long axis (or the depth of a pleural collection)."""

    type: str
    site: str
    laterality: str
    diameter_mm: float | None
    short_axis_mm: float | None = None
    density: str | None = None
    shape: str | None = None
    count: str = "single"
    seed: int = 0
    lesion_id: str | None = None     # the same lesion across a patient's studies
    change: str | None = None        # new | growing | stable (vs. the prior study)
    prior_diameter_mm: float | None = None
    sides: dict = field(default_factory=dict)  # per-side depth for bilateral pleural findings
    hu: float | None = None


@dataclass
class RenderedFinding:
    spec: FindingSpec
    mask: np.ndarray        # bool (z, y, x) on the study grid
    center_body: tuple[float, float, float]


# --------------------------------------------------------------------------- sampling
_LOBE_WEIGHTS = {"right upper lobe": 0.26, "right middle lobe": 0.1, "right lower lobe": 0.22,
                 "left upper lobe": 0.2, "left lower lobe": 0.22}


def _lobe(rng: np.random.Generator, weights=None) -> str:
    w = weights or _LOBE_WEIGHTS
    names = list(w)
    p = np.array([w[n] for n in names])
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def sample_nodule(rng: np.random.Generator, count: str = "single") -> FindingSpec:
    density = str(rng.choice(["solid", "ground-glass", "part-solid", "calcified"], p=[0.5, 0.2, 0.15, 0.15]))
    if density == "calcified":
        d = rng.uniform(3, 10)
        shape = "round"
    else:
        d = float(np.exp(rng.uniform(np.log(4), np.log(29))))
        shape = str(rng.choice(["round", "lobulated", "spiculated"], p=[0.5, 0.3, 0.2] if d > 8 else [0.8, 0.15, 0.05]))
    lobe = _lobe(rng)
    return FindingSpec("nodule", lobe, LOBE_SIDE[lobe], round(float(d), 1), density=density, shape=shape,
                       count=count, seed=int(rng.integers(2**31)))


def sample_finding(rng: np.random.Generator, ftype: str) -> FindingSpec:
    """A random finding of ``ftype`` with plausible site, size, density and shape."""
    seed = int(rng.integers(2**31))
    if ftype == "nodule":
        return sample_nodule(rng)
    if ftype == "mass":
        lobe = _lobe(rng)
        return FindingSpec("mass", lobe, LOBE_SIDE[lobe], round(float(rng.uniform(31, 60)), 1), density="solid",
                           shape=str(rng.choice(["lobulated", "spiculated", "round"], p=[0.45, 0.45, 0.1])), seed=seed)
    if ftype == "cavity":
        lobe = _lobe(rng, {**_LOBE_WEIGHTS, "right upper lobe": 0.4, "left upper lobe": 0.3})
        return FindingSpec("cavity", lobe, LOBE_SIDE[lobe], round(float(rng.uniform(15, 45)), 1), density="solid",
                           shape=str(rng.choice(["round", "lobulated"], p=[0.5, 0.5])), seed=seed)
    if ftype in ("consolidation", "ground-glass opacity"):
        lobe = _lobe(rng, {**_LOBE_WEIGHTS, "right lower lobe": 0.32, "left lower lobe": 0.3})
        density = "solid" if ftype == "consolidation" else "ground-glass"
        return FindingSpec(ftype, lobe, LOBE_SIDE[lobe], round(float(rng.uniform(25 if density == "solid" else 15, 60)), 1),
                           density=density, seed=seed)
    if ftype == "atelectasis":
        lobe = _lobe(rng, {"right middle lobe": 0.2, "right lower lobe": 0.35, "left lower lobe": 0.35,
                           "left upper lobe": 0.1})
        return FindingSpec("atelectasis", lobe, LOBE_SIDE[lobe], round(float(rng.uniform(20, 55)), 1),
                           density="solid", seed=seed)
    if ftype == "pleural effusion":
        lat = str(rng.choice(["right", "left", "bilateral"], p=[0.4, 0.25, 0.35]))
        sides = {s: round(float(rng.uniform(10, 55)), 1) for s in (("right", "left") if lat == "bilateral" else (lat,))}
        return FindingSpec("pleural effusion", "pleura", lat, max(sides.values()), sides=sides, seed=seed,
                           hu=float(rng.uniform(4, 18)))
    if ftype == "pneumothorax":
        lat = str(rng.choice(["right", "left"]))
        return FindingSpec("pneumothorax", "pleura", lat, round(float(rng.uniform(6, 35)), 1), sides={lat: 0},
                           seed=seed)
    if ftype == "emphysema":
        lat = str(rng.choice(["bilateral", "right", "left"], p=[0.8, 0.1, 0.1]))
        site = {"right": "right lung", "left": "left lung", "bilateral": "right lung"}[lat]
        return FindingSpec("emphysema", site, lat, None, seed=seed)
    raise ValueError(ftype)


def split_bilateral(spec: FindingSpec) -> list[FindingSpec]:
    """Emphysema is labelled per lung (its site is a lung); bilateral becomes two findings."""
    if spec.type == "emphysema" and spec.laterality == "bilateral":
        return [FindingSpec("emphysema", "right lung", "right", None, seed=spec.seed),
                FindingSpec("emphysema", "left lung", "left", None, seed=spec.seed + 1)]
    return [spec]


# --------------------------------------------------------------------------- rendering
def _box(grid_axes, center, half: float):
    """Slices of the grid within ``half`` mm of ``center`` and the local coordinates."""
    xs, ys, zs = grid_axes
    sl = []
    for ax, c in ((zs, center[2]), (ys, center[1]), (xs, center[0])):
        lo = int(np.searchsorted(ax, c - half))
        hi = int(np.searchsorted(ax, c + half))
        sl.append(slice(max(lo, 0), min(hi, len(ax))))
    Z = zs[sl[0]][:, None, None]
    Y = ys[sl[1]][None, :, None]
    X = xs[sl[2]][None, None, :]
    return tuple(sl), X, Y, Z


def _sphere_cov(X, Y, Z, c, r, h, stretch=(1.0, 1.0, 1.0)):
    d = np.sqrt(((X - c[0]) / stretch[0]) ** 2 + ((Y - c[1]) / stretch[1]) ** 2 + ((Z - c[2]) / stretch[2]) ** 2)
    return np.clip((r - d) / h + 0.5, 0.0, 1.0).astype(np.float32)


def _choose_center(rng, anatomy: Anatomy, grid: Grid, codes, radius: float, tries: int = 400):
    """A body-frame point inside the lobe(s) ``codes`` with a margin; candidates come from ``rng``
    so that the same patient's follow-up studies pick the same point."""
    xs, ys, zs = grid.axes()
    lo = np.array([xs[0], ys[0], zs[0]])
    hi = np.array([xs[-1], ys[-1], zs[-1]])
    inside = np.isin(anatomy.lobes, codes)
    if not inside.any():
        return None
    kk, jj, ii = np.nonzero(inside)
    blo = np.array([xs[ii.min()], ys[jj.min()], zs[kk.min()]])
    bhi = np.array([xs[ii.max()], ys[jj.max()], zs[kk.max()]])
    margin = min(radius * 0.8, 12.0)
    offs = np.array([[0, 0, 0], [margin, 0, 0], [-margin, 0, 0], [0, margin, 0], [0, -margin, 0],
                     [0, 0, margin], [0, 0, -margin]])
    for _ in range(tries):
        c = rng.uniform(blo, bhi)
        pts = c + offs
        if np.any(pts < lo) or np.any(pts > hi):
            continue
        ok = True
        for p in pts:
            k, j, i = grid.to_index(p)
            if not inside[k, j, i]:
                ok = False
                break
        if ok:
            return c
    k = len(kk) // 2
    return np.array([xs[ii[k]], ys[jj[k]], zs[kk[k]]])


def render_findings(specs: list[FindingSpec], anatomy: Anatomy, grid: Grid, anat: PatientAnatomy,
                    patient_rng_seed: int) -> list[RenderedFinding]:
    """Draw ``specs`` into ``anatomy.hu`` (in place) and return their masks.

    Pleural findings are drawn first: they take space from the lung, and
    parenchymal findings are then placed in what lung remains.
    """
    order = sorted(range(len(specs)), key=lambda i: specs[i].type not in PLEURAL)
    out: dict[int, RenderedFinding] = {}
    axes = grid.axes()
    h = float(grid.spacing[2])
    for i in order:
        spec = specs[i]
        # Lesions tracked across studies are placed by a patient-level generator.
        seed = [patient_rng_seed, hash_str(spec.lesion_id)] if spec.lesion_id else [spec.seed]
        rng = np.random.default_rng(seed)
        fn = _RENDER[spec.type]
        rendered = fn(spec, rng, anatomy, grid, axes, h, anat)
        out[i] = rendered
    return [out[i] for i in range(len(specs))]


def hash_str(s: str) -> int:
    """A stable (process-independent) integer for a string; Python's hash() is salted."""
    v = 0
    for ch in s.encode():
        v = (v * 131 + ch) % (2**31 - 1)
    return v


def _site_codes(spec: FindingSpec):
    return SITE_CODES[spec.site]


def _focal(spec, rng, anatomy, grid, axes, h, anat):
    r = spec.diameter_mm / 2
    c = _choose_center(rng, anatomy, grid, _site_codes(spec), r)
    _maybe_lingula(spec, anatomy, grid, c)
    sl, X, Y, Z = _box(axes, c, r * 1.8 + 12)
    lung = anatomy.lobes[sl] > 0
    sub = anatomy.hu[sl]
    # Long and short axes: a slightly ellipsoidal lesion.
    short = spec.short_axis_mm or round(spec.diameter_mm * float(rng.uniform(0.75, 0.95)), 1)
    spec.short_axis_mm = short
    stretch = (1.0, short / spec.diameter_mm, float(rng.uniform(short / spec.diameter_mm, 1.0)))
    if spec.shape == "lobulated":
        cov = _sphere_cov(X, Y, Z, c, r * 0.78, h, stretch)
        for _ in range(int(rng.integers(3, 6))):
            v = rng.normal(size=3)
            v = v / np.linalg.norm(v) * r * 0.38
            cov = np.maximum(cov, _sphere_cov(X, Y, Z, c + v * np.array(stretch), r * 0.6, h, stretch))
    else:
        cov = _sphere_cov(X, Y, Z, c, r, h, stretch)
    if spec.shape == "spiculated":
        n = int(rng.integers(7, 15))
        dirs = rng.normal(size=(n, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        p0 = c + dirs * r * 0.8
        p1 = c + dirs * r * rng.uniform(1.3, 1.9, size=(n, 1))
        sub_grid = Grid(sub.shape, grid.spacing, (float(X.ravel()[0]), float(Y.ravel()[0]), float(Z.ravel()[0])))
        spic = rasterize(Segments(p0.astype(np.float32), p1.astype(np.float32),
                                  np.full(n, 1.2, np.float32), np.full(n, 0.4, np.float32)), sub_grid)
        cov = np.maximum(cov, spic * 0.8)
    cov *= lung
    density = spec.density
    if spec.type == "cavity":
        val = float(rng.uniform(30, 50))
        sub += cov * (val - sub)
        wall = float(rng.uniform(2.5, min(8.0, r * 0.45)))
        ecc = rng.normal(size=3) * wall * 0.3
        inner = _sphere_cov(X, Y, Z, c + ecc, r - wall, h, stretch) * lung
        sub += inner * (-1000.0 - sub)
        spec.hu = val
    elif density == "ground-glass":
        val = float(rng.uniform(-650, -420))
        sub += cov * (np.maximum(sub, val) - sub)
        spec.hu = val
    elif density == "part-solid":
        val = float(rng.uniform(-620, -420))
        sub += cov * (np.maximum(sub, val) - sub)
        core = _sphere_cov(X, Y, Z, c + rng.normal(size=3) * r * 0.15, r * float(rng.uniform(0.3, 0.55)), h) * lung
        sub += core * (float(rng.uniform(25, 50)) - sub)
        spec.hu = val
    elif density == "calcified":
        val = float(rng.uniform(350, 1100))
        sub += cov * (val - sub)
        spec.hu = val
    else:
        val = float(rng.uniform(25, 55))
        sub += cov * (val - sub)
        if spec.type == "mass" and rng.random() < 0.4:  # central necrosis
            nec = _sphere_cov(X, Y, Z, c, r * 0.4, h, stretch) * lung
            sub += nec * (float(rng.uniform(8, 18)) - sub)
        spec.hu = val
    mask = np.zeros(grid.shape, bool)
    mask[sl] = cov > 0.5
    return RenderedFinding(spec, _ensure(mask, grid, c), tuple(float(v) for v in c))


def _ensure(mask, grid, c):
    """A lesion smaller than a voxel still occupies the voxel at its centre."""
    if not mask.any():
        mask[grid.to_index(c)] = True
    return mask


def _maybe_lingula(spec, anatomy, grid, c):
    """A left-upper-lobe lesion that landed in the lingula is reported there."""
    if spec.site == "left upper lobe" and anatomy.lobes[grid.to_index(c)] == 6:
        spec.site = LINGULA


def _smooth_noise(rng, shape, sigma):
    n = rng.standard_normal(shape).astype(np.float32)
    n = ndimage.gaussian_filter(n, sigma)
    return n / (n.std() + 1e-6)


def _region(spec, rng, anatomy, grid, axes, h, anat):
    """Consolidation, ground-glass opacity, atelectasis: lobe-confined regions."""
    r = spec.diameter_mm / 2
    codes = _site_codes(spec)
    c = _choose_center(rng, anatomy, grid, codes, min(r, 10))
    _maybe_lingula(spec, anatomy, grid, c)
    codes = _site_codes(spec)  # a lingular lesion stays in the lingula
    sl, X, Y, Z = _box(axes, c, r + 8)
    lobe = np.isin(anatomy.lobes[sl], codes)
    sub = anatomy.hu[sl]
    if spec.type == "atelectasis":
        # Plate-like: thin in z, long in-plane, tilted.
        t = float(rng.uniform(3, 6))
        ang = float(rng.uniform(0, np.pi))
        tilt = float(rng.uniform(-0.3, 0.3))
        u = (X - c[0]) * math.cos(ang) + (Y - c[1]) * math.sin(ang)
        v = -(X - c[0]) * math.sin(ang) + (Y - c[1]) * math.cos(ang)
        w = (Z - c[2]) - tilt * u
        e = np.sqrt((u / r) ** 2 + (v / (r * 0.45)) ** 2 + (w / t) ** 2)
        cov = np.clip((1 - e) * min(r * 0.45, t) / h + 0.5, 0, 1) * lobe
        val = float(rng.uniform(25, 45))
        sub += cov * (val - sub)
    else:
        stretch = np.array([1.0, rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.0)])
        e = np.sqrt(((X - c[0]) / (r * stretch[0])) ** 2 + ((Y - c[1]) / (r * stretch[1])) ** 2
                    + ((Z - c[2]) / (r * stretch[2])) ** 2)
        noise = _smooth_noise(rng, e.shape, 4.0 / h)
        field_ = e + 0.18 * noise
        cov = np.clip((1 - field_) * r / h * 0.5 + 0.5, 0, 1).astype(np.float32) * lobe
        if spec.type == "consolidation":
            val = float(rng.uniform(22, 45))
            sub += cov * (val - sub)
            air = anatomy.airway[sl] & (cov > 0.5)   # air bronchograms
            sub[air] = -930.0
        else:
            val = float(rng.uniform(-600, -380))
            sub += cov * (np.maximum(sub, val + 60 * noise) - sub)
    spec.hu = val
    mask = np.zeros(grid.shape, bool)
    mask[sl] = cov > 0.5
    mask = _ensure(mask, grid, c)
    if not mask[grid.to_index(c)]:  # an irregular edge left the template centre outside: use the nearest voxel
        kk, jj, ii = np.nonzero(mask)
        k0, j0, i0 = grid.to_index(c)
        best = int(np.argmin((kk - k0) ** 2 + (jj - j0) ** 2 + (ii - i0) ** 2))
        xs, ys, zs = axes
        c = np.array([xs[ii[best]], ys[jj[best]], zs[kk[best]]])
    # The measured long axis is that of the drawn region, not of the template.
    spec.diameter_mm = round(float(min(max(_extent_mm(mask, grid), 3.0), 60.0)), 1)
    return RenderedFinding(spec, mask, tuple(float(v) for v in c))


def _extent_mm(mask, grid) -> float:
    kk, jj, ii = np.nonzero(mask)
    dz, dy, dx = grid.spacing
    return float(max((ii.max() - ii.min() + 1) * dx, (jj.max() - jj.min() + 1) * dy, (kk.max() - kk.min() + 1) * dz))


def _side_lung(anatomy, side):
    return np.isin(anatomy.lobes, SITE_CODES[f"{side} lung"])


def _effusion(spec, rng, anatomy, grid, axes, h, anat):
    """Dependent, layering fluid: a posterior crescent deepest at the base, with a meniscus."""
    xs, ys, zs = axes
    dy = grid.spacing[1]
    mask = np.zeros(grid.shape, bool)
    for side, depth in spec.sides.items():
        lung = _side_lung(anatomy, side)
        if not lung.any():
            continue
        kk = np.nonzero(lung.any(axis=(1, 2)))[0]
        z_lo, z_hi = zs[kk.min()], zs[kk.max()]
        height = min(depth * 3.0 + 30, (z_hi - z_lo) * 0.7)
        prof = np.clip((z_lo + height - zs) / height, 0, 1) ** 0.6 * depth       # (nz,)
        # Posterior-most lung row of every (z, x) column: the fluid layers from there forward.
        rev = lung[:, ::-1, :]
        has = rev.any(axis=1)
        post = (lung.shape[1] - 1 - rev.argmax(axis=1)).astype(np.float32)      # (nz, nx)
        lateral = np.abs(xs[None, :] - 3.0) / 150.0          # meniscus: higher laterally
        thick = prof[:, None] * (0.8 + 0.5 * np.clip(lateral, 0, 1)) / dy
        j = np.arange(lung.shape[1], dtype=np.float32)[None, :, None]
        # Only columns whose lung reaches the dependent chest wall collect fluid (not those ending
        # against the heart or the mediastinum in front of it).
        floor = np.where(has, post, -1).max(axis=1, keepdims=True)
        dependent = has & (post >= floor - 25.0 / dy)
        fluid = lung & dependent[:, None, :] & (j > post[:, None, :] - thick[:, None, :])
        mask |= fluid
    hu_f = spec.hu if spec.hu is not None else 10.0
    anatomy.hu[mask] = hu_f
    anatomy.lobes[mask] = 0
    anatomy.tissue[mask] = 7
    # Compressed lung just above the fluid is denser (relaxation atelectasis is reported separately).
    rim = ndimage.binary_dilation(mask, iterations=1) & (anatomy.lobes > 0)
    anatomy.hu[rim] = anatomy.hu[rim] * 0.7 + 0.3 * (-300.0)
    mask = _ensure(mask, grid, (0.0, 0.0, 0.0)) if not mask.any() else mask
    return RenderedFinding(spec, mask, _center_in(mask, grid, spec, axes))


def _center_in(mask, grid, spec, axes):
    """The mask voxel nearest the centroid of the largest side (body frame)."""
    xs, ys, zs = axes
    m = mask
    if spec.laterality == "bilateral" and spec.sides:
        big = max(spec.sides, key=spec.sides.get)
        half = xs < 0 if big == "right" else xs >= 0
        if (m & half[None, None, :]).any():
            m = m & half[None, None, :]
    kk, jj, ii = np.nonzero(m)
    ck, cj, ci = kk.mean(), jj.mean(), ii.mean()
    best = int(np.argmin((kk - ck) ** 2 + (jj - cj) ** 2 + (ii - ci) ** 2))
    return float(xs[ii[best]]), float(ys[jj[best]]), float(zs[kk[best]])


def _pneumothorax(spec, rng, anatomy, grid, axes, h, anat):
    """Apical rim of air between the chest wall and the displaced lung edge."""
    xs, ys, zs = axes
    side = spec.laterality
    lung = _side_lung(anatomy, side)
    mask = np.zeros(grid.shape, bool)
    if lung.any():
        kk = np.nonzero(lung.any(axis=(1, 2)))[0]
        z_lo, z_hi = zs[kk.min()], zs[kk.max()]
        z_cut = z_hi - (z_hi - z_lo) * 0.55
        k0 = int(np.searchsorted(zs, z_cut))
        sub = lung[k0:]
        dist = ndimage.distance_transform_edt(np.pad(sub, ((0, 1), (0, 0), (0, 0))), sampling=grid.spacing)[:-1]
        w = spec.diameter_mm * np.clip((zs[k0:] - z_cut) / (z_hi - z_cut), 0, 1) ** 0.7
        w = np.maximum(w, 0)[:, None, None]
        air = sub & (dist <= w)
        line = sub & (dist > w) & (dist <= w + h) & (w > 0)
        mask[k0:] = air
        hu = anatomy.hu[k0:]
        hu[air] = -1000.0
        hu[line] = 0.5 * hu[line] + 0.5 * (-150.0)
        spec.hu = -1000.0
        anatomy.lobes[mask] = 0
        anatomy.tissue[mask] = 0
    mask = _ensure(mask, grid, (0.0, 0.0, 0.0)) if not mask.any() else mask
    return RenderedFinding(spec, mask, _center_in(mask, grid, spec, axes))


def _emphysema(spec, rng, anatomy, grid, axes, h, anat):
    """Centrilobular low-attenuation areas without walls, upper-zone predominant."""
    xs, ys, zs = axes
    lung = _side_lung(anatomy, spec.laterality)
    kk = np.nonzero(lung.any(axis=(1, 2)))[0]
    if len(kk) == 0:
        return RenderedFinding(spec, _ensure(np.zeros(grid.shape, bool), grid, (0, 0, 0)), (0.0, 0.0, 0.0))
    k0, k1 = kk.min(), kk.max() + 1
    zrel = (zs[k0:k1] - zs[k0]) / max(zs[k1 - 1] - zs[k0], 1)
    weight = (0.25 + zrel ** 1.5)[:, None, None]
    noise = _smooth_noise(rng, (k1 - k0,) + grid.shape[1:], (2.5 / grid.spacing[0], 2.5 / h, 2.5 / h))
    severity = float(rng.uniform(1.3, 2.2))
    holes = lung[k0:k1] & (noise * weight > severity * 0.55) & (anatomy.hu[k0:k1] < -700)
    sub = anatomy.hu[k0:k1]
    sub[holes] = rng.uniform(-990, -960)
    mask = np.zeros(grid.shape, bool)
    mask[k0:k1] = holes
    mask = _ensure(mask, grid, (0.0, 0.0, 0.0)) if not mask.any() else mask
    return RenderedFinding(spec, mask, _center_in(mask, grid, spec, axes))


_RENDER = {"nodule": _focal, "mass": _focal, "cavity": _focal, "consolidation": _region,
           "ground-glass opacity": _region, "atelectasis": _region, "pleural effusion": _effusion,
           "pneumothorax": _pneumothorax, "emphysema": _emphysema}

__all__ = ["FindingSpec", "RenderedFinding", "render_findings", "sample_finding", "sample_nodule",
           "split_bilateral", "LINGULA", "LOBES"]

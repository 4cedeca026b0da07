"""Chest anatomy that varies per patient: body wall, bones, mediastinum, five lobes, trees.

Everything is modelled in a *body frame* in mm with the LPS axes: ``x`` to the
patient's left, ``y`` posterior, ``z`` superior, ``x = 0`` on the midline and
``z = 0`` at the lung apices.  The acquisition places the body frame in the
scanner (table height, centring), so one patient keeps the same anatomy across
follow-up studies while the images move.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from medsearch.synth.geometry import Grid, smoothstep
from medsearch.synth.tubes import Segments, grow_tree, rasterize, rasterize_layers

#: Lobe codes in :attr:`Anatomy.lobes`; the lingula is coded separately but belongs to the LUL.
LOBE_CODES = {"right upper lobe": 1, "right middle lobe": 2, "right lower lobe": 3,
              "left upper lobe": 4, "left lower lobe": 5, "lingula": 6}
SITE_CODES = {**{k: (v,) for k, v in LOBE_CODES.items()}, "left upper lobe": (4, 6),
              "right lung": (1, 2, 3), "left lung": (4, 5, 6)}

#: Tissue codes in :attr:`Anatomy.tissue` (the dominant tissue of a voxel, for tests and training).
TISSUES = {"air": 0, "fat": 1, "soft tissue": 2, "bone": 3, "lung": 4, "blood": 5, "liver": 6,
           "fluid": 7, "cartilage": 8}


@dataclass
class PatientAnatomy:
    """Per-patient anatomical parameters (mm, HU)."""

    sex: str
    body_a: float          # half width of the chest
    body_b: float          # half antero-posterior depth
    fat: float             # subcutaneous fat thickness
    muscle: float          # chest-wall muscle thickness
    lung_h: float          # apex to posterior costophrenic recess
    lung_hu: float         # parenchymal attenuation (inspiration, age)
    dependent_hu: float    # extra attenuation of dependent (posterior) lung
    heart_scale: float
    heart_shift: float
    heart_angle: float
    med_scale: float
    dome_r: float          # right dome height as a fraction of lung_h below the apex
    dome_l: float
    fiss_r: float          # posterior start of the oblique fissures (fraction of lung_h)
    fiss_l: float
    horiz: float           # horizontal fissure level (fraction of lung_h)
    fiss_phase: float
    vb_radius: float
    vert_height: float
    bone_hu: float         # cancellous bone (lower with age)
    breast: float          # 0 for none
    tree_seed: int
    extra: dict = field(default_factory=dict)


def sample_anatomy(rng: np.random.Generator, sex: str, age: int) -> PatientAnatomy:
    size = rng.normal(0.0, 1.0)
    male = sex == "M"
    return PatientAnatomy(
        sex=sex,
        body_a=float(np.clip(158 + 14 * size + (10 if male else -6), 128, 190)),
        body_b=float(np.clip(118 + 10 * size + rng.normal(0, 6) + (4 if male else 0), 85, 140)),
        fat=float(np.clip(rng.gamma(3.0, 5.0) + (0 if male else 6), 3, 45)),
        muscle=float(rng.uniform(8, 16) + (3 if male else 0)),
        lung_h=float(np.clip(255 + 18 * size + rng.normal(0, 14) + (12 if male else -8), 205, 310)),
        lung_hu=float(rng.uniform(-885, -835)),
        dependent_hu=float(rng.uniform(25, 80)),
        heart_scale=float(rng.uniform(0.9, 1.15) + (0.05 if age > 70 else 0.0)),
        heart_shift=float(rng.normal(0, 6)),
        heart_angle=float(np.deg2rad(rng.uniform(30, 50))),
        med_scale=float(rng.uniform(0.9, 1.15)),
        dome_r=float(rng.uniform(0.68, 0.78)),
        dome_l=float(rng.uniform(0.04, 0.08)),
        fiss_r=float(rng.uniform(0.26, 0.36)),
        fiss_l=float(rng.uniform(0.22, 0.32)),
        horiz=float(rng.uniform(0.46, 0.56)),
        fiss_phase=float(rng.uniform(0, 2 * np.pi)),
        vb_radius=float(rng.uniform(14, 18) + (1.5 if male else 0)),
        vert_height=float(rng.uniform(22, 27)),
        bone_hu=float(np.clip(330 - 2.2 * (age - 40) + rng.normal(0, 25), 150, 380)),
        breast=0.0 if male else float(rng.uniform(0.6, 1.3)),
        tree_seed=int(rng.integers(0, 2**31 - 1)),
    )


@dataclass
class Anatomy:
    """A rendered chest: clean HU (before blur and noise) and the masks findings need."""

    hu: np.ndarray        # float32 (z, y, x)
    lobes: np.ndarray     # uint8 (z, y, x): LOBE_CODES, 0 outside the lungs
    tissue: np.ndarray    # uint8 (z, y, x): TISSUES
    airway: np.ndarray    # bool: airway lumen inside the lungs (stays air in consolidation)
    vessel: np.ndarray    # float32 coverage of pulmonary vessels inside the lungs
    landmarks: dict


class _Frame:
    """Broadcastable body-frame coordinates of a grid and per-slice body dimensions."""

    def __init__(self, anat: PatientAnatomy, grid: Grid):
        xs, ys, zs = grid.axes()
        self.X = xs[None, None, :]
        self.Y = ys[None, :, None]
        self.Z = zs[:, None, None]
        a, L = anat, anat.lung_h
        z = self.Z
        self.a = a.body_a * (0.84 + 0.16 * smoothstep(30.0, -0.45 * L, z))
        self.b = a.body_b * (0.88 + 0.12 * smoothstep(30.0, -0.5 * L, z))
        self.y_back = np.float32(a.body_b * 0.86)
        self.by = self.y_back - 0.9 * self.b
        w_ant = 2 + a.fat * 0.7 + a.muscle * 0.8 + 7
        w_post = 2 + a.fat * 0.3 + 17
        w_lat = 2 + a.fat * 0.8 + a.muscle * 0.25 + 7
        self.ta = self.a - w_lat
        front = self.by - self.b
        self.tb = (self.y_back - w_post - (front + w_ant)) / 2
        self.ty = front + w_ant + self.tb
        self.w_ant = w_ant


def _superellipse(X, Y, cx, cy, a, b, p):
    return (np.abs((X - cx) / a) ** p + np.abs((Y - cy) / b) ** p) ** (1.0 / p)


def render_anatomy(anat: PatientAnatomy, grid: Grid, contrast: float | None) -> Anatomy:
    """Render ``anat`` on ``grid`` (whose coordinates are in the body frame).

    Args:
        contrast: blood attenuation in HU for an enhanced study, ``None`` for unenhanced.
    """
    f = _Frame(anat, grid)
    X, Y, Z = f.X, f.Y, f.Z
    L = anat.lung_h
    shape = grid.shape
    hu = np.full(shape, -1000.0, np.float32)
    tissue = np.zeros(shape, np.uint8)

    def paint(mask, value, code):
        np.copyto(hu, np.float32(value), where=mask)
        np.copyto(tissue, np.uint8(code), where=mask)

    def blend(cov, value, code=None, where=None):
        c = cov if where is None else cov * where
        hu[...] = hu + c * (np.float32(value) - hu)
        if code is not None:
            np.copyto(tissue, np.uint8(code), where=c > 0.5)

    blood = 42.0 if contrast is None else contrast
    # Couch: a curved carbon-fibre plate under the patient.
    y_table = f.y_back + 10 + 0.0006 * X ** 2
    paint((Y > y_table) & (Y < y_table + 5) & (np.abs(X) < 230), 180.0, TISSUES["soft tissue"])
    paint((Y >= y_table - 8) & (Y <= y_table) & (np.abs(X) < 215) & (Y > f.y_back + 1), -940.0, 0)

    # Body wall: skin, subcutaneous fat, muscle; breasts in women.
    body = (_superellipse(X, Y, 0, f.by, f.a, f.b, 2.2) < 1) & (Y < f.y_back)
    if anat.breast:
        for side in (-1, 1):
            c = np.array([side * anat.body_a * 0.42, 0, -0.6 * L])
            bx, by_, bz = 58 * anat.breast, 30 * anat.breast, 52 * anat.breast
            front = f.by - f.b * 0.85
            e = ((X - c[0]) / bx) ** 2 + ((Y - front) / by_) ** 2 + ((Z - c[2]) / bz) ** 2
            breast = (e < 1) & (Y < f.by)
            body = body | breast
            paint(breast, 25.0, TISSUES["soft tissue"])           # skin
            inner = (((X - c[0]) / (bx - 2)) ** 2 + ((Y - front) / (by_ - 2)) ** 2
                     + ((Z - c[2]) / (bz - 2)) ** 2 < 1) & (Y < f.by)
            paint(inner, -100.0, TISSUES["fat"])                  # mostly fat ...
    paint(body, 25.0, TISSUES["soft tissue"])
    fat_in = _superellipse(X, Y, 0, f.by, f.a - 2, f.b - 2, 2.2) < 1
    paint(body & fat_in, -105.0, TISSUES["fat"])
    if anat.breast:
        for side in (-1, 1):
            gx = side * anat.body_a * 0.42
            e = ((X - gx) / (30 * anat.breast)) ** 2 + ((Y - (f.by - f.b * 0.92)) / (14 * anat.breast)) ** 2 \
                + ((Z + 0.6 * L) / (30 * anat.breast)) ** 2
            paint(body & (e < 1), 30.0, TISSUES["soft tissue"])    # ... around fibroglandular tissue
    muscle_in = _superellipse(X, Y, 0, f.by + anat.fat * 0.1, f.a - 2 - anat.fat * 0.8,
                              f.b - 2 - anat.fat * 0.7, 2.2) < 1
    paint(body & muscle_in, 48.0, TISSUES["soft tissue"])
    # Intermuscular fat plane between pectoral/serratus and the deeper wall.
    plane = _superellipse(X, Y, 0, f.by, f.a - 4 - anat.fat - anat.muscle * 0.5,
                          f.b - 4 - anat.fat * 0.8 - anat.muscle * 0.5, 2.2)
    paint(body & (np.abs(plane - 1) < 0.012) & (Y < f.ty), -80.0, TISSUES["fat"])

    cavity = _superellipse(X, Y, 0, f.ty, f.ta, f.tb, 2.2) < 1
    paint(cavity, -95.0, TISSUES["fat"])

    # Spine: vertebral body (cortex + cancellous bone) with discs, canal, posterior elements.
    y_post = f.ty + f.tb
    y_vb = y_post - anat.vb_radius - 12
    R = anat.vb_radius
    r_vb = np.hypot(X, Y - y_vb)
    phase = np.mod((Z + 7.0) / anat.vert_height, 1.0)
    disc = phase < 0.2
    vb = r_vb < R
    paint(vb, 700.0, TISSUES["bone"])
    paint((r_vb < R - 2.2) & ~disc, anat.bone_hu, TISSUES["bone"])
    paint(vb & disc, 85.0, TISSUES["soft tissue"])
    y_canal = y_vb + R + 9
    r_can = np.hypot(X, Y - y_canal)
    arch = (r_can < 14) & (Y > y_vb + R - 1) & ~disc
    paint(arch, 600.0, TISSUES["bone"])
    spinous = (np.abs(X) < 4.5) & (Y > y_canal + 8) & (Y < y_canal + 36 - 10 * phase) & ~disc
    paint(spinous, 560.0, TISSUES["bone"])
    transverse = (np.abs(Y - (y_canal - 1)) < 4.5) & (np.abs(X) < 34) & (np.abs(X) > 8) & (phase > 0.35) & (phase < 0.75)
    paint(transverse, 560.0, TISSUES["bone"])
    paint(r_can < 8, 12.0, TISSUES["fluid"])

    # Mediastinal envelope and the lungs.
    mx = np.float32(3.0)
    u = -Z / L
    mw = np.interp(u.ravel(), [-0.3, 0.15, 0.26, 0.36, 0.5, 0.7, 1.3],
                   [24, 25, 38, 34, 32, 28, 28]).astype(np.float32)[:, None, None] * np.float32(anat.med_scale)
    envelope = ((X - mx) / mw) ** 2 + ((Y - f.ty) / f.tb) ** 2 < 1
    hz = -0.71 * L
    zs_ = grid.axes()[2]
    hx = 20 + anat.heart_shift
    hy = float(np.interp(hz, zs_, np.broadcast_to(f.ty - 0.3 * f.tb, (len(zs_), 1, 1)).ravel()))
    ca, sa = math.cos(anat.heart_angle), math.sin(anat.heart_angle)
    hu_ = (X - hx) * ca - (Y - hy) * sa
    hv_ = (X - hx) * sa + (Y - hy) * ca
    hs = anat.heart_scale
    h1, h2, h3 = 64 * hs, 48 * hs, 54 * hs
    heart_e = (hu_ / h1) ** 2 + (hv_ / h2) ** 2 + ((Z - hz) / h3) ** 2
    peri_e = (hu_ / (h1 + 6)) ** 2 + (hv_ / (h2 + 5)) ** 2 + ((Z - hz) / (h3 + 5)) ** 2

    d_desc = np.float32(22.0)
    y_desc = y_vb - R * 0.35
    r_desc = 12.5
    z_arch = -0.27 * L
    desc_excl = (np.hypot(X - d_desc, Y - y_desc) < r_desc + 3) & (Z < z_arch + 5)
    spine_excl = (r_vb < R + 3) | ((np.abs(X) < R) & (Y > y_vb))

    # Lung apices (paraboloid caps) and diaphragm domes.
    side_left = X >= mx
    xs_side = np.where(side_left, 1.0, -1.0) * f.ta * 0.45
    cap = ((X - xs_side) / (f.ta * 0.55)) ** 2 + ((Y - (f.ty + 0.15 * f.tb)) / (f.tb * 0.85)) ** 2
    lung_top = -cap * 0.3 * L
    yd = f.ty - 0.3 * f.tb
    ny_ = np.where(Y > yd, (Y - yd) / (f.ty + f.tb - yd), (Y - yd) / (yd - (f.ty - f.tb)))
    ky = np.where(Y > yd, 0.15 * L, 0.07 * L)
    z_dia_r = -anat.dome_r * L - 0.14 * L * ((X + f.ta * 0.35) / (f.ta * 0.65)) ** 2 - ky * ny_ ** 2
    z_dia_l = (-(anat.dome_r + anat.dome_l) * L - 0.14 * L * ((X - f.ta * 0.35) / (f.ta * 0.65)) ** 2
               - ky * ny_ ** 2)
    # The two domes meet smoothly under the heart.
    w_side = smoothstep(float(mx) - 25.0, float(mx) + 25.0, X)
    z_dia = z_dia_r * (1 - w_side) + z_dia_l * w_side
    above = Z > z_dia
    lung = (cavity & ~envelope & (peri_e > 1) & ~spine_excl & ~desc_excl & (Z < lung_top) & above)

    # Lobes: oblique fissures (posterior-superior to anterior-inferior), horizontal fissure, lingula.
    wob = 4.0 * np.sin(X * 0.045 + anat.fiss_phase) + 3.0 * np.cos(Y * 0.05 + anat.fiss_phase)
    y_p, y_a = f.ty + f.tb, f.ty - f.tb
    frac = (Y - y_a) / (y_p - y_a)
    z_obl_r = -(0.9 - (0.9 - anat.fiss_r) * frac) * L + wob
    z_obl_l = -(0.92 - (0.92 - anat.fiss_l) * frac) * L + wob
    z_hor = -anat.horiz * L + 0.08 * (Y - f.ty) + wob * 0.7
    z_ling = -(anat.horiz + 0.05) * L + 0.1 * (Y - f.ty)
    lobes = np.zeros(shape, np.uint8)
    right = lung & ~side_left
    left = lung & side_left
    lobes[right & (Z < z_obl_r)] = 3
    lobes[right & (Z >= z_obl_r) & (Z < z_hor)] = 2
    lobes[right & (Z >= z_obl_r) & (Z >= z_hor)] = 1
    lobes[left & (Z < z_obl_l)] = 5
    lobes[left & (Z >= z_obl_l) & (Z >= z_ling)] = 4
    lobes[left & (Z >= z_obl_l) & (Z < z_ling)] = 6

    # Parenchyma: gravity-dependent gradient (supine: posterior denser).
    depth = np.clip((Y - y_a) / (y_p - y_a), 0, 1)
    paint(lung, 0, TISSUES["lung"])
    hu[lung] = np.broadcast_to(np.float32(anat.lung_hu) + np.float32(anat.dependent_hu) * depth ** 2, shape)[lung]
    # Apical soft tissue above the lung caps (neck and thoracic inlet).
    paint(cavity & ~lung & ~envelope & (Z > -0.3 * L) & (Z > lung_top) & ~spine_excl, 40.0,
          TISSUES["soft tissue"])
    lungf = lung.astype(np.float32)
    # Fissures: thin pleural sheets, drawn with their partial volume.
    px = float(grid.spacing[2])
    for zf, mask in ((z_obl_r, right), (z_obl_l, left), (z_hor, right & (Z >= z_obl_r))):
        d = np.abs(Z - zf) * 0.75
        cov = np.clip(0.6 / px * (1 - d / max(px, grid.spacing[0] * 0.75)), 0, 1)
        blend(cov, 20.0, where=mask)

    # Pulmonary trees: arteries with their bronchi, and veins; they taper toward the periphery.
    trng = np.random.default_rng(anat.tree_seed)
    xs_, ys_, _ = grid.axes()
    origin = np.array(grid.origin, np.float32)
    spacing = np.array(grid.spacing[::-1], np.float32)

    def inside(points):
        idx = np.rint((points - origin) / spacing).astype(np.int64)
        ok = np.all((idx >= 0) & (idx < np.array(shape[::-1])), axis=1)
        res = np.zeros(len(points), bool)
        res[ok] = lung[idx[ok, 2], idx[ok, 1], idx[ok, 0]]
        return res

    y_tr = y_vb - R - 24
    z_car = -0.36 * L
    r_min = max(0.25, 0.2 * px)
    y_t0 = float(np.asarray(y_tr).ravel()[-1])
    y_tr_car = float(np.interp(z_car, grid.axes()[2], np.asarray(y_tr).ravel()))
    hila = {"right": np.array([-44.0, y_tr_car + 18, z_car - 22]), "left": np.array([44.0, y_tr_car + 22, z_car - 30])}
    arteries, airways, veins = Segments.empty(), Segments.empty(), Segments.empty()
    trunks = {"right": [(-0.35, 0.1, 1.0), (-0.5, -0.9, -0.35), (-0.25, 0.55, -1.0), (-0.8, 0.2, -0.3)],
              "left": [(0.35, 0.05, 1.0), (0.5, -0.9, -0.35), (0.25, 0.55, -1.0), (0.8, 0.2, -0.3)]}
    for side, dirs in trunks.items():
        h = hila[side]
        sl = right if side == "right" else left
        kk, jj, ii = np.nonzero(sl[:, ::2, ::2])
        pick = trng.choice(len(kk), size=min(len(kk), 200), replace=False)
        targets = np.stack([xs_[ii[pick] * 2], ys_[jj[pick] * 2], zs_[kk[pick]]], 1).astype(np.float32)
        for d in dirs:
            skel = grow_tree(trng, h, d, 4.5, inside, r_min, hilum=h, max_segments=900, targets=targets)
            off = np.cross(np.asarray(d, float), [0, 0, 1.0]) if abs(d[2]) < 0.9 else np.array([1.0, 0, 0])
            off = (off / np.linalg.norm(off)).astype(np.float32)
            arteries = arteries.concat(skel.shifted(off, 0.9))
            airways = airways.concat(skel.shifted(-off, 0.9).where(skel.r0 > max(1.2, 0.45 * px)))
        vh = h + np.array([0.0, 12.0, -0.2 * L])
        for d in ((np.sign(h[0]) * 0.7, 0.2, 0.6), (np.sign(h[0]) * 0.8, -0.4, -0.4),
                  (np.sign(h[0]) * 0.4, 0.6, -0.8)):
            veins = veins.concat(grow_tree(trng, vh, d, 4.0, inside, r_min, hilum=vh, max_segments=700,
                                           targets=targets))
    vessel = rasterize(arteries.concat(veins), grid)
    vessel *= lungf
    blend(vessel, blood if contrast is None else contrast * 0.8, TISSUES["blood"])
    wall, lumen = rasterize_layers(airways, grid, ((1.0, 0.6), (0.75, 0.0)))
    wall *= lungf
    lumen *= lungf
    blend(wall, 30.0)
    blend(lumen, -990.0)
    airway = lumen > 0.5

    # Mediastinum: pericardial fat, heart, great vessels, airway, oesophagus.
    heart = (heart_e < 1) & (Z > z_dia - 6)
    paint((peri_e < 1) & (Z > z_dia - 6) & cavity, -90.0, TISSUES["fat"])
    paint(heart, 45.0 if contrast is None else 110.0, TISSUES["soft tissue"])
    if contrast is not None:
        inner = ((hu_ / (h1 - 11)) ** 2 + (hv_ / (h2 - 10)) ** 2 + ((Z - hz) / (h3 - 10)) ** 2 < 1) & heart
        paint(inner, contrast, TISSUES["blood"])
    z_top = float(grid.axes()[2][-1]) + 5
    asc = np.array([-14.0, y_t0 - 28, hz + 0.5 * h3])
    arch_pts, arch_r = [], []
    for t in np.linspace(0, 1, 9):
        x = asc[0] + (d_desc - asc[0]) * t
        y = (y_t0 - 28) + ((float(np.asarray(y_desc).ravel()[-1])) - (y_t0 - 28)) * t
        z = z_arch + 14 * np.sin(np.pi * t)
        arch_pts.append((x, y, z))
        arch_r.append(14.0 - 2.0 * t)
    y_d = float(np.asarray(y_desc).ravel()[0])
    aorta = Segments.polyline([asc] + arch_pts + [(d_desc, y_d, z_arch - 60), (d_desc + 2, y_d - 4, -1.05 * L)],
                              [15.0] + arch_r + [12.5, 12.0])
    pa = Segments.polyline([(hx - 5, hy - 30, hz + 0.55 * h3), (8.0, y_tr_car - 14, z_car - 16),
                            (30.0, y_tr_car + 4, z_car - 6), tuple(hila["left"] + [0, -6, 10])],
                           [14.0, 13.0, 10.0, 8.0])
    rpa = Segments.polyline([(8.0, y_tr_car - 14, z_car - 16), (-20.0, y_tr_car - 4, z_car - 18),
                             tuple(hila["right"] + [0, -4, 4])], [11.0, 10.0, 8.0])
    svc = Segments.polyline([(-30.0, y_t0 - 12, z_top), (-30.0, y_t0 - 14, z_arch - 10), (-24.0, hy - 10, hz + 25)],
                            [8.0, 9.5, 10.0])
    branches = Segments.polyline([(-8.0, y_t0 - 28, z_arch + 12), (-16.0, y_t0 - 22, z_top)], [7.0, 6.0]).concat(
        Segments.polyline([(4.0, y_t0 - 24, z_arch + 14), (8.0, y_t0 - 16, z_top)], [4.5, 4.0])).concat(
        Segments.polyline([(16.0, y_t0 - 10, z_arch + 12), (24.0, y_t0 - 6, -0.1 * L), (60.0, y_t0, z_top)],
                          [5.0, 5.0, 4.5]))
    veins_in = Segments.polyline([tuple(hila["right"] + [4, 14, -0.2 * L]), (hx - 10, hy + 30, hz + 10)], [7.0, 8.0]
                                 ).concat(Segments.polyline([tuple(hila["left"] + [-4, 12, -0.2 * L]),
                                                             (hx + 5, hy + 32, hz + 12)], [7.0, 8.0]))
    # Brachiocephalic veins join into the SVC above the arch (the left one crosses in front of the
    # arch branches); the azygos vein arches over the right main bronchus into the SVC.
    bcv = Segments.polyline([(62.0, y_t0 - 18, z_top), (40.0, y_t0 - 34, z_arch + 30), (0.0, y_t0 - 36, z_arch + 24),
                             (-30.0, y_t0 - 14, z_arch + 14)], [5.5, 6.0, 6.0, 7.5]).concat(
        Segments.polyline([(-55.0, y_t0 - 10, z_top), (-32.0, y_t0 - 12, z_arch + 16)], [6.0, 7.0]))
    y_vb0 = float(np.asarray(y_vb).ravel()[0])
    azygos = Segments.polyline([(-6.0, y_vb0 - R - 2, -0.95 * L), (-8.0, y_vb0 - R - 3, z_car - 5),
                                (-22.0, y_tr_car + 2, z_car + 6), (-30.0, y_t0 - 14, z_arch - 8)], [3.5, 4.0, 4.5, 5.0])
    big = rasterize(aorta.concat(pa).concat(rpa).concat(svc).concat(branches).concat(veins_in).concat(bcv)
                    .concat(azygos), grid)
    blend(big, blood, TISSUES["blood"])
    # Trachea and main bronchi: cartilage/soft-tissue wall around an air lumen.
    tra = Segments.polyline([(-1.0, y_t0, z_top), (0.0, y_tr_car, z_car)], [9.5, 9.0])
    bronchi = Segments.polyline([(0.0, y_tr_car, z_car), tuple(hila["right"] + [4, 2, 4])], [8.0, 6.5]).concat(
        Segments.polyline([(0.0, y_tr_car, z_car), tuple(hila["left"] + [-4, 2, 4])], [7.5, 6.0]))
    ab = tra.concat(bronchi)
    ab_wall, ab_lumen = rasterize_layers(ab, grid, ((1.0, 2.0), (1.0, 0.0)))
    blend(ab_wall, 60.0, TISSUES["soft tissue"])
    blend(ab_lumen, -1000.0, TISSUES["air"])
    eso = Segments.polyline([(4.0, y_t0 + 16, z_top), (8.0, y_tr_car + 20, z_car), (16.0, y_vb.ravel()[0] - R - 6, -0.9 * L)],
                            [7.0, 7.0, 7.5])
    blend(rasterize(eso, grid), 40.0, TISSUES["soft tissue"])

    # Upper abdomen below the domes: diaphragm, liver, stomach with an air-fluid level, spleen.
    below = cavity & ~above & ~spine_excl
    paint(below, -95.0, TISSUES["fat"])
    paint(below & (Z > z_dia - 5), 45.0, TISSUES["soft tissue"])
    # The left lobe of the liver reaches across the midline anteriorly: a curved, not stepped, edge.
    liver_edge = 10 + 70 * smoothstep(f.ty + 0.3 * f.tb, f.ty - 0.7 * f.tb, Y) + 0.1 * (Z - z_dia)
    liver = below & (X < liver_edge) & (Z < z_dia - 2)
    paint(liver, 60.0 if contrast is None else 115.0, TISSUES["liver"])
    zl = -(anat.dome_r + anat.dome_l) * L
    st = ((X - 58) / 46) ** 2 + ((Y - (f.ty - 0.25 * f.tb)) / 38) ** 2 + ((Z - (zl - 48)) / 46) ** 2
    stomach = below & (st < 1)
    paint(stomach, 40.0, TISSUES["soft tissue"])
    st_in = below & (st < 0.72)
    paint(st_in, 12.0, TISSUES["fluid"])
    paint(st_in & (Y < f.ty - 0.25 * f.tb - 14), -1000.0, TISSUES["air"])
    sp = ((X - 88) / 26) ** 2 + ((Y - (f.ty + 0.45 * f.tb)) / 42) ** 2 + ((Z - (zl - 40)) / 52) ** 2
    paint(below & (sp < 1) & ~stomach, 48.0 if contrast is None else 120.0, TISSUES["soft tissue"])
    desc = rasterize(Segments.polyline([(d_desc, y_d, z_arch - 40), (d_desc + 2, y_d - 4, -1.2 * L)],
                                       [12.5, 12.0]), grid)
    blend(desc, blood, TISSUES["blood"])
    # Re-draw the vertebral body on top of mediastinal and abdominal tissue.
    paint(vb & ~disc, 700.0, TISSUES["bone"])
    paint((r_vb < R - 2.2) & ~disc, anat.bone_hu, TISSUES["bone"])

    # Ribs, costal cartilage, sternum, clavicles and scapulae.
    ribs, cart = _ribs(anat, f, grid)
    blend(rasterize(cart, grid), 130.0, TISSUES["cartilage"])
    rib_cov, rib_core = rasterize_layers(ribs, grid, ((1.0, 0.0), (0.55, 0.0)))
    blend(rib_cov, 650.0, TISSUES["bone"])
    blend(rib_core, anat.bone_hu + 60, TISSUES["bone"])
    y_st = f.ty - f.tb - 7
    st_w = np.interp(u.ravel(), [0.05, 0.12, 0.2, 0.3, 0.78, 0.85], [0, 24, 20, 14, 13, 0]).astype(np.float32)
    sternum = ((X / np.maximum(st_w[:, None, None], 1e-3)) ** 2 + ((Y - y_st) / 6.5) ** 2 < 1) & (st_w[:, None, None] > 1)
    paint(sternum, 620.0, TISSUES["bone"])
    st_core = ((X / np.maximum(st_w[:, None, None] - 2, 1e-3)) ** 2 + ((Y - y_st) / 4.5) ** 2 < 1) & (st_w[:, None, None] > 3)
    paint(st_core, anat.bone_hu, TISSUES["bone"])

    landmarks = {"z_carina": float(z_car), "hila": {k: v.tolist() for k, v in hila.items()},
                 "z_dome_right": float(-anat.dome_r * L), "z_dome_left": float(zl), "z_arch": float(z_arch)}
    return Anatomy(hu=hu, lobes=lobes, tissue=tissue, airway=airway, vessel=vessel, landmarks=landmarks)


def _ribs(anat: PatientAnatomy, f: _Frame, grid: Grid) -> tuple[Segments, Segments]:
    """Twelve rib pairs running from the spine around the wall, descending anteriorly."""
    L = anat.lung_h
    zs = grid.axes()[2]
    ta = np.asarray(f.ta).ravel()
    tb = np.asarray(f.tb).ravel()
    ty = np.asarray(f.ty).ravel()

    def at(z, arr):
        return float(np.interp(z, zs, arr if arr.size == zs.size else np.full(zs.size, arr[0])))

    bone, cart = Segments.empty(), Segments.empty()
    spacing = (L * 1.0) / 10.5
    for k in range(12):
        z0 = 12 - k * spacing
        reach = 1.0 if k < 7 else (0.8 if k < 10 else 0.55)
        drop = 75 + 4 * k      # ribs run obliquely down and forward: short arcs in each axial slice
        pts = []
        for t in np.linspace(0, reach, 16):
            phi = np.deg2rad(78 - 150 * t)
            z = z0 - drop * t + 8 * np.sin(np.pi * min(t * 3, 1))
            a_, b_, c_ = at(z, ta), at(z, tb), at(z, ty)
            pts.append((np.cos(phi) * (a_ + 7), c_ + np.sin(phi) * (b_ + 6), z))
        pts = np.array(pts, np.float32)
        pts[0, 0] = 0.5 * (anat.vb_radius + 8)  # costovertebral joint beside the vertebral body
        for side in (-1.0, 1.0):
            p = pts.copy()
            p[:, 0] *= side
            nb = 12 if k < 7 else 16
            r = np.full(len(p), 4.6 - 0.08 * k, np.float32)
            bone = bone.concat(Segments.polyline(p[:nb], r[:nb]))
            if k < 10 and nb < 16:
                end = np.array([side * 6.0, at(p[-1, 2], ty) - at(p[-1, 2], tb) - 6, p[-1, 2] + 4], np.float32)
                cart = cart.concat(Segments.polyline(np.vstack([p[nb - 1:], end[None]]), np.full(len(p) - nb + 2, 4.0)))
    # Clavicles and scapular blades.
    z_cl = 8.0
    a0, b0, t0 = at(z_cl, ta), at(z_cl, tb), at(z_cl, ty)
    for side in (-1.0, 1.0):
        bone = bone.concat(Segments.polyline([(side * 14, t0 - b0 - 8, -0.06 * L), (side * (a0 * 0.7), t0 - b0 * 0.95, z_cl),
                                              (side * (a0 + 18), t0 - b0 * 0.2, z_cl + 12)], [6.5, 6.0, 6.5]))
        for xf in np.linspace(0.45, 0.95, 14):  # rods close enough to merge into a blade
            top = (side * a0 * xf, t0 + b0 * (0.95 - 0.25 * xf) + 18, z_cl - 5)
            low = (side * a0 * (0.55 + 0.2 * xf), t0 + b0 * 0.75 + 16, -0.5 * L + 30 * xf)
            bone = bone.concat(Segments.polyline([top, low], [2.6, 2.0]))
    return bone, cart

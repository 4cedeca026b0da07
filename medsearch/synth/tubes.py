"""Rasterising tapered tubes (vessels, airways, ribs) with partial-volume edges.

Tubes are polylines of segments with a radius at each end.  They are drawn by
"splatting" sample spheres along each segment and keeping the maximum coverage
per voxel, fully vectorised: a chest has thousands of small vessel segments and a
Python loop over them would dominate generation time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from medsearch.synth.geometry import Grid


@dataclass
class Segments:
    """Tube segments in patient mm: ``p0, p1 (n, 3)`` as (x, y, z); radii ``r0, r1 (n,)``."""

    p0: np.ndarray
    p1: np.ndarray
    r0: np.ndarray
    r1: np.ndarray

    @staticmethod
    def empty() -> "Segments":
        z3 = np.zeros((0, 3), np.float32)
        z1 = np.zeros((0,), np.float32)
        return Segments(z3, z3.copy(), z1, z1.copy())

    @staticmethod
    def polyline(points, radii) -> "Segments":
        """Consecutive points joined into segments; ``radii`` per point."""
        p = np.asarray(points, np.float32)
        r = np.asarray(radii, np.float32)
        return Segments(p[:-1], p[1:], r[:-1], r[1:])

    def __len__(self) -> int:
        return len(self.r0)

    def concat(self, other: "Segments") -> "Segments":
        return Segments(np.concatenate([self.p0, other.p0]), np.concatenate([self.p1, other.p1]),
                        np.concatenate([self.r0, other.r0]), np.concatenate([self.r1, other.r1]))

    def shifted(self, offset, scale_by_radius: float = 0.0) -> "Segments":
        """Displaced copy: by ``offset`` (3,), times the local radius when ``scale_by_radius``."""
        off = np.asarray(offset, np.float32)
        if scale_by_radius:
            return Segments(self.p0 + off * (self.r0[:, None] * scale_by_radius),
                            self.p1 + off * (self.r1[:, None] * scale_by_radius), self.r0, self.r1)
        return Segments(self.p0 + off, self.p1 + off, self.r0, self.r1)

    def scaled_radii(self, factor: float, add: float = 0.0) -> "Segments":
        return Segments(self.p0, self.p1, self.r0 * factor + add, self.r1 * factor + add)

    def where(self, keep: np.ndarray) -> "Segments":
        return Segments(self.p0[keep], self.p1[keep], self.r0[keep], self.r1[keep])


def _samples(seg: Segments, h: float) -> tuple[np.ndarray, np.ndarray]:
    """Points every ``min(r, h) / 2`` mm along every segment, with their radii."""
    length = np.linalg.norm(seg.p1 - seg.p0, axis=1)
    rmin = np.minimum(seg.r0, seg.r1)
    # Spheres of radius r every 0.35 r leave a ripple below r/60: invisible, and much cheaper.
    step = np.maximum(np.maximum(0.5 * np.minimum(rmin, h), 0.35 * rmin), 0.3 * h)
    n = np.ceil(length / step).astype(np.int64) + 1
    owner = np.repeat(np.arange(len(seg)), n)
    start = np.cumsum(n) - n
    t = (np.arange(owner.size) - start[owner]) / np.maximum(n[owner] - 1, 1)
    t = t.astype(np.float32)[:, None]
    pts = seg.p0[owner] * (1 - t) + seg.p1[owner] * t
    rad = seg.r0[owner] * (1 - t[:, 0]) + seg.r1[owner] * t[:, 0]
    return pts.astype(np.float32), rad.astype(np.float32)


def rasterize(seg: Segments, grid: Grid, out: np.ndarray | None = None) -> np.ndarray:
    """Coverage (0..1, float32, shape ``grid.shape``) of the union of tubes.

    The edge is a linear ramp one in-plane pixel wide (partial volume); tubes
    thinner than a pixel get a peak coverage below 1, as in a real
    reconstruction where a 1 mm vessel never reaches full blood density.
    """
    return rasterize_layers(seg, grid, ((1.0, 0.0),), [out] if out is not None else None)[0]


def rasterize_layers(seg: Segments, grid: Grid, layers, outs=None) -> list[np.ndarray]:
    """Coverage of the same centre lines at several radii ``r * scale + add`` (e.g. wall and lumen).

    Distances are computed once per sample and voxel, separably per axis
    (the neighbourhood of a sample is a box, so squared distance is a sum of
    three broadcast 1-D terms), which keeps this cheap for thousands of segments.
    """
    covs = outs or [np.zeros(grid.shape, np.float32) for _ in layers]
    if len(seg) == 0:
        return covs
    dz, dy, dx = grid.spacing
    h = float(dx)
    big = max(sc for sc, _ in layers)
    big_add = max(ad for _, ad in layers)
    pts, rad = _samples(seg.scaled_radii(big, big_add), h)
    base_r = (rad - big_add) / big
    ox, oy, oz = grid.origin
    nz, ny, nx = grid.shape
    spacing = np.array([dx, dy, dz], np.float32)
    origin = np.array([ox, oy, oz], np.float32)
    dims = (nx, ny, nz)
    centre = np.rint((pts - origin) / spacing).astype(np.int64)
    reach = rad + h / 2
    ext = np.ceil(reach[:, None] / spacing[None, :]).astype(np.int64)
    flats = [c.reshape(-1) for c in covs]
    keys = ext[:, 0] * 1_000_000 + ext[:, 1] * 1000 + ext[:, 2]
    for key in np.unique(keys):
        sel = np.nonzero(keys == key)[0]
        e = ext[sel[0]]
        q = int(np.prod(2 * e + 1))
        chunk = max(1, 3_000_000 // q)
        for c0 in range(0, len(sel), chunk):
            s = sel[c0:c0 + chunk]
            d2 = np.zeros((len(s), 1, 1, 1), np.float32)
            idx = np.zeros((len(s), 1, 1, 1), np.int64)
            valid = np.ones((len(s), 1, 1, 1), bool)
            strides = (1, nx, nx * ny)
            for a in range(3):
                off = np.arange(-e[a], e[a] + 1)
                vox = centre[s, a][:, None] + off[None, :]                      # (m, n_a)
                dist = vox.astype(np.float32) * spacing[a] + origin[a] - pts[s, a][:, None]
                shape = [len(s), 1, 1, 1]
                shape[3 - a] = len(off)                                       # layout (m, z, y, x)
                d2 = d2 + (dist * dist).reshape(shape)
                idx = idx + (vox * strides[a]).reshape(shape)
                valid = valid & ((vox >= 0) & (vox < dims[a])).reshape(shape)
            d = np.sqrt(d2)
            for (sc, ad), flat in zip(layers, flats):
                r = (base_r[s] * sc + ad)[:, None, None, None]
                cap = np.minimum(1.0, 2.0 * r / h)
                c = np.minimum(np.clip((r + h / 2 - d) / h, 0.0, None), cap)
                ok = valid & (c > 0)
                np.maximum.at(flat, idx[ok], c[ok])
    return covs


def grow_tree(rng: np.random.Generator, root, direction, radius: float, inside, r_min: float,
              hilum=None, max_segments: int = 1500, targets: np.ndarray | None = None) -> Segments:
    """A branching tree that tapers (Murray's law) and stays inside ``inside``.

    Args:
        root: start point (3,) mm.
        direction: initial direction (3,).
        radius: start radius mm.
        inside: callable mapping points ``(n, 3)`` to a bool array (inside the lung).
        r_min: branches thinner than this end the tree (about a third of a pixel:
            thinner vessels are invisible at the reconstruction's resolution).
        hilum: point the tree spreads away from, so that it fills the periphery.
        targets: ``(n, 3)`` points of the lung to grow toward (space-filling, like the
            tissue that a real pulmonary tree supplies); each child turns toward one.
    """
    segs: list[tuple] = []
    hil = tuple(float(v) for v in (root if hilum is None else hilum))
    stack = [(tuple(float(v) for v in root), _unit(tuple(float(v) for v in direction)), float(radius), 0)]
    while stack and len(segs) < max_segments:
        p, d, r, depth = stack.pop()
        if r < r_min or depth > 16:
            continue
        length = r * rng.uniform(6.0, 11.0) + 3.0   # small branches still travel to the pleura
        end = None
        for attempt in range(6):
            if attempt in (2, 4):  # blocked by the pleura: turn rather than stop
                d = _unit(_rotate(d, _unit(_cross(d, tuple(rng.normal(size=3)))), np.deg2rad(35)))
            mid = _add(p, d, 0.5 * length)
            cand = _add(p, d, length)
            if depth == 0 or inside(np.array([mid, cand], np.float32)).all():
                end = cand
                break
            length *= 0.6
        if end is None:
            continue
        r_end = r * 0.95
        segs.append((p, end, r, r_end))
        f1 = rng.uniform(0.8, 0.92)
        f2 = (1.0 - f1 ** 3) ** (1.0 / 3.0)
        axis = _unit(_cross(d, tuple(rng.normal(size=3))))
        outward = _unit(_add(end, hil, -1.0))
        near = None
        if targets is not None and len(targets):
            vec = targets - np.asarray(end, np.float32)
            dist = np.sqrt((vec * vec).sum(1)) + 1e-3
            ahead = (vec @ np.asarray(d, np.float32)) / dist
            near = np.nonzero((ahead > 0.1) & (dist < 30 * r_end + 20))[0]
        for f, ang in ((f1, rng.uniform(8, 28)), (f2, -rng.uniform(30, 60))):
            nd = _rotate(d, axis, np.deg2rad(ang))
            nd = _unit(_add(nd, outward, 0.25))
            if near is not None and len(near):
                t = vec[near[int(rng.integers(len(near)))]]
                nd = _unit(_add(nd, _unit(tuple(float(v) for v in t)), 0.8))
            stack.insert(0, (end, nd, r_end * f, depth + 1))
    if not segs:
        return Segments.empty()
    p0, p1, r0, r1 = zip(*segs)
    return Segments(np.asarray(p0, np.float32), np.asarray(p1, np.float32),
                    np.asarray(r0, np.float32), np.asarray(r1, np.float32))


# Plain-float 3-vector helpers: the tree grows one branch at a time, where numpy's
# per-call overhead on 3-element arrays would cost more than the arithmetic.
def _add(a, b, s=1.0):
    return (a[0] + s * b[0], a[1] + s * b[1], a[2] + s * b[2])


def _cross(a, b):
    return (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])


def _unit(v):
    n = math.sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2])
    return (v[0] / n, v[1] / n, v[2] / n) if n > 1e-9 else (0.0, 0.0, -1.0)


def _rotate(v, axis, angle: float):
    """Rodrigues rotation of ``v`` about unit ``axis``."""
    c, s = math.cos(angle), math.sin(angle)
    k = _cross(axis, v)
    dot = axis[0] * v[0] + axis[1] * v[1] + axis[2] * v[2]
    return tuple(v[i] * c + k[i] * s + axis[i] * dot * (1 - c) for i in range(3))

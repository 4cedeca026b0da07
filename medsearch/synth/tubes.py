"""Rasterising tapered tubes (vessels, airways, ribs) with partial-volume edges.

Tubes are polylines of segments with a radius at each end.  They are drawn by
"splatting" sample spheres along each segment and keeping the maximum coverage
per voxel, fully vectorised: a chest has thousands of small vessel segments and a
Python loop over them would dominate generation time.
"""

from __future__ import annotations

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

    Grown one generation at a time, all branches of a generation together
    (vectorised: a chest has thousands of branches).

    Args:
        root: start point (3,) mm.
        direction: initial direction (3,).
        radius: start radius mm.
        inside: callable mapping points ``(n, 3)`` to a bool array (inside the lung).
        r_min: branches thinner than this end the tree (a fraction of a pixel:
            thinner vessels are invisible at the reconstruction's resolution).
        hilum: point the tree spreads away from, so that it fills the periphery.
        targets: ``(m, 3)`` points of the lung to grow toward (space-filling, like the
            tissue that a real pulmonary tree supplies); each child turns toward one.
    """
    hil = np.asarray(root if hilum is None else hilum, np.float64)
    P = np.asarray(root, np.float64)[None, :]
    D = _units(np.asarray(direction, np.float64)[None, :])
    R = np.array([float(radius)])
    T = None if targets is None or not len(targets) else np.asarray(targets, np.float64)
    out: list[tuple[np.ndarray, ...]] = []
    total = 0
    for depth in range(17):
        keep = R >= r_min
        P, D, R = P[keep], D[keep], R[keep]
        n = len(R)
        if n == 0 or total >= max_segments:
            break
        length = R * rng.uniform(6.0, 11.0, size=n) + 3.0   # small branches still travel to the pleura
        placed = np.zeros(n, bool)
        E = np.zeros_like(P)
        for attempt in range(6):
            todo = ~placed
            if not todo.any():
                break
            if attempt in (2, 4):  # blocked by the pleura: turn rather than stop
                ax = _units(np.cross(D[todo], rng.normal(size=(int(todo.sum()), 3))))
                D[todo] = _units(_rotate_many(D[todo], ax, np.deg2rad(35.0)))
            cand = P[todo] + D[todo] * length[todo, None]
            if depth == 0:
                ok = np.ones(len(cand), bool)
            else:
                mid = P[todo] + D[todo] * (0.5 * length[todo, None])
                ok = inside(mid.astype(np.float32)) & inside(cand.astype(np.float32))
            idx = np.nonzero(todo)[0]
            E[idx[ok]] = cand[ok]
            placed[idx[ok]] = True
            length[idx[~ok]] *= 0.6
        P, D, R, E = P[placed], D[placed], R[placed], E[placed]
        room = max_segments - total
        if len(R) > room:
            P, D, R, E = P[:room], D[:room], R[:room], E[:room]
        if len(R) == 0:
            break
        r_end = R * 0.95
        out.append((P, E, R, r_end))
        total += len(R)
        n = len(R)
        f1 = rng.uniform(0.8, 0.92, size=n)
        f2 = (1.0 - f1 ** 3) ** (1.0 / 3.0)
        axis = _units(np.cross(D, rng.normal(size=(n, 3))))
        outward = _units(E - hil)
        a1 = np.deg2rad(rng.uniform(8, 28, size=n))
        a2 = -np.deg2rad(rng.uniform(30, 60, size=n))
        kids = []
        if T is not None:
            vec = T[None, :, :] - E[:, None, :]                            # (n, m, 3)
            dist = np.sqrt((vec * vec).sum(2)) + 1e-3
            ahead = np.einsum("nmk,nk->nm", vec, D) / dist
            eligible = (ahead > 0.1) & (dist < 30 * r_end[:, None] + 20)
        for f, ang in ((f1, a1), (f2, a2)):
            nd = _units(_rotate_many(D, axis, ang) + 0.25 * outward)
            if T is not None:
                pick = np.argmax(rng.random(eligible.shape) * eligible, axis=1)
                has = eligible.any(axis=1)
                toward = _units(vec[np.arange(n), pick])
                nd[has] = _units(nd[has] + 0.8 * toward[has])
            kids.append((E, nd, r_end * f))
        P = np.concatenate([k[0] for k in kids])
        D = np.concatenate([k[1] for k in kids])
        R = np.concatenate([k[2] for k in kids])
    if not out:
        return Segments.empty()
    return Segments(*(np.concatenate([o[i] for o in out]).astype(np.float32) for i in range(4)))


def _units(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return np.where(n > 1e-9, v / np.maximum(n, 1e-9), np.array([0.0, 0.0, -1.0]))


def _rotate_many(v: np.ndarray, axis: np.ndarray, angle) -> np.ndarray:
    """Rodrigues rotation of rows of ``v`` about unit rows of ``axis`` by ``angle`` (scalar or per row)."""
    c = np.cos(angle)[..., None] if np.ndim(angle) else np.cos(angle)
    s_ = np.sin(angle)[..., None] if np.ndim(angle) else np.sin(angle)
    dot = (axis * v).sum(-1, keepdims=True)
    return v * c + np.cross(axis, v) * s_ + axis * dot * (1 - c)

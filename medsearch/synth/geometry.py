"""The voxel grid of a synthetic series and its mapping to patient (LPS) coordinates.

Arrays are indexed ``(z, y, x)``; slice ``k`` is the ``k``-th slice in ascending
order along the slice normal (inferior to superior for axial slices), which is
the project's definition of "the slice index in the main series".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Grid:
    """An axial voxel grid.

    Attributes:
        shape: ``(nz, ny, nx)``.
        spacing: ``(dz, dy, dx)`` in mm.
        origin: patient LPS position ``(x, y, z)`` of the centre of voxel ``(0, 0, 0)``.
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Patient coordinates of voxel centres: ``xs (nx,)``, ``ys (ny,)``, ``zs (nz,)`` float32."""
        nz, ny, nx = self.shape
        dz, dy, dx = self.spacing
        ox, oy, oz = self.origin
        return (np.float32(ox) + np.arange(nx, dtype=np.float32) * np.float32(dx),
                np.float32(oy) + np.arange(ny, dtype=np.float32) * np.float32(dy),
                np.float32(oz) + np.arange(nz, dtype=np.float32) * np.float32(dz))

    def affine(self) -> np.ndarray:
        """4x4 matrix mapping voxel indices ``(x, y, z, 1)`` to patient LPS mm."""
        dz, dy, dx = self.spacing
        a = np.diag([dx, dy, dz, 1.0])
        a[:3, 3] = self.origin
        return a

    def to_index(self, point_lps) -> tuple[int, int, int]:
        """Nearest voxel ``(k, j, i)`` of a patient point, clipped to the grid."""
        ox, oy, oz = self.origin
        dz, dy, dx = self.spacing
        x, y, z = point_lps
        k = int(np.clip(round((z - oz) / dz), 0, self.shape[0] - 1))
        j = int(np.clip(round((y - oy) / dy), 0, self.shape[1] - 1))
        i = int(np.clip(round((x - ox) / dx), 0, self.shape[2] - 1))
        return k, j, i

    def slice_positions(self) -> list[tuple[float, float, float]]:
        """ImagePositionPatient of every slice, ascending along the normal."""
        ox, oy, _ = self.origin
        return [(float(ox), float(oy), float(z)) for z in self.axes()[2]]


def smoothstep(edge0: float, edge1: float, x):
    """Hermite ramp from 0 at ``edge0`` to 1 at ``edge1`` (either order)."""
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)

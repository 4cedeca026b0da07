"""How a study was acquired: scanner, grid, kernel, noise, rescale and encoding.

The in-plane matrix sets the pixel spacing: the reconstruction field of view
is that of a clinical 512 matrix with 0.6-0.9 mm pixels (307-461 mm), so a
128 matrix has 2.4-3.6 mm pixels.  Slice thickness is drawn from 0.625-5 mm,
restricted at small matrices to thicknesses of at least about one pixel (a
128 x 128 x 480 volume would be slow and pointlessly anisotropic).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medsearch.synth.geometry import Grid

MATRICES = (128, 256, 512)
THICKNESSES = {512: (0.625, 1.0, 1.25, 2.0, 2.5, 5.0), 256: (1.25, 2.0, 2.5, 3.0, 5.0), 128: (2.5, 3.0, 5.0)}

#: (manufacturer, model, sharp kernel, soft kernel)
SCANNERS = (
    ("SIEMENS", "SOMATOM Definition AS+", "B70f", "B30f"),
    ("SIEMENS", "SOMATOM Force", "Br59", "Br40"),
    ("GE MEDICAL SYSTEMS", "LightSpeed VCT", "LUNG", "STANDARD"),
    ("GE MEDICAL SYSTEMS", "Revolution CT", "LUNG", "SOFT"),
    ("Philips", "Brilliance 64", "YC", "B"),
    ("Philips", "IQon - Spectral CT", "YA", "C"),
    ("TOSHIBA", "Aquilion ONE", "FC52", "FC13"),
    ("Canon Medical Systems", "Aquilion Prime SP", "FC86", "FC18"),
)

#: (RescaleSlope, RescaleIntercept, PixelRepresentation, BitsStored)
RESCALES = ((1.0, -1024.0, 0, 12), (1.0, -1024.0, 1, 16), (1.0, 0.0, 1, 16), (0.5, -1024.0, 0, 16),
            (1.0, -8192.0, 0, 16))

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
RLE = "1.2.840.10008.1.2.5"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"


@dataclass
class Acquisition:
    manufacturer: str
    model: str
    kernel: str
    soft_kernel: str
    sharp: bool
    matrix: int
    pixel_mm: float
    thickness: float
    spacing_z: float
    kvp: int
    mas: int
    noise_sd: float
    slope: float
    intercept: float
    pixel_representation: int
    bits_stored: int
    transfer_syntax: str
    multiframe: bool
    contrast_hu: float | None
    thick_series: bool
    burned_in: bool
    instances_descending: bool     # instance 1 at the top of the scan (as many scanners number)
    offset: tuple[float, float, float]   # body frame -> patient LPS
    z_range: tuple[float, float]         # body-frame z covered (inferior, superior)

    def grid(self, lung_h: float) -> Grid:
        """The main series' grid, in the *body frame* (add :attr:`offset` for patient coordinates)."""
        m = self.matrix
        fov = self.pixel_mm * m
        ox, oy, _ = self.offset
        nz = int(np.ceil((self.z_range[1] - self.z_range[0]) / self.spacing_z)) + 1
        # The reconstruction is centred on the scanner isocentre (patient x = y = 0).
        x0 = -fov / 2 + self.pixel_mm / 2 - ox
        y0 = -fov / 2 + self.pixel_mm / 2 - oy
        return Grid((nz, m, m), (self.spacing_z, self.pixel_mm, self.pixel_mm),
                    (round(x0, 4), round(y0, 4), round(self.z_range[0], 4)))


def sample_acquisition(rng: np.random.Generator, matrix: int, body_width: float, lung_h: float,
                       force_contrast: bool | None = None) -> Acquisition:
    man, model, sharp_k, soft_k = SCANNERS[int(rng.integers(len(SCANNERS)))]
    sharp = bool(rng.random() < 0.65)
    fov = float(np.clip(body_width + rng.uniform(25, 110), 0.6 * 512, 0.9 * 512))
    pixel = round(fov / matrix, 6)
    choices = THICKNESSES[matrix]
    # At the default (small) matrix, favour the thick end: generation time scales with the slice count.
    weights = np.array([2.0 if (matrix == 128 and t >= 5.0) else 1.0 for t in choices])
    thick = float(rng.choice(choices, p=weights / weights.sum()))
    spacing = thick if not (matrix == 512 and rng.random() < 0.3) else round(thick * 0.8, 3)
    kvp = int(rng.choice([100, 110, 120, 120, 130, 140]))
    mas = int(rng.integers(30, 250))
    # Sharp (lung) kernels are noisy; low dose and thin slices add noise.
    base = rng.uniform(28, 55) if sharp else rng.uniform(8, 18)
    noise = float(base * np.sqrt(100.0 / mas) ** 0.5 * np.sqrt(2.5 / thick) ** 0.5)
    slope, intercept, rep, bits = RESCALES[int(rng.choice(len(RESCALES), p=[0.45, 0.2, 0.15, 0.1, 0.1]))]
    ts = str(rng.choice([EXPLICIT_LE, IMPLICIT_LE, RLE, J2K_LOSSLESS], p=[0.55, 0.15, 0.15, 0.15]))
    contrast = bool(rng.random() < 0.35) if force_contrast is None else force_contrast
    top = float(rng.uniform(20, 45))
    bottom = -lung_h - float(rng.uniform(15, 40))
    offset = (round(float(rng.uniform(-20, 20)), 2), round(float(rng.uniform(-45, -15)), 2),
              round(float(rng.uniform(-260, 40)), 2))
    return Acquisition(
        manufacturer=man, model=model, kernel=sharp_k if sharp else soft_k, soft_kernel=soft_k, sharp=sharp,
        matrix=matrix, pixel_mm=pixel, thickness=thick, spacing_z=spacing, kvp=kvp, mas=mas, noise_sd=noise,
        slope=slope, intercept=intercept, pixel_representation=rep, bits_stored=bits, transfer_syntax=ts,
        multiframe=bool(rng.random() < 0.2), contrast_hu=float(rng.uniform(160, 320)) if contrast else None,
        thick_series=bool(rng.random() < 0.3), burned_in=bool(rng.random() < 0.08),
        instances_descending=bool(rng.random() < 0.5), offset=offset, z_range=(bottom, top))


def reconstruct(clean: np.ndarray, acq: Acquisition, rng: np.random.Generator, grid: Grid,
                sharp: bool | None = None, noise_sd: float | None = None) -> np.ndarray:
    """Apply the system blur (partial volume), kernel noise and edge enhancement.

    Args:
        clean: float32 HU (z, y, x) as painted (hard edges).

    Returns:
        float32 HU before quantisation.
    """
    sharp = acq.sharp if sharp is None else sharp
    sd = acq.noise_sd if noise_sd is None else noise_sd
    dz, dy, _ = grid.spacing
    # Slice sensitivity profile ~ thickness; in-plane PSF ~ a pixel, wider for soft kernels.
    sig_xy = 0.55 if sharp else 0.85
    sig_z = max(0.35, 0.42 * acq.thickness / dz)
    vol = ndimage.gaussian_filter(clean, (sig_z, sig_xy, sig_xy), mode="nearest", truncate=3.0)
    if sharp:  # edge enhancement of lung kernels: unsharp mask in-plane
        low = ndimage.gaussian_filter(vol, (0, 1.2, 1.2), mode="nearest", truncate=3.0)
        vol = vol + 0.45 * (vol - low)
    noise = rng.standard_normal(vol.shape, dtype=np.float32)
    corr = 0.45 if sharp else 0.9     # soft kernels correlate noise over more pixels
    noise = ndimage.gaussian_filter(noise, (0, corr, corr), truncate=3.0)
    noise *= np.float32(sd / (noise.std() + 1e-6))
    return vol + noise


def quantize(hu: np.ndarray, acq: Acquisition) -> tuple[np.ndarray, np.ndarray]:
    """Stored pixel values and the HU they encode (what any reader gets back).

    Outside the circular reconstruction field the scanner writes air.
    """
    m = hu.shape[-1]
    yy, xx = np.mgrid[:m, :m]
    r = (m - 1) / 2
    outside = (yy - r) ** 2 + (xx - r) ** 2 > (r + 0.5) ** 2
    hu = hu.copy()
    hu[:, outside] = -1024.0
    if acq.pixel_representation:
        lo, hi, dtype = -(2 ** (acq.bits_stored - 1)), 2 ** (acq.bits_stored - 1) - 1, np.int16
    else:
        lo, hi, dtype = 0, 2 ** acq.bits_stored - 1, np.uint16
    stored = np.clip(np.rint((hu - acq.intercept) / acq.slope), lo, hi).astype(dtype)
    back = stored.astype(np.float32) * np.float32(acq.slope) + np.float32(acq.intercept)
    return stored, back

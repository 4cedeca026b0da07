"""PNG previews: axial and coronal slices with each finding outlined and labelled."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from medsearch.synth.reports import LOBE_ABBR

COLOURS = [(255, 80, 80), (80, 200, 255), (255, 210, 60), (120, 255, 120), (255, 120, 255)]


def window(hu: np.ndarray, centre: float, width: float) -> np.ndarray:
    return (np.clip((hu - (centre - width / 2)) / width, 0, 1) * 255).astype(np.uint8)


def _label(f: dict) -> str:
    site = LOBE_ABBR.get(f["site"], f["site"]) if f["site"] != "pleura" else f["laterality"]
    size = f" {f['diameter_mm']:.0f}mm" if f.get("diameter_mm") else ""
    dens = f" {f['density']}" if f["type"] == "nodule" and f.get("density") else ""
    return f"{site}{dens} {f['type']}{size}"


def _outline(mask2d: np.ndarray) -> np.ndarray:
    return mask2d & ~ndimage.binary_erosion(mask2d)


def _panel(img: np.ndarray, masks: list[np.ndarray], labels: list[tuple[int, str]], scale: tuple[float, float],
           title: str) -> Image.Image:
    """RGB image, upscaled, with outlines and text labels."""
    h, w = img.shape
    sy, sx = scale
    rgb = np.repeat(img[..., None], 3, axis=2)
    big = Image.fromarray(rgb).resize((int(w * sx), int(h * sy)), Image.Resampling.BILINEAR)
    over = np.asarray(big).copy()
    for m, (ci, _) in zip(masks, labels):
        if not m.any():
            continue
        mb = np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize(big.size, Image.Resampling.NEAREST)) > 0
        over[_outline(ndimage.binary_dilation(mb, iterations=2))] = COLOURS[ci % len(COLOURS)]
    im = Image.fromarray(over)
    draw = ImageDraw.Draw(im)
    font = ImageFont.load_default(size=13)
    draw.text((6, 4), title, fill=(255, 255, 255), font=font)
    for row, (m, (ci, text)) in enumerate(zip(masks, labels)):
        if not m.any():
            continue
        jj, ii = np.nonzero(m)
        x = min(int(ii.max() * sx) + 6, im.size[0] - 8 * len(text))
        y = max(int(jj.min() * sy) - 14, 18)
        draw.text((max(x, 2), y), text, fill=COLOURS[ci % len(COLOURS)], font=font)
    return im


def write_previews(study, folder: Path, scale: float = 3.0) -> list[Path]:
    """Axial (lung and mediastinal window) and coronal PNGs per finding, or of the mid-chest if normal."""
    folder.mkdir(parents=True, exist_ok=True)
    hu, findings, masks = study.hu, study.labels["findings"], study.masks
    dz, dy, dx = study.spacing
    written = []
    targets = list(enumerate(findings)) or [(None, None)]
    for n, (i, f) in enumerate(targets):
        if f is None:
            k = int(hu.shape[0] * 0.6)
            j = hu.shape[1] // 2 - int(10 / dy)
        else:
            k = f["key_slice"]
            j = int(np.nonzero(masks[i])[1].mean())
        on_k = [(ci, m[k]) for ci, m in enumerate(masks) if m[k].any()]
        on_j = [(ci, m[:, j, :][::-1]) for ci, m in enumerate(masks) if m[:, j, :].any()]
        ax_lung = _panel(window(hu[k], -600, 1500), [m for _, m in on_k],
                         [(ci, _label(findings[ci])) for ci, _ in on_k], (scale, scale), f"axial {k}  lung window")
        ax_med = _panel(window(hu[k], 40, 400), [m for _, m in on_k], [(ci, "") for ci, _ in on_k],
                        (scale, scale), f"axial {k}  mediastinal window")
        cor = _panel(window(hu[:, j, :][::-1], -600, 1500), [m for _, m in on_j],
                     [(ci, _label(findings[ci])) for ci, _ in on_j], (scale * dz / dx, scale), f"coronal row {j}")
        for name, im in ((f"{n:02d}_axial.png", ax_lung), (f"{n:02d}_axial_mediastinum.png", ax_med),
                         (f"{n:02d}_coronal.png", cor)):
            p = folder / name
            im.save(p, optimize=False)
            written.append(p)
    return written

"""Voxel-level training targets from the synthetic archive's masks.

The synthetic generator knows where every finding and every lobe is.  Training
the image tower on those masks (dense supervision: every voxel is a labelled
example) teaches it far faster than study-level labels alone, which is what
makes CPU training of a usable model possible.

:func:`dense_example` turns one generated study into the canonical-grid input
(int16 HU, the same :func:`~medsearch.dicom.canonical.to_canonical` path as
inference) and four target maps on the same grid:

- ``region`` uint8: 0 outside the lungs and pleural spaces, else 1 + the index
  of the lobe in :data:`medsearch.vocab.LOBES` (the lingula counts as the left
  upper lobe); voxels of a pleural collection take the nearest lobe, so that a
  pleural finding has a side;
- ``types`` int16: bit ``t`` set where a finding of ``FINDING_TYPES[t]`` lies;
- ``density`` uint8: index in ``DENSITIES`` where a finding with a density lies, else 255;
- ``logsize`` float16: ``log(diameter_mm)`` where a sized finding lies, else 0.

The arrays are (z, y, x), like every canonical array.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Orientation, ResizeWithPadOrCrop, Spacing
from scipy import ndimage

from medsearch import vocab
from medsearch.dicom.canonical import LPS_TO_RAS, to_canonical
from medsearch.dicom.volume import HUVolume
from medsearch.models.heads import DENSITY_TYPES
from medsearch.models.phrases import SIZED_TYPES

NO_DENSITY = 255
#: Synthetic lobe codes (medsearch.synth.anatomy.LOBE_CODES) -> region index (1 + vocab.LOBES index).
_LOBE_CODE_TO_REGION = np.array([0, 1, 2, 3, 4, 5, 4], dtype=np.uint8)


_SIDE_REGIONS = {"right": (1, 2, 3), "left": (4, 5)}


def _nearest_lobe(region: np.ndarray, where: np.ndarray, sides: tuple[str, ...]) -> np.ndarray:
    """``region`` with the voxels in ``where`` set to the nearest lobe of ``sides`` (the nearer side wins)."""
    if not where.any():
        return region
    best_d = np.full(region.shape, np.inf)[where]
    best_l = np.zeros(int(where.sum()), np.uint8)
    for side in sides:
        lung = np.isin(region, _SIDE_REGIONS[side])
        if not lung.any():
            continue
        dist, idx = ndimage.distance_transform_edt(~lung, return_indices=True)
        d, lab = dist[where], region[tuple(i[where] for i in idx)]
        closer = d < best_d
        best_d[closer], best_l[closer] = d[closer], lab[closer]
    out = region.copy()
    out[where] = best_l
    return out


def native_targets(study) -> dict[str, np.ndarray]:
    """The four target maps of a :class:`~medsearch.synth.study.SynthStudy` on its native grid."""
    region = _LOBE_CODE_TO_REGION[np.clip(study.lobes, 0, 6)]
    types = np.zeros(study.hu.shape, np.int16)
    density = np.full(study.hu.shape, NO_DENSITY, np.uint8)
    logsize = np.zeros(study.hu.shape, np.float16)
    pleural: list[tuple[np.ndarray, tuple[str, ...]]] = []
    for f, mask in zip(study.labels["findings"], study.masks):
        t = vocab.FINDING_TYPES.index(f["type"])
        types[mask] |= np.int16(1 << t)
        if f["type"] in ("pleural effusion", "pneumothorax"):
            sides = ("right", "left") if f.get("laterality") == "bilateral" else (f.get("laterality"),)
            pleural.append((mask & (region == 0), tuple(s for s in sides if s in _SIDE_REGIONS)))
        if f["type"] in DENSITY_TYPES and f.get("density") in vocab.DENSITIES:
            density[mask] = vocab.DENSITIES.index(f["density"])
        if f["type"] in SIZED_TYPES and f.get("diameter_mm"):
            logsize[mask] = np.log(float(f["diameter_mm"]))
    lungs = region.copy()
    for where, sides in pleural:
        region = np.where(where, _nearest_lobe(lungs, where, sides or ("right", "left")), region)
    return {"region": region, "types": types, "density": density, "logsize": logsize}


def _resample_labels(array: np.ndarray, affine: np.ndarray, spacing_mm, shape) -> np.ndarray:
    """Nearest-neighbour resampling of a (z, y, x) label map onto the canonical grid (0 outside)."""
    dz, dy, dx = (float(s) for s in spacing_mm)
    nz, ny, nx = (int(n) for n in shape)
    data = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 1, 0)[None]).astype(np.float32))
    img = MetaTensor(data, affine=torch.as_tensor(LPS_TO_RAS @ affine, dtype=torch.float64))
    img = Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))(img)
    img = Spacing(pixdim=(dx, dy, dz), mode="nearest", padding_mode="zeros", dtype=np.float32)(img)
    img = ResizeWithPadOrCrop(spatial_size=(nx, ny, nz), mode="constant")(img)
    return np.ascontiguousarray(img.as_tensor()[0].numpy().transpose(2, 1, 0))


def dense_example(study, spacing_mm, shape) -> dict[str, np.ndarray]:
    """Canonical input and targets of one generated study (see the module docstring)."""
    vol = HUVolume(study.hu.astype(np.float32), tuple(study.spacing), study.affine, "CT")
    hu, _ = to_canonical(vol, spacing_mm, shape)
    out = {"hu": np.clip(np.rint(hu), -32768, 32767).astype(np.int16)}
    for name, arr in native_targets(study).items():
        fill = NO_DENSITY if name == "density" else 0
        # shift so that the resampler's zero padding becomes the map's "nothing here" value
        res = _resample_labels(arr.astype(np.float32) - fill, study.affine, spacing_mm, shape) + fill
        out[name] = res.astype(arr.dtype) if name != "logsize" else res.astype(np.float16)
    return out


def generate_dense(seed: int, index: int, spacing_mm, shape, findings: list[str] | None = None) -> dict:
    """Generate study ``index`` of archive ``seed`` and return its dense example plus its labels."""
    from medsearch.synth import generate_study

    study = generate_study(seed, index, findings=findings)
    ex = dense_example(study, spacing_mm, shape)
    ex["findings"] = [{k: f.get(k) for k in ("type", "site", "laterality", "density", "diameter_mm")}
                      for f in study.labels["findings"]]
    ex["report_en"], ex["report_zh"] = study.labels["report_en"], study.labels["report_zh"]
    return ex


#: Share of cache studies whose findings are forced (1-3 types, uniform over FINDING_TYPES): the
#: archive's natural mix is mostly normal studies and rare types would otherwise be seen a few times only.
FORCED_FRACTION = 0.6


def forced_types(seed: int, index: int) -> list[str] | None:
    """The finding types forced on cache study ``index`` (None: the archive's own plan)."""
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 77, int(index)])
    if rng.random() >= FORCED_FRACTION:
        return None
    k = int(rng.choice([1, 2, 3], p=[0.45, 0.35, 0.2]))
    return [str(t) for t in rng.choice(vocab.FINDING_TYPES, size=k, replace=False)]


def _init_cache_worker() -> None:
    # one thread per worker: the workers already fill the cores, and N workers with N torch threads each
    # ran 4x slower per study than one thread alone (seen on a 16-core machine)
    torch.set_num_threads(1)


def _cache_one(args):
    seed, index, spacing_mm, shape = args
    ex = generate_dense(seed, index, spacing_mm, shape, findings=forced_types(seed, index))
    ex["index"] = index
    return ex


def build_dense_cache(out_dir, seed: int, studies: int, spacing_mm, shape, workers: int = 2,
                      shard: int = 50, progress: bool = True) -> list:
    """Generate ``studies`` dense examples of seed ``seed`` into ``out_dir`` as shards (resumable).

    Each shard ``dense-<seed>-<first>.npz`` holds the stacked arrays and a JSON list of the labels
    and reports; an existing shard is kept, so an interrupted build continues where it stopped.
    """
    import json
    import multiprocessing as mp
    from pathlib import Path

    from tqdm import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    bar = tqdm(total=studies, desc=f"dense cache seed {seed}", unit="study", disable=not progress)
    ctx = mp.get_context("spawn")
    with ctx.Pool(max(1, workers), initializer=_init_cache_worker) as pool:
        for first in range(0, studies, shard):
            path = out / f"dense-{seed}-{first:06d}.npz"
            paths.append(path)
            n = min(shard, studies - first)
            if path.exists():
                bar.update(n)
                continue
            exs = []
            for ex in pool.imap(_cache_one, [(seed, i, tuple(spacing_mm), tuple(shape))
                                             for i in range(first, first + n)]):
                exs.append(ex)
                bar.update(1)
            meta = [{k: ex[k] for k in ("index", "findings", "report_en", "report_zh")} for ex in exs]
            tmp = path.with_suffix(".tmp.npz")
            np.savez(tmp, **{k: np.stack([ex[k] for ex in exs]) for k in ("hu", "region", "types", "density",
                                                                             "logsize")},
                     meta=np.array(json.dumps(meta)))
            tmp.replace(path)
    bar.close()
    return paths


def _evidence_one(args):
    """The nodule detector's evidence on cache study ``index`` of ``seed``, generated again on its own grid
    (the dense cache keeps only the canonical grid): a worker of :func:`dense_evidence`."""
    from medsearch.models import data
    from medsearch.synth import generate_study

    seed, index, spacing_mm, shape = args
    study = generate_study(seed, index, findings=forced_types(seed, index))
    vol = HUVolume(study.hu.astype(np.float32), tuple(study.spacing), study.affine, "CT")
    _, affine = to_canonical(vol, spacing_mm, shape)
    return data._worker_detector.evidence(vol, affine)


def dense_evidence(cache_dir, detector, seed: int, studies: int, spacing_mm, shape, workers: int = 2,
                   progress: bool = True) -> list:
    """The nodule detector's evidence on the ``studies`` dense-cache studies of ``seed`` (in order).

    Each study is generated again at its own resolution, where the detector works; the evidence is
    cached per study under ``<cache_dir>/nodules-<detector digest>``, so a run that resumes, or another
    run with the same detector, reads it back.
    """
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    from pathlib import Path

    from tqdm import tqdm

    from medsearch.models.data import _init_detect_worker, detector_digest, load_evidence, save_evidence

    folder = Path(cache_dir) / f"nodules-{detector_digest(detector)}"
    folder.mkdir(parents=True, exist_ok=True)
    files = [folder / f"dense-{seed}-{i:06d}.npz" for i in range(studies)]
    todo = [i for i, f in enumerate(files) if not f.exists()]
    if todo:
        # spawned, not forked: a child forked from a process whose torch thread pool has run deadlocks
        with ProcessPoolExecutor(max(1, workers), mp_context=mp.get_context("spawn"),
                                 initializer=_init_detect_worker, initargs=(detector,)) as pool:
            args = [(seed, i, tuple(spacing_mm), tuple(shape)) for i in todo]
            for i, ev in tqdm(zip(todo, pool.map(_evidence_one, args, chunksize=4)), total=len(todo),
                              desc=f"detect nodules seed {seed}", unit="study", disable=not progress):
                save_evidence(files[i], ev)
    return [load_evidence(f) for f in files]


def synth_study_uid(seed: int, index: int) -> str:
    """The StudyInstanceUID study ``index`` of archive ``seed`` has (without rendering it)."""
    import datetime as dt

    from medsearch.synth.phi import make_study_identity, uid
    from medsearch.synth.plan import rng_for, visit_plan

    plan = visit_plan(seed, index)
    sid = make_study_identity(rng_for(seed, 6, plan.patient.index, plan.visit), plan.date)
    return uid(1, sid.uid_key, dt.datetime.combine(plan.date, sid.study_time))

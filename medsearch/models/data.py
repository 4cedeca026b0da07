"""Training data: studies (canonical volume + labels + reports) and contrastive batches.

Texts per study (each normalised to the terminology's canonical phrase):

- the whole report (its finding set), from the English or the Chinese report;
- a single-finding phrase: the type alone; with site; with site and density; with size.

Hard negatives are phrases that differ from a positive phrase in exactly one
attribute (lobe, side, density or size); they join the batch as extra text
candidates.  Whether a text describes a study is decided by
:mod:`medsearch.models.phrases`, the same rules the evaluation uses.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
import torch

from medsearch import vocab
from medsearch.models import phrases
from medsearch.models.heads import attribute_targets
from medsearch.models.preprocess import hu_windows

#: Granularities of single-finding phrases (protocol b uses the same four).
GRANULARITIES: tuple[tuple[str, ...], ...] = ((), ("site",), ("site", "density"), ("size_bin",))


@dataclass
class Study:
    """One training or evaluation study.

    Attributes:
        key: a non-identifying key (pseudonym or synthetic index).
        hu: int16 (z, y, x) canonical HU grid (see :mod:`medsearch.models.preprocess`).
        findings: labelled findings (vocabulary terms; ``diameter_mm`` in mm).
        report_en / report_zh: report texts, already scrubbed of identifiers.
    """

    key: str
    hu: np.ndarray
    findings: list[dict] = field(default_factory=list)
    report_en: str = ""
    report_zh: str = ""
    #: the nodule detector's evidence (:class:`~medsearch.models.nodule_detector.NoduleEvidence`), when
    #: the archive was loaded with one
    nodules: object = None


def perturbations(spec: dict) -> list[dict]:
    """Every hard negative of ``spec``: the spec with one attribute changed (lobe, side, density or size)."""
    out = []
    site = spec.get("site")
    if site in vocab.LOBES:
        out += [{**spec, "site": lobe} for lobe in vocab.LOBES
                if vocab.LOBE_SIDE[lobe] == vocab.LOBE_SIDE[site] and lobe != site]
    if site in vocab.LOBES or site in ("right lung", "left lung"):
        other = site.replace("right", "@").replace("left", "right").replace("@", "left")
        out.append({**spec, "site": other if other in vocab.SITES else "left lower lobe"})
    if spec.get("density"):
        out += [{**spec, "density": d} for d in vocab.DENSITIES if d != spec["density"]]
    if spec.get("size_bin") is not None:
        b = spec["size_bin"]
        out += [{**spec, "size_bin": n} for n in (b - 1, b + 1) if 0 <= n < len(vocab.SIZE_BINS_MM)]
    return out


def perturb(spec: dict, rng: random.Random) -> dict | None:
    """One random hard negative of ``spec`` (None when no attribute can change)."""
    options = perturbations(spec)
    return rng.choice(options) if options else None


def all_texts(studies: list[Study]) -> list[str]:
    """Every canonical text :func:`make_batch` can draw for ``studies`` (sorted), so the
    text features can be computed once, up front, in a fixed order."""
    texts = set()
    for s in studies:
        texts.add(phrases.report_canonical_from_labels(s.findings))
        texts.update(phrases.normalise(r) for r in (s.report_en, s.report_zh) if r)
        for f in s.findings:
            for fields in GRANULARITIES:
                spec = phrases.spec_of(f, fields)
                for variant in [spec] + perturbations(spec):
                    texts.update(phrases.normalise(phrases.spec_text(variant, lang)) for lang in ("en", "zh"))
    return sorted(texts)


@dataclass
class TextItem:
    """A training text: its canonical form and what it describes (a report's set or a spec)."""

    canonical: str
    spec: dict | None = None
    report_key: frozenset | None = None

    def describes(self, study: Study) -> bool:
        if self.report_key is not None:
            return phrases.study_key(study.findings) == self.report_key
        return any(phrases.finding_matches(f, self.spec) for f in study.findings)


def sample_text(study: Study, rng: random.Random, report_share: float = 0.4) -> TextItem:
    """One positive text for ``study``: its report (either language) or one finding's phrase."""
    if not study.findings or rng.random() < report_share:
        report = study.report_en if rng.random() < 0.5 else study.report_zh
        canonical = phrases.report_canonical_from_labels(study.findings)
        if report and rng.random() < 0.5:
            # Half the time through the normaliser on the real text, so the tower sees its output.
            canonical = phrases.normalise(report)
        return TextItem(canonical, report_key=phrases.study_key(study.findings))
    finding = rng.choice(study.findings)
    spec = phrases.spec_of(finding, rng.choice(GRANULARITIES))
    lang = rng.choice(("en", "zh"))
    return TextItem(phrases.normalise(phrases.spec_text(spec, lang)), spec=spec)


def augment(x: torch.Tensor, rng: random.Random) -> torch.Tensor:
    """Small random translation (no flips: laterality must survive) and intensity jitter."""
    dz, dy, dx = rng.randint(-2, 2), rng.randint(-3, 3), rng.randint(-3, 3)
    x = torch.roll(x, shifts=(dz, dy, dx), dims=(1, 2, 3))
    return x * (1.0 + rng.uniform(-0.05, 0.05))


def make_batch(studies: list[Study], rng: random.Random, hard_negatives: int = 1,
               train: bool = True) -> dict:
    """A contrastive batch.

    Returns:
        dict with ``image`` float32 (B, 2, Z, Y, X), ``texts`` list of B + H canonical
        strings, ``positives`` bool (B, B + H), and attribute ``targets`` (see heads).
    """
    items = [sample_text(s, rng) for s in studies]
    negatives: list[TextItem] = []
    for item in items:
        if item.spec is None:
            continue
        for _ in range(hard_negatives):
            spec = perturb(item.spec, rng)
            if spec is not None:
                lang = rng.choice(("en", "zh"))
                negatives.append(TextItem(phrases.normalise(phrases.spec_text(spec, lang)), spec=spec))
    texts = items + negatives
    positives = torch.tensor([[t.describes(s) for t in texts] for s in studies], dtype=torch.bool)
    positives[torch.arange(len(studies)), torch.arange(len(studies))] = True
    images = []
    for s in studies:
        x = hu_windows(torch.from_numpy(s.hu.astype(np.float32)))
        images.append(augment(x, rng) if train else x)
    targets = [attribute_targets(s.findings) for s in studies]
    return {"image": torch.stack(images), "texts": [t.canonical for t in texts], "positives": positives,
            "targets": {k: torch.stack([t[k] for t in targets]) for k in targets[0]}}


# --------------------------------------------------------------------------- archives
def scrub_report(text: str) -> str:
    """Remove identifiers a report may carry: dates, times, long numbers (IDs, accession
    numbers), e-mail addresses and 'Name:'-style header lines.  Findings text is kept."""
    import re

    text = re.sub(r"^\s*(patient|name|姓名|患者|mrn|id|accession|dob|birth|referring|physician|医生|报告医师|审核)"
                  r"[^\n]*$", "", text, flags=re.I | re.M)
    text = re.sub(r"\b\d{4}[-/.年]\d{1,2}[-/.月]\d{1,2}日?\b|\b\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}\b", "[date]", text)
    text = re.sub(r"\b\d{1,2}:\d{2}(:\d{2})?\b", "[time]", text)
    text = re.sub(r"[\w.+-]+@[\w-]+\.[\w.]+", "[email]", text)
    text = re.sub(r"\b[A-Z]{0,4}\d{5,}\b", "[id]", text)
    return text.strip()


def save_cached(path, hu: np.ndarray) -> None:
    """Write a cached canonical volume atomically: an interrupted run never leaves half a file."""
    import os

    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, hu)
    os.replace(tmp, path)


def _study_key(uid: str) -> str:
    import hashlib

    return hashlib.sha256(uid.encode()).hexdigest()[:16]


def grid_cache_dir(cache_dir, shape) -> "Path | None":
    """The subfolder of ``cache_dir`` for canonical volumes of grid ``shape`` (None: no cache), so that
    models trained or evaluated on different grids never read each other's volumes."""
    from pathlib import Path

    return Path(cache_dir) / "x".join(str(int(n)) for n in shape) if cache_dir else None


def _load_main_series(source, spacing_mm=None, shape=None) -> np.ndarray:
    """The canonical grid of one series: ``source`` is its folder, its one file, or its files;
    ``spacing_mm`` and ``shape`` the grid (None: the default canonical grid)."""
    from medsearch.dicom.volume import load_series
    from medsearch.models.preprocess import canonical_hu

    grid = {k: v for k, v in (("spacing_mm", spacing_mm), ("shape", shape)) if v is not None}
    return canonical_hu(load_series(_series_files(source)), **grid)


def _evidence_file(cache, key: str):
    return cache / f"{key}.npz" if cache else None


def save_evidence(path, ev) -> None:
    """Write a study's nodule evidence atomically (see :func:`save_cached`)."""
    import os

    tmp = path.with_name(path.name + ".tmp.npz")
    parts = {"": ev, **{f"other.{t}.": o for t, o in (ev.others or {}).items()}}
    arrays = {f"{prefix}{k}": getattr(e, k) for prefix, e in parts.items()
              for k in ("cells", "probability", "logsize", "density", "native") if getattr(e, k) is not None}
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def load_evidence(path):
    from medsearch.models.nodule_detector import NoduleEvidence

    with np.load(path) as z:
        def part(prefix: str) -> NoduleEvidence:
            return NoduleEvidence(*(z[prefix + k] for k in ("cells", "probability", "logsize", "density")),
                                  z[prefix + "native"] if prefix + "native" in z.files else None)

        others = sorted({k.split(".")[1] for k in z.files if k.startswith("other.")})
        ev = part("")
        ev.others = {t: part(f"other.{t}.") for t in others} or None
        return ev


def _series_files(source) -> list:
    from pathlib import Path

    if isinstance(source, (list, tuple)):
        return sorted(Path(p) for p in source)
    folder = Path(source)
    return [folder] if folder.is_file() else sorted(p for p in folder.rglob("*") if p.is_file())


_worker_detector = None


def _init_detect_worker(detector) -> None:
    """Process-pool initializer: the detector once per worker, one thread each (the workers are the
    parallelism)."""
    import torch

    global _worker_detector
    torch.set_num_threads(1)
    _worker_detector = detector


def _canonical_and_evidence(args):
    """(canonical int16 HU, nodule evidence) of one series: a worker of :func:`load_archive`."""
    from medsearch.dicom.volume import load_series
    from medsearch.models.preprocess import to_canonical

    source, spacing_mm, shape, detector = args
    detector = detector or _worker_detector
    vol = load_series(_series_files(source))
    grid = {k: v for k, v in (("spacing_mm", spacing_mm), ("shape", shape)) if v is not None}
    arr, affine = to_canonical(vol, **grid)
    return np.clip(np.rint(arr), -1024, 3071).astype(np.int16), detector.evidence(vol, affine)


def load_archive(archive, reports=None, cache_dir=None, progress: bool = True, spacing_mm=None,
                 shape=None, detector=None, workers: int = 1) -> list[Study]:
    """Studies of a synthetic archive (``labels.jsonl``) or of a hospital archive (DICOM + reports).

    Only pixel data and scrubbed report text are used: no header identifier is read
    into a :class:`Study` (its key is a hash of the study UID).  Canonical volumes are
    cached under ``cache_dir`` so that a resumed run does not resample again.

    Args:
        archive: the archive folder.
        reports: hospital reports (CSV/JSONL keyed by accession number), or None.
        cache_dir: folder for cached canonical volumes, or None.
        spacing_mm, shape: the canonical grid, that of the model to train or evaluate (None: the
            default grid, ``medsearch.models.preprocess.CANONICAL_*``).
        detector: a :class:`~medsearch.models.nodule_detector.NoduleDetector` whose evidence each
            study carries (``Study.nodules``; synthetic archives only), cached per detector under
            ``cache_dir``.
        workers: processes that read and detect the studies not cached yet (with a detector).
    """
    import json
    from pathlib import Path

    from tqdm import tqdm

    from medsearch.errors import InputError

    archive = Path(archive)
    labels_file = archive / "labels.jsonl"
    if not labels_file.exists():
        from medsearch.models.hospital import load_hospital_archive

        return load_hospital_archive(archive, reports, cache_dir, progress, spacing_mm, shape)
    records = [json.loads(line) for line in labels_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not records:
        raise InputError("labels.jsonl of the archive is empty.", "Generate it with 'medsearch synth OUT --studies N'.")
    from medsearch.models.preprocess import CANONICAL_SHAPE

    cache = grid_cache_dir(cache_dir, shape or CANONICAL_SHAPE)
    if cache:
        cache.mkdir(parents=True, exist_ok=True)
    found: dict[str, tuple] = {}
    if detector is not None:
        found = _detect_archive(archive, records, cache, cache_dir, detector, spacing_mm, shape, workers, progress)
    studies = []
    for rec in tqdm(records, desc="load", unit="study", disable=not progress):
        key = _study_key(rec["study_uid"])
        cached = cache / f"{key}.npy" if cache else None
        nodules = None
        if key in found:
            hu, nodules = found[key]
        elif cached is not None and cached.exists():
            hu = np.load(cached)
        else:
            main = next(s for s in rec["series"] if s["series_uid"] == rec["main_series_uid"])
            hu = _load_main_series(archive / main["path"], spacing_mm, shape)
            if cached is not None:
                save_cached(cached, hu)
        findings = [{k: f.get(k) for k in ("type", "site", "laterality", "density", "diameter_mm")}
                    for f in rec["findings"]]
        studies.append(Study(key, hu, findings, scrub_report(rec.get("report_en", "")),
                             scrub_report(rec.get("report_zh", "")), nodules))
    return studies


def detector_digest(detector) -> str:
    """12 hex digits of the detector's weights and calibration: names its evidence caches, so that a
    retrained detector never reads another's."""
    import hashlib

    from medsearch.models.candidates import MAX_CANDIDATES

    return hashlib.sha256(b"".join(v.numpy().tobytes() for v in detector.net.state_dict().values())
                          + f"{detector.scale},{detector.offset}".encode()
                          # a detector file from before max_candidates was stored keeps its digest
                          + (f",{detector.max_candidates}".encode() if detector.max_candidates != MAX_CANDIDATES
                             else b"")
                          + "".join(f",{t}:{a},{b}" for t, (a, b) in sorted(detector.calibration.items())).encode()
                          # an ensemble's other networks (a detector without members keeps its digest)
                          + b"".join(b"".join(v.numpy().tobytes() for v in m.net.state_dict().values())
                                     + f"{m.scale},{m.offset}".encode()
                                     + "".join(f",{t}:{a},{b}" for t, (a, b) in sorted(m.calibration.items())).encode()
                                     for m in getattr(detector, "members", []))
                          # its region classifier's evidence is in the same files
                          + (detector.regions.digest() if getattr(detector, "regions", None) is not None else b"")
                          ).hexdigest()[:12]


def _detect_archive(archive, records, cache, cache_dir, detector, spacing_mm, shape, workers, progress) -> dict:
    """{study key: (canonical HU, evidence)} of a synthetic archive, read from or written to the caches
    (the evidence's folder is named after the detector's weights, so a retrained one never reads it)."""
    import hashlib
    from concurrent.futures import ProcessPoolExecutor
    from pathlib import Path

    from tqdm import tqdm

    ev_cache = Path(cache_dir) / f"nodules-{detector_digest(detector)}" if cache_dir else None
    if ev_cache:
        ev_cache.mkdir(parents=True, exist_ok=True)
    out, todo = {}, []
    for rec in records:
        key = _study_key(rec["study_uid"])
        ev_file, hu_file = _evidence_file(ev_cache, key), (cache / f"{key}.npy" if cache else None)
        if ev_file is not None and ev_file.exists() and hu_file.exists():
            out[key] = (np.load(hu_file), load_evidence(ev_file))
        else:
            main = next(s for s in rec["series"] if s["series_uid"] == rec["main_series_uid"])
            todo.append((key, (archive / main["path"], spacing_mm, shape, None)))
    if not todo:
        return out
    if workers > 1:
        import multiprocessing

        # spawned, not forked: a child forked from a process whose torch thread pool has run deadlocks
        # in its first parallel region
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_init_detect_worker, initargs=(detector,)) as pool:
            done = list(tqdm(pool.map(_canonical_and_evidence, [a for _, a in todo], chunksize=4), total=len(todo),
                             desc="detect nodules", unit="study", disable=not progress))
    else:
        done = [_canonical_and_evidence((*a[:3], detector)) for _, a in tqdm(
            todo, desc="detect nodules", unit="study", disable=not progress)]
    for (key, _), (hu, ev) in zip(todo, done):
        out[key] = (hu, ev)
        if ev_cache:
            save_cached(cache / f"{key}.npy", hu)
            save_evidence(_evidence_file(ev_cache, key), ev)
    return out

"""The encoder other areas use: ``get_encoder(inst)`` and the doctor check.

Contract:

- ``encode_volume(vol: HUVolume) -> EncodedVolume``: the L2-normalised float32
  embedding (256,), the spatial map float16 (C, X, Y, Z) on the canonical grid
  (R, A, S order) with ``canon_shape``/``canon_affine`` for localisation, the
  attribute heads' findings, and ``model_version``.
- ``encode_text(text) -> float32 (256,)``: ``text`` is the terminology's
  *canonical phrase* (``medsearch.query.parse(raw).canonical``); the search
  pipeline normalises raw queries before calling it, so this function does not
  parse again.  Similarity is the inner product.

The model is ``settings.model_dir`` when set, else the one shipped in
``medsearch/models/default/``.  ``settings.model_int8`` runs the towers with
INT8 dynamic quantization.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from medsearch.errors import ConfigError, MedsearchError

DEFAULT_MODEL_DIR = Path(__file__).parent / "default"
_lock = threading.Lock()
_cache: dict[tuple, "Encoder"] = {}


@dataclass
class EncodedVolume:
    embedding: np.ndarray  # float32 (D,), L2-normalised
    spatial: np.ndarray  # float16 (C, X, Y, Z)
    findings: list[dict]
    model_version: str
    canon_shape: tuple[int, int, int] = (0, 0, 0)  # (X, Y, Z) = (R, A, S)
    canon_affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    #: ctseg: (T, L, 6) key slice and box per slot (:mod:`medsearch.models.slot_locations`), else None
    locations: np.ndarray | None = None


#: Buffers that older model files lack; they load with the new model's default.
_DEFAULTED_BUFFERS = ("image.presence_floor",)


def _detections(evidence) -> dict | None:
    """The detector's evidence by finding type (nodules, and masses and cavities where it scores them)."""
    return None if evidence is None else {"nodule": evidence, **(evidence.others or {})}


class Encoder:
    """A loaded model: image side, text projection and (lazily) MiniLM."""

    def __init__(self, model_dir: Path, int8: bool = False, threads: int | None = None):
        from medsearch.models.train import CONFIG_FILE, MODEL_FILE

        model_dir = Path(model_dir)
        if not (model_dir / MODEL_FILE).exists() or not (model_dir / CONFIG_FILE).exists():
            raise ConfigError(f"No trained model in '{model_dir}' ({MODEL_FILE} and {CONFIG_FILE} expected).",
                              "Train one with 'medsearch train --archive DIR --out MODEL_DIR', or clear "
                              "the model_dir setting to use the bundled model.")
        self.config = json.loads((model_dir / CONFIG_FILE).read_text())
        if self.config.get("image_only"):  # train_slots.IMAGE_ONLY
            raise ConfigError(f"The model in '{model_dir}' holds a newly trained image tower only (trained with "
                              "--image-only): its calibration, projection and reranker were fitted to another "
                              "tower.",
                              f"Refit them first: 'medsearch train --init {model_dir} --steps 0 --synth-seed S "
                              "--synth-studies N --out NEW_DIR', and use NEW_DIR.")
        weights = (model_dir / MODEL_FILE).read_bytes()
        self.model_version = f"{self.config['arch']}-{hashlib.sha256(weights).hexdigest()[:12]}" + (
            "-int8" if int8 else "")
        model = build_model(self.config["arch"], self.config["dim"],
                            detail_width=int(self.config.get("detail_width", 0)),
                            spatial_pool=self.config.get("spatial_pool"),
                            focal_width=int(self.config.get("focal_width", 0)))
        state = torch.load(model_dir / MODEL_FILE, map_location="cpu", weights_only=True)
        state = {k: v.float() for k, v in state.items()}
        # models saved before the per-type voxel floor existed used one floor for every type
        for name in _DEFAULTED_BUFFERS:
            if name not in state and name in model.state_dict():
                state[name] = model.state_dict()[name]
        model.load_state_dict(state)
        model.eval()
        self.int8 = int8
        if int8:
            from medsearch.models.quantize import quantize_dual

            model = quantize_dual(model)
        from medsearch.models.onednn import use_onednn

        # PyTorch would run most of the U-Net's convolutions of one volume in its slow reference kernel
        self.model = use_onednn(model)
        # the nodule detector (nodule.pt) of models trained with 'medsearch train-nodules'; it stays FP32:
        # its patch classifier is small and INT8 would cost it more accuracy than time
        from medsearch.models.nodule_detector import NoduleDetector

        self.nodule_detector = NoduleDetector.load(model_dir) if self.config["arch"] == "ctseg" else None
        if self.nodule_detector is not None:
            self.model_version += "-n" + hashlib.sha256((model_dir / "nodule.pt").read_bytes()).hexdigest()[:6]
            if (model_dir / "regions.pt").exists():
                from medsearch.models.region_classifier import EXPLAINED_BY, LOBE_REACH, MERGE

                # how its evidence meets the U-Net's slots decides the vectors as much as its weights do (at a
                # reach of 0 the tag is the one it was before the reach existed)
                rules = json.dumps([MERGE, EXPLAINED_BY] + ([LOBE_REACH] if LOBE_REACH else []),
                                   sort_keys=True).encode()
                self.model_version += "-r" + hashlib.sha256((model_dir / "regions.pt").read_bytes()
                                                            + rules).hexdigest()[:6]
                # the learned merge, where one was fitted, lives in the same file (hashed above)
                if self.nodule_detector.regions is not None:
                    model.region_merge = self.nodule_detector.regions.merge
        if self.config.get("scorer") and self.config["arch"] == "ctseg":
            from medsearch.models.likelihood import LikelihoodScorer

            try:
                model.scorer = LikelihoodScorer.from_config(self.config["scorer"])
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"The model in '{model_dir}' names a scorer this version cannot read ({exc}).",
                                  "Remove 'scorer' from its config.json to score with its projection, or "
                                  "retrain the model with this version.") from None
            # the scorer decides the embeddings: vectors made with and without it are told apart
            self.model_version += SCORER_MARK + hashlib.sha256(
                json.dumps(self.config["scorer"], sort_keys=True).encode()).hexdigest()[:6]
        self._minilm = None
        self._pool = None
        self.dim = int(self.config["dim"])

    def _detect_pool(self):
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            # two pools of one worker each: the detector's call waits on its region stage, so the two never
            # share a worker (one pool of two could fill with calls waiting on queued region stages)
            self._pool = (ThreadPoolExecutor(max_workers=1, thread_name_prefix="nodule-detector"),
                          ThreadPoolExecutor(max_workers=1, thread_name_prefix="region-classifier"))
        return self._pool

    @property
    def minilm(self):
        if self._minilm is None:
            from medsearch.models.text_tower import MiniLM

            m = MiniLM()
            if self.int8:
                from medsearch.models.quantize import quantize_linear

                m.bert = quantize_linear(m.bert)
            self._minilm = m
        return self._minilm

    @torch.no_grad()
    def encode_image_tensor(self, x: torch.Tensor, nodules: list | None = None) -> dict[str, torch.Tensor]:
        """Batch forward of the image side. Args: x (B, C, Z, Y, X) windowed canonical volumes; nodules:
        the detector's evidence per volume (ctseg with a detector), or None."""
        if nodules is not None and self.config["arch"] == "ctseg":
            return self.model.encode_image(x, nodules)
        return self.model.encode_image(x)

    @torch.no_grad()
    def encode_volume(self, vol) -> EncodedVolume:
        from medsearch.models.heads import decode_findings
        from medsearch.models.preprocess import HUWindows, to_canonical

        if vol.hu.ndim != 3 or min(vol.hu.shape) < 2:
            from medsearch.errors import InputError

            raise InputError(f"A volume of shape {tuple(vol.hu.shape)} cannot be encoded.",
                             "Encode a 3-D series with at least 2 slices.")
        evidence = None
        if self.nodule_detector is not None:
            # the detector (numpy/scipy and a small network) works on the scan's own grid, so it starts
            # before the resampling and runs beside it and the U-Net's forward pass (docs/model.md, "Speed")
            detector, regions = self._detect_pool()
            pending = detector.submit(self.nodule_detector.detect, vol.hu, vol.spacing, regions)
        canon, affine = to_canonical(vol, self.config["canonical_spacing_mm"], self.config["canonical_shape"])
        x = HUWindows(self.config["windows_hu"])(torch.from_numpy(canon))[None]
        if self.nodule_detector is not None:
            from medsearch.models.nodule_detector import as_evidence

            found: list = []

            def evidence_after_forward() -> list:
                found.append(as_evidence(pending.result(), vol.affine, affine))
                return found

            out = self.model.encode_image(x, evidence_after_forward)
            evidence = found[0]
        else:
            out = self.model.encode_image(x)
        z, y, x_ = canon.shape
        if self.config["arch"] == "ctseg":
            from medsearch.models.slot_findings import decode

            from medsearch.models.nodule_detector import scan_lungs
            from medsearch.models.slot_locations import slot_locations

            # the key slices of findings and slots count tissue inside the lungs: the detector's mask
            lungs = evidence.lungs if evidence is not None and evidence.lungs is not None else \
                scan_lungs(vol.hu, vol.spacing)
            findings = decode(out["maps"][0], affine, vol.affine, vol.hu.shape, vol.hu, out["presence"][0],
                              _detections(evidence), lungs, vol.spacing)
            locations = slot_locations(out["maps"][0], affine, vol.affine, vol.hu, vol.spacing, lungs, evidence)
            spatial = out["spatial"][0].permute(0, 3, 2, 1).contiguous()
            return EncodedVolume(out["embedding"][0].numpy().astype(np.float32),
                                 spatial.numpy().astype(np.float16), findings, self.model_version, (x_, y, z), affine,
                                 locations)
        findings = []
        for f in decode_findings({k: out[k][0] for k in ("presence", "density", "size")}):
            findings.append({**f, "finding_type": f["type"], "key_slice": None, "bbox": None})
        spatial = out["spatial"][0].permute(0, 3, 2, 1).contiguous()  # (C, z, y, x) -> (C, X, Y, Z)
        return EncodedVolume(out["embedding"][0].numpy().astype(np.float32),
                             spatial.numpy().astype(np.float16), findings, self.model_version,
                             (x_, y, z), affine)

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """Canonical phrases -> float32 (N, D), L2-normalised."""
        if self.config["arch"] == "ctseg":
            return self._ctseg_texts(list(texts)).numpy().astype(np.float32)
        return self.model.encode_text(self.minilm(list(texts))).numpy().astype(np.float32)

    def _ctseg_texts(self, texts: list[str]) -> torch.Tensor:
        from medsearch.models.clauses import is_complete, negated_clauses, split_clauses

        pos, neg = _clause_batch(texts, split_clauses), _clause_batch(texts, negated_clauses)
        if self.model.scorer is None:
            neg = ([], [])  # the projection does not read what a text negates: no MiniLM pass for it
        feats = self.minilm(pos[0] + neg[0]) if pos[0] or neg[0] else torch.zeros(0, 384)
        n_pos = len(pos[0])
        return self.model.embed_texts(feats[:n_pos], torch.tensor(pos[1], dtype=torch.long), feats[n_pos:],
                                      torch.tensor(neg[1], dtype=torch.long),
                                      torch.tensor([is_complete(t) for t in texts], dtype=torch.bool))

    def similarity_query(self, embedding: np.ndarray, findings: list[dict]) -> np.ndarray:
        """The query vector of "more like this" for a series: its own embedding where image and text
        vectors are alike (the projection), else the text vector of a report of its predicted findings (the
        likelihood scorer's image vectors are log-probabilities, which only a text's weights read)."""
        if getattr(self.model, "scorer", None) is None:
            return np.asarray(embedding, dtype=np.float32)
        from medsearch.models.phrases import report_canonical_from_predictions

        return self.encode_texts([report_canonical_from_predictions(findings)])[0]

    @torch.no_grad()
    def text_attributes(self, texts: list[str]) -> torch.Tensor:
        """Canonical phrases -> their ctseg attribute vectors (N, FULL_ATTR_DIM), before the projection."""
        # each clause (one finding) on its own; the text is the sum of its findings
        from medsearch.models.clauses import split_clauses

        clauses, owner = [], []
        for i, text in enumerate(texts):
            for c in split_clauses(text):
                clauses.append(c)
                owner.append(i)
        feats = self.minilm(clauses) if clauses else torch.zeros(0, 384)
        return self.model.text_attributes(feats, torch.tensor(owner, dtype=torch.long), len(texts))

    def encode_text(self, text: str) -> np.ndarray:
        """A canonical phrase -> float32 (D,), L2-normalised."""
        if not isinstance(text, str) or not text.strip():
            from medsearch.errors import InputError

            raise InputError("The text to encode is empty.", "Pass a non-empty canonical phrase.")
        return self.encode_texts([text])[0]


#: Marks, in a model version, a model that scores by likelihood (:mod:`medsearch.models.likelihood`).
SCORER_MARK = "-s"


def scored_by_likelihood(model_version: str | None) -> bool:
    """Whether vectors of ``model_version`` were made by a model that scores by likelihood (its image vectors
    are log-probabilities, not comparable with one another)."""
    # arch-weights[-int8][-n<detector>][-s<scorer>]: only the scorer's part starts with "s"
    return bool(model_version) and any(p.startswith(SCORER_MARK[1:]) for p in model_version.split("-")[2:])


def _clause_batch(texts: list[str], split) -> tuple[list[str], list[int]]:
    """Every clause of ``texts`` that ``split`` yields, and the index of the text it came from."""
    clauses, owner = [], []
    for i, text in enumerate(texts):
        for c in split(text):
            clauses.append(c)
            owner.append(i)
    return clauses, owner


def build_model(arch: str, dim: int, detail_width: int | None = None,
                spatial_pool=None, focal_width: int = 0) -> torch.nn.Module:
    """An untrained model of ``arch``: "ctseg" (U-Net and finding slots, shipped) or a CLIP-style
    dual encoder ("ctnet", "resnet10").  ``detail_width`` is ctseg's detail stage (None: the default
    of new models), ``spatial_pool`` the pooling of its stored map (None: that of models saved before
    grids were selectable), ``focal_width`` its focal head (0: none)."""
    if arch == "ctseg":
        from medsearch.models.slot_model import DETAIL_WIDTH, SPATIAL_POOL, SlotModel

        return SlotModel(dim, DETAIL_WIDTH if detail_width is None else detail_width,
                         tuple(spatial_pool) if spatial_pool else SPATIAL_POOL, focal_width=focal_width)
    from medsearch.models.dual import DualEncoder

    return DualEncoder(arch, dim)


def model_dir_for(inst) -> Path:
    configured = inst.settings.model_dir if inst is not None else ""
    if not configured:
        return DEFAULT_MODEL_DIR
    path = Path(configured)
    return path if path.is_absolute() else Path(inst.home) / path


def load_encoder(model_dir: Path, int8: bool) -> Encoder:
    key = (str(Path(model_dir).resolve()), bool(int8))
    with _lock:
        if key not in _cache:
            _cache[key] = Encoder(model_dir, int8=int8)
        return _cache[key]


def get_encoder(inst) -> Encoder:
    """The instance's encoder (cached per model folder and INT8 setting)."""
    return load_encoder(model_dir_for(inst), bool(inst.settings.model_int8) if inst is not None else False)


def doctor_check(inst, Check):
    """The model loads and encodes a phrase to a unit vector of the configured dimension."""
    path = model_dir_for(inst)
    try:
        enc = get_encoder(inst)
        vec = enc.encode_text("right lower lobe solid nodule")
    except MedsearchError as exc:
        return Check("model", "fail", exc.problem, exc.fix or "")
    if vec.shape != (enc.dim,) or abs(float(np.linalg.norm(vec)) - 1.0) > 1e-3:
        return Check("model", "fail", f"the model at {path} gives a malformed text embedding",
                     "Retrain it with 'medsearch train', or clear model_dir to use the bundled model.")
    return Check("model", "ok", f"{enc.model_version} ({'INT8' if enc.int8 else 'FP32'}, dim {enc.dim})")

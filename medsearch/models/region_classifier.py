"""The region classifier: which finding each dense component of the lungs is.

:func:`~medsearch.models.regions.lesion_components` finds the dense parts of a scan's lungs and describes their
shape; :class:`RegionNet` reads those numbers and says which kind of finding each part is (or none).  Three of
its classes leave it as evidence (:data:`REGION_TYPES`): masses, consolidations and atelectasis, the types the
U-Net confuses or misses on its coarse grid (docs/model.md, "The region classifier").  Each has its own Platt
calibration, fitted on studies at their natural rate, so that the slots' noisy-OR over a scan's components means
what it says.  Stored as ``regions.pt`` beside the nodule detector; trained by ``medsearch train-regions``.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from medsearch.models.regions import N_FEATURES, lesion_components

#: The classes of :class:`RegionNet`, "none" first: the region types and the other findings a dense
#: component can lie on (told apart so that a nodule or a cavity is not called a mass).
CLASSES: tuple[str, ...] = ("none", "atelectasis", "mass", "consolidation", "nodule", "cavity",
                            "pleural effusion", "ground-glass opacity")
#: The classes that become evidence for the slots.
REGION_TYPES: tuple[str, ...] = ("atelectasis", "mass", "consolidation")
REGION_FILE = "regions.pt"
#: How each type's evidence meets the U-Net's slots (:func:`~medsearch.models.slot_model.merge_other`; "max"
#: for the types not named).  Chosen on 600 studies of seed 1202, a training seed the shipped model never
#: saw (docs/model.md, "The region classifier"): for masses the geometric mean (nDCG@10 +3.9 over the
#: larger presence), for consolidation and atelectasis the larger presence.
MERGE: dict[str, str] = {"mass": "geo"}
#: Types whose U-Net presence the classifier's presence of another type explains away before the merge
#: (``{"consolidation": "mass"}``: the U-Net's consolidation counts only for ``1 - P(mass)`` of the classifier's
#: masses, since the U-Net calls masses consolidations).  Empty: that rule raised consolidation queries' nDCG@10
#: on seed 1202 (0.674 -> 0.708) and lowered it on the benchmark's pool (0.648 -> 0.631; docs/model.md, "More
#: candidates per scan (session 17)"), so it is measured and off.
EXPLAINED_BY: dict[str, str] = {}
#: How far (cells of the U-Net's half-resolution grid, each way) a component of a region type looks for its lobe.
#: A component's lobe is the U-Net's lobe probability at its centroid; at the centroid of a mass or a
#: consolidation against the chest wall, the U-Net calls the dense tissue background and every lobe's probability
#: is near zero, so a component the classifier was sure of (0.4-0.9) gave its lobe a presence of 0.001-0.03
#: (docs/model.md, "Lobes within reach (session 20)").  Each lobe's probability is the largest within this reach
#: (1: the 3 x 3 x 3 cells around the centroid, 39 x 26 x 26 mm in z, y, x).  0: the centroid's own, as before.
LOBE_REACH: int = 1


class RegionNet(nn.Module):
    """Component features -> class logits.

    Args:
        hidden: width of the two hidden layers.
        mean, std: (N_FEATURES,) the training features' standardisation (stored with the weights).

    Shapes:
        ``forward(features)``: (N, N_FEATURES) -> (N, len(CLASSES)) logits.
    """

    def __init__(self, hidden: int = 64, mean: torch.Tensor | None = None, std: torch.Tensor | None = None):
        super().__init__()
        self.hidden = int(hidden)
        self.register_buffer("mean", torch.zeros(N_FEATURES) if mean is None else mean.float())
        self.register_buffer("std", torch.ones(N_FEATURES) if std is None else std.float())
        self.mlp = nn.Sequential(nn.Linear(N_FEATURES, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, len(CLASSES)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.mlp((features - self.mean) / self.std)


@dataclass
class RegionDetections:
    """Classified components of one scan, on the grid they were found on.

    Attributes:
        index: (M, 3) centroid ``(z, y, x)`` in voxels.
        diameter_mm: (M,) longest extent.
        probability: region type -> (M,) calibrated probability that the component is one.
    """

    index: np.ndarray
    diameter_mm: np.ndarray
    probability: dict

    def __len__(self) -> int:
        return len(self.diameter_mm)


class RegionClassifier:
    """A trained :class:`RegionNet` with each region type's calibration ``sigmoid(a * logit + b)``, where the
    logit is the class's log-odds against all others."""

    def __init__(self, net: RegionNet, calibration: dict | None = None, summary: dict | None = None,
                 merge=None):
        self.net = net.eval()
        self.calibration = {t: (float(a), float(b)) for t, (a, b) in (calibration or {}).items()}
        self.calibration.update({t: (1.0, 0.0) for t in REGION_TYPES if t not in self.calibration})
        self.summary = summary or {}
        #: the learned merge of its presences with the U-Net's (:class:`~medsearch.models.region_merge.
        #: RegionMerge`, fitted by ``medsearch fit-region-merge``), or None: the fixed rules of :data:`MERGE`
        self.merge = merge

    def save(self, path: Path) -> None:
        extra = {"merge": self.merge.to_blob()} if self.merge is not None else {}
        torch.save({"state": {k: v.detach().cpu() for k, v in self.net.state_dict().items()},
                    "hidden": self.net.hidden, "classes": list(CLASSES),
                    "calibration": {t: {"scale": a, "offset": b} for t, (a, b) in self.calibration.items()},
                    "summary": self.summary, **extra}, Path(path))

    @classmethod
    def load(cls, model_dir: Path) -> "RegionClassifier | None":
        """The region classifier of a model folder, or None when it has none.

        Raises:
            ConfigError: ``regions.pt`` is there but unreadable, or scores other classes.
        """
        path = Path(model_dir) / REGION_FILE
        if not path.exists():
            return None
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            if tuple(blob["classes"]) != CLASSES:
                raise ValueError("classes differ")
            net = RegionNet(int(blob["hidden"]))
            net.load_state_dict({k: v.float() for k, v in blob["state"].items()})
            merge = None
            if blob.get("merge") is not None:
                from medsearch.models.region_merge import RegionMerge

                merge = RegionMerge.from_blob(blob["merge"])
            return cls(net, {t: (c["scale"], c["offset"]) for t, c in blob["calibration"].items()}, blob.get("summary"),
                       merge)
        except (OSError, RuntimeError, KeyError, TypeError, ValueError, EOFError, pickle.UnpicklingError) as exc:
            from medsearch.errors import ConfigError

            raise ConfigError(f"The region classifier '{path}' cannot be read ({type(exc).__name__}).",
                              "Retrain it ('medsearch train-regions MODEL_DIR') or remove the file to run "
                              "the model without it.") from None

    def digest(self) -> bytes:
        """The weights and calibration as bytes (names evidence caches).  The merge is left out: it reads the
        evidence, it does not make it, so refitting it keeps an archive's cached evidence (the model version
        follows the whole file)."""
        return b"".join(v.numpy().tobytes() for v in self.net.state_dict().values()) + repr(
            sorted(self.calibration.items())).encode()

    @torch.no_grad()
    def log_odds(self, features: np.ndarray) -> np.ndarray:
        """(M, len(CLASSES)) each class's log-odds against the rest."""
        logp = torch.log_softmax(self.net(torch.from_numpy(np.asarray(features, np.float32))), dim=1)
        return (logp - torch.log1p(-logp.exp().clamp(max=1 - 1e-6))).numpy()

    def probabilities(self, features: np.ndarray) -> dict:
        """Region type -> (M,) calibrated probability."""
        if len(features) == 0:
            return {t: np.zeros(0, np.float32) for t in REGION_TYPES}
        lo = self.log_odds(features)
        return {t: (1 / (1 + np.exp(-(a * lo[:, CLASSES.index(t)] + b)))).astype(np.float32)
                for t, (a, b) in self.calibration.items()}

    def detect(self, hu: np.ndarray, spacing, lungs: np.ndarray) -> RegionDetections:
        """The classified components of one scan (on the detector's grid, with its lung mask)."""
        comp = lesion_components(hu, spacing, lungs)
        return RegionDetections(comp.centre, comp.diameter_mm, self.probabilities(comp.features))


__all__ = ["CLASSES", "EXPLAINED_BY", "LOBE_REACH", "MERGE", "REGION_FILE", "REGION_TYPES", "RegionClassifier", "RegionDetections", "RegionNet"]

"""The learned merge: one lobe's U-Net and region-classifier presences, read together, for a region type.

The U-Net and the region classifier (:mod:`medsearch.models.region_classifier`) each give every lobe a presence
of atelectasis, mass and consolidation.  Neither tells masses from consolidations alone: the U-Net calls masses
consolidations on its coarse grid, and the classifier misses what its lung mask leaves out.  The fixed rules of
:func:`~medsearch.models.slot_model.merge_other` ("max", "geo") read one type's two presences only.  A
:class:`RegionMerge` reads all six (both sources, the three types) as log-odds and returns, by a logistic
regression fitted on a labelled archive at its natural rates, the probability that the lobe holds the type:
so the U-Net's "consolidation" counts for less where the classifier says "mass" (docs/model.md, "The learned
merge").

Plain functions over arrays; it is stored in the region classifier's file (``regions.pt``) and fitted by
``medsearch fit-region-merge``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from medsearch import vocab
from medsearch.models.region_classifier import REGION_TYPES

#: Presences are clipped to [EPS, 1 - EPS] before their log-odds are taken (a presence of exactly 0 or 1
#: would be an infinite input).
EPS = 1e-4
#: Inputs of the regression, in order: the U-Net's log-odds of each region type, then the classifier's.
INPUTS: tuple[str, ...] = tuple(f"unet {t}" for t in REGION_TYPES) + tuple(f"classifier {t}" for t in REGION_TYPES)
#: The default strength of the L2 penalty, as ``1 / C`` of a logistic regression summed over examples.
#: 0.1 was the better of 0.1 and 1.0 on seed 1202 (docs/model.md, "The learned merge").
DEFAULT_C = 0.1


def log_odds(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(EPS, 1.0 - EPS)
    return torch.log(p) - torch.log1p(-p)


def merge_features(unet: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
    """(..., L, len(INPUTS)) the regression's inputs from the presences ``unet`` and ``classifier``,
    each (..., len(REGION_TYPES), L) in REGION_TYPES' order."""
    return torch.cat([log_odds(unet), log_odds(classifier)], dim=-2).transpose(-1, -2)


@dataclass
class RegionMerge:
    """Fitted logistic regressions, one per merged type.

    Attributes:
        weights: type -> (len(INPUTS),) weights of :func:`merge_features`.
        bias: type -> intercept.
        summary: how and on what it was fitted.
    """

    weights: dict[str, np.ndarray]
    bias: dict[str, float]
    summary: dict = field(default_factory=dict)

    def __post_init__(self):
        for t, w in self.weights.items():
            if t not in REGION_TYPES or np.shape(w) != (len(INPUTS),) or t not in self.bias:
                raise ValueError(f"a merge for {t!r} of shape {np.shape(w)}")

    @property
    def types(self) -> tuple[str, ...]:
        return tuple(t for t in REGION_TYPES if t in self.weights)

    def presence(self, ftype: str, unet: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
        """(..., L) the merged presence of ``ftype`` from :func:`merge_features`' two inputs."""
        w = torch.as_tensor(self.weights[ftype], dtype=unet.dtype)
        return torch.sigmoid(merge_features(unet, classifier) @ w + float(self.bias[ftype]))

    def to_blob(self) -> dict:
        return {"inputs": list(INPUTS), "types": {t: {"weights": [float(v) for v in self.weights[t]],
                                                       "bias": float(self.bias[t])} for t in self.types},
                "summary": self.summary}

    @classmethod
    def from_blob(cls, blob: dict) -> "RegionMerge":
        if list(blob["inputs"]) != list(INPUTS):
            raise ValueError("the merge reads other inputs")
        return cls({t: np.asarray(v["weights"], np.float64) for t, v in blob["types"].items()},
                   {t: float(v["bias"]) for t, v in blob["types"].items()}, dict(blob.get("summary") or {}))


def fit_logistic(x: np.ndarray, y: np.ndarray, c: float = DEFAULT_C, steps: int = 200) -> tuple[np.ndarray, float]:
    """(weights, bias) of an L2-penalised logistic regression: the sum of log-losses plus ``||w||^2 / (2 c)``
    (the intercept unpenalised), by L-BFGS in float64.  Deterministic: full batch, zero start."""
    xt = torch.as_tensor(np.asarray(x, np.float64))
    yt = torch.as_tensor(np.asarray(y, np.float64))
    w = torch.zeros(xt.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=steps, tolerance_grad=1e-9, tolerance_change=1e-12,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(xt @ w + b, yt, reduction="sum")
        loss = loss + (w * w).sum() / (2.0 * c)
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().numpy().copy(), float(b.detach())


def lobe_labels(findings: list[dict]) -> np.ndarray:
    """(len(REGION_TYPES), L) 1 where a labelled finding of the type lies in the lobe (the lingula is the left
    upper lobe's)."""
    y = np.zeros((len(REGION_TYPES), len(vocab.LOBES)), np.float32)
    for f in findings:
        site = vocab.PARENT_SITE[vocab.LINGULA] if f.get("site") == vocab.LINGULA else f.get("site")
        if f.get("type") in REGION_TYPES and site in vocab.LOBES:
            y[REGION_TYPES.index(f["type"]), vocab.LOBES.index(site)] = 1.0
    return y


def fit_region_merge(unet: np.ndarray, classifier: np.ndarray, labels: np.ndarray, types: tuple[str, ...],
                     c: float = DEFAULT_C) -> RegionMerge:
    """Fit one regression per type of ``types`` on every lobe of every study.

    Args:
        unet, classifier: (S, len(REGION_TYPES), L) each study's presences, before any merge.
        labels: (S, len(REGION_TYPES), L) 1 where the lobe holds the type (:func:`lobe_labels`).

    Raises:
        ValueError: a type is not a region type, or no lobe (or every lobe) holds it.
    """
    x = merge_features(torch.as_tensor(unet, dtype=torch.float64),
                       torch.as_tensor(classifier, dtype=torch.float64)).reshape(-1, len(INPUTS)).numpy()
    weights, bias, counts = {}, {}, {}
    for t in types:
        if t not in REGION_TYPES:
            raise ValueError(f"{t!r} is not one of the region types ({', '.join(REGION_TYPES)})")
        y = np.asarray(labels)[:, REGION_TYPES.index(t)].reshape(-1)
        if y.min() == y.max():
            raise ValueError(f"{'no' if y.max() == 0 else 'every'} lobe of the archive holds a {t}")
        weights[t], bias[t] = fit_logistic(x, y, c)
        counts[t] = int(y.sum())
    return RegionMerge(weights, bias, {"studies": int(len(unet)), "lobes_with": counts, "c": c})


__all__ = ["DEFAULT_C", "INPUTS", "RegionMerge", "fit_logistic", "fit_region_merge", "lobe_labels", "log_odds",
           "merge_features"]

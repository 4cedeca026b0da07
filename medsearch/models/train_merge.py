"""Fitting the learned merge (``medsearch fit-region-merge``): presences before any merge, lobe labels, fit.

Every study of a labelled synthetic archive goes through the model as the encoder runs it: the U-Net's slots
give each lobe's presence of every region type, and the region classifier's evidence (with the detector's, the
archive's cached evidence) gives its own through the same noisy-OR as
:meth:`~medsearch.models.slot_model.SlotModel._with_nodules`.  The labels say which lobes hold which type.
:func:`~medsearch.models.region_merge.fit_region_merge` then fits one regression per type on every lobe.  The
archive should be planned as the archive plans studies (``medsearch synth``), so that each type comes at its
natural rate and the fitted presence is a probability at that rate.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from medsearch import vocab
from medsearch.models.region_classifier import LOBE_REACH, MERGE, REGION_TYPES
from medsearch.models.region_merge import DEFAULT_C, RegionMerge, fit_region_merge, lobe_labels


@torch.no_grad()
def merge_inputs(encoder, studies, batch: int = 8, progress: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(unet, classifier, labels), each (S, len(REGION_TYPES), L): the U-Net's and the region classifier's
    presences of each region type per lobe, before any merge, and the labels.

    Args:
        encoder: a :class:`~medsearch.models.registry.Encoder` of a ctseg model with a detector.
        studies: :class:`~medsearch.models.data.Study` list loaded with that detector's evidence.
    """
    from medsearch.models.image_tower_seg import HEAD_SPLIT
    from medsearch.models.nodule_detector import lobes_within, nodule_slots
    from medsearch.models.preprocess import hu_windows

    nr = HEAD_SPLIT[0]
    regional = [vocab.FINDING_TYPES.index(r) for r in REGION_TYPES]
    shape = (len(studies), len(REGION_TYPES), len(vocab.LOBES))
    unet, mine, labels = np.zeros(shape, np.float32), np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    windows = encoder.config.get("windows_hu")
    model = encoder.model
    for i in tqdm(range(0, len(studies), batch), desc="merge inputs", unit="batch", disable=not progress):
        part = studies[i:i + batch]
        x = torch.stack([hu_windows(torch.from_numpy(s.hu.astype(np.float32)), windows) for s in part])
        maps, _ = model.image(x)
        slots = model.image.slots(maps)
        region = torch.softmax(maps[:, :nr], dim=1)[:, 1:]
        for b, st in enumerate(part):
            unet[i + b] = slots["presence"][b, regional].numpy()
            others = (st.nodules.others or {}) if st.nodules is not None else {}
            lobes = lobes_within(region[b], LOBE_REACH) if others else None
            for k, r in enumerate(REGION_TYPES):
                own = nodule_slots(others[r], lobes) if r in others else None
                if own is not None:
                    mine[i + b, k] = own["presence"].numpy()
            labels[i + b] = lobe_labels(st.findings)
    return unet, mine, labels


def fixed_rule(ftype: str, unet: np.ndarray, mine: np.ndarray) -> np.ndarray:
    """(S, L) the presence the fixed rule of :data:`~medsearch.models.region_classifier.MERGE` gives."""
    k = REGION_TYPES.index(ftype)
    if MERGE.get(ftype, "max") == "geo":
        return np.sqrt(unet[:, k] * mine[:, k])
    return np.maximum(unet[:, k], mine[:, k])


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float | None:
    from medsearch.models.train_regions import _average_precision

    return _average_precision(np.asarray(scores).reshape(-1), np.asarray(labels).reshape(-1))


def fit_merge(unet: np.ndarray, mine: np.ndarray, labels: np.ndarray, types: tuple[str, ...],
              c: float = DEFAULT_C) -> tuple[RegionMerge, dict]:
    """The fitted merge and its summary: per type, the lobes holding it, and the lobe-level average precision
    of the fixed rule and of the merge on the same studies (in-sample: seven parameters per type)."""
    merge = fit_region_merge(unet, mine, labels, types, c)
    fit = {}
    for t in merge.types:
        k = REGION_TYPES.index(t)
        merged = merge.presence(t, torch.from_numpy(unet).double(), torch.from_numpy(mine).double()).numpy()
        fit[t] = {"lobes_with": int(labels[:, k].sum()),
                  "lobe_ap_fixed_rule": round(average_precision(fixed_rule(t, unet, mine), labels[:, k]), 4),
                  "lobe_ap_merge": round(average_precision(merged, labels[:, k]), 4),
                  "weights": [round(float(w), 4) for w in merge.weights[t]], "bias": round(merge.bias[t], 4)}
    merge.summary = {**merge.summary, "fit": fit}
    return merge, merge.summary


__all__ = ["average_precision", "fit_merge", "fixed_rule", "merge_inputs"]

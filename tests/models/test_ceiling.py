"""The ceiling of the ctseg design: the attribute columns of each type, image-like label vectors, and
the label vectors of a small pool retrieving their own studies."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsearch import vocab
from medsearch.models.ceiling import (image_like, label_attributes, phrase_metrics_by_type, type_columns,
                                      with_types_from)
from medsearch.models.data import Study
from medsearch.models.slots import ATTR_DIM, D, L, T, Z, attribute_vector
from medsearch.models.slot_model import FULL_ATTR_DIM

NODULE, RUL = vocab.FINDING_TYPES.index("nodule"), vocab.LOBES.index("right upper lobe")


def test_the_types_columns_split_the_attribute_vector():
    columns = [c for t in vocab.FINDING_TYPES for c in type_columns(t)]
    assert sorted(columns) == list(range(ATTR_DIM))          # every column once; the "no finding" entry is nobody's
    assert type_columns("nodule")[:2] == [NODULE, T + NODULE * L]


def test_an_unknown_type_is_refused_by_name():
    with pytest.raises(ValueError, match="lymph node"):
        type_columns("lymph node")


def _slots(presence_value: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    presence = torch.zeros(1, T, L)
    presence[0, NODULE, RUL] = presence_value
    density = torch.zeros(1, T, L, D)
    density[..., 0] = 1.0
    size = torch.zeros(1, T, L, Z)
    size[..., 1] = 1.0
    return presence, density, size


def test_two_clauses_on_one_slot_become_one_sure_slot():
    text_like = torch.cat([attribute_vector(*_slots(2.0)), torch.zeros(1, 1)], dim=1)   # two nodules' clauses, summed
    image = torch.cat([attribute_vector(*_slots(1.0)), torch.zeros(1, 1)], dim=1)
    assert text_like.shape == (1, FULL_ATTR_DIM) and text_like.max() == 2.0
    assert torch.allclose(image_like(text_like), image)
    normal = image_like(torch.zeros(1, FULL_ATTR_DIM))
    assert normal[0, -1] == 1.0 and normal[0, :-1].abs().sum() == 0


def test_types_from_another_source_replace_only_their_columns():
    rng = torch.Generator().manual_seed(0)
    mine, labels = torch.rand(3, FULL_ATTR_DIM, generator=rng), torch.rand(3, FULL_ATTR_DIM, generator=rng)
    mixed = with_types_from(mine, labels, ["nodule"])
    cols = type_columns("nodule")
    rest = [c for c in range(ATTR_DIM) if c not in set(cols)]
    assert torch.equal(mixed[:, cols], labels[:, cols]) and torch.equal(mixed[:, rest], mine[:, rest])
    assert torch.allclose(mixed[:, -1], (1 - mixed[:, :T].amax(dim=1).clamp(max=1)).clamp(0, 1))
    every = with_types_from(mine, labels, vocab.FINDING_TYPES)
    assert torch.equal(every[:, :ATTR_DIM], labels[:, :ATTR_DIM])


def _finding(ftype, site, density=None, diameter=None):
    return {"type": ftype, "site": site, "laterality": "right" if site.startswith("right") else "left",
            "density": density, "diameter_mm": diameter}


@pytest.fixture(scope="module")
def encoder():
    from medsearch.models.registry import DEFAULT_MODEL_DIR, Encoder

    return Encoder(DEFAULT_MODEL_DIR)


def test_label_vectors_of_a_small_pool_find_their_own_studies(encoder):
    from medsearch.models import phrases
    from medsearch.models.evaluate import evaluate_embeddings, phrase_specs

    sets = [[], [_finding("nodule", "right upper lobe", "solid", 8.0)],
            [_finding("nodule", "left lower lobe", "ground-glass", 22.0)],
            [_finding("pleural effusion", "right lung")],
            [_finding("mass", "left upper lobe", "solid", 45.0), _finding("emphysema", "right lung")]]
    studies = [Study(f"s{i}", np.zeros((1, 1, 1), np.int16), f, phrases.report_canonical_from_labels(f),
                     phrases.report_canonical_from_labels(f)) for i, f in enumerate(sets)]
    attributes = label_attributes(encoder, studies)
    assert attributes.shape == (len(studies), FULL_ATTR_DIM)
    assert attributes[0, -1] > 0.9 and attributes[1, -1] < 0.1          # the normal study, and not
    assert int(attributes[1, T:T + T * L].argmax()) == NODULE * L + RUL   # its surest slot is its own
    with torch.no_grad():
        image = encoder.model.embed_image(attributes)
    result = evaluate_embeddings(encoder, studies, image.numpy())
    assert result["report_to_volume"]["en"]["R@1"] == 1.0
    by_type = phrase_metrics_by_type(encoder, studies, image, phrase_specs(studies))
    assert set(by_type) == {"nodule", "pleural effusion", "mass", "emphysema"}
    assert by_type["nodule"]["queries"] >= 2 and 0 <= by_type["nodule"]["nDCG@10"] <= 1

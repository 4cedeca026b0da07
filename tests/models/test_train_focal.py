"""Stage 1c: the focal head's targets, shape contract, training and the keep-only-if-better rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsearch import vocab
from medsearch.models.image_tower_seg import FOCAL_TYPES, HEAD_SPLIT, N_REGIONS, SegEncoder
from medsearch.models.slot_model import SlotModel
from medsearch.models.train_focal import (LUNG_HU, VISIBLE_HU, FocalConfig, focal_loss, focal_targets,
                                          train_focal)
from medsearch.models.train_slots import dense_from_studies

NODULE_BIT = 1 << vocab.FINDING_TYPES.index("nodule")


def test_focal_head_replaces_only_the_focal_types_logits():
    torch.manual_seed(0)
    net = SegEncoder(focal_width=8).eval()
    x = torch.rand(2, 5, 16, 32, 32)
    with torch.no_grad():
        maps, pooled = net(x)
        unet, _, _ = net.decode(x)
    assert maps.shape == unet.shape == (2, sum(HEAD_SPLIT), 8, 16, 16) and pooled.shape == (2, net.pooled_dim)
    focal = [N_REGIONS + vocab.FINDING_TYPES.index(t) for t in FOCAL_TYPES]
    others = [c for c in range(maps.shape[1]) if c not in focal]
    assert torch.equal(maps[:, others], unet[:, others])
    assert not torch.allclose(maps[:, focal], unet[:, focal])
    assert SegEncoder().focal is None


def test_focal_targets_keep_a_lesions_visible_core_and_ignore_the_rest():
    hu = np.full((8, 16, 16), LUNG_HU, np.float32)
    types = np.zeros((4, 8, 8), np.int16)
    # a visible nodule: mask over cells (1, 1..3, 1..3); bright (+40 HU) only in cell (1, 2, 2)
    types[1, 1:4, 1:4] = NODULE_BIT
    hu[2:4, 4:6, 4:6] = 40.0
    hu[2:4, 2:8, 2:8] = np.maximum(hu[2:4, 2:8, 2:8], -820.0)
    # an invisible one (never brighter than VISIBLE_HU): a lesion the grid cannot show
    types[2, 5:7, 5:7] = NODULE_BIT
    hu[4:6, 10:14, 10:14] = VISIBLE_HU - 50
    targets, ignore = focal_targets(hu, types)
    assert targets.shape == (len(FOCAL_TYPES), 4, 8, 8)
    assert targets[0].sum() == 1 and targets[0, 1, 2, 2] == 1
    assert ignore[1, 1, 1] and ignore[2, 5, 5] and not ignore[1, 2, 2]
    assert not ignore[3, 7, 0]  # far from every lesion: an ordinary negative


@pytest.mark.parametrize("hard", [0, 4])
def test_focal_loss_rewards_the_right_answer(hard):
    target = torch.zeros(1, 1, 4, 6, 6)
    target[0, 0, 2, 3, 3] = 1
    lung = torch.ones(1, 1, 4, 6, 6, dtype=torch.bool)
    good = torch.where(target > 0, 6.0, -6.0)
    assert focal_loss(good, target, lung, hard) < focal_loss(-good, target, lung, hard)


@pytest.fixture(scope="module")
def tiny_set(phantom_studies):
    data = dense_from_studies(phantom_studies[:6])
    data.dense[:4] = True
    data.region[:4] = 1
    # a bright "nodule" of one cell in each of the first four studies
    for i in range(4):
        data.hu[i, 6:8, 10:12, 10:12] = 40
        data.types[i, 3, 5, 5] = NODULE_BIT
    data.meta[0]["findings"] = [{"type": "nodule", "site": "right upper lobe"}]
    return data


def test_train_focal_is_deterministic_and_reports_its_validation(tiny_set):
    cfg = FocalConfig(steps=3, batch_size=2, width=8)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = SlotModel()
        summary = train_focal(model, tiny_set.subset([0, 1, 2, 3]), tiny_set.subset([0, 4]), cfg, device="cpu",
                              progress=False)
        runs.append((summary, model))
    summary, model = runs[0]
    assert summary["steps"] == 3 and summary["positives"] == 4
    assert set(summary["val_auc"]["nodule"]) == {"unet", "focal"}
    # kept only if better than the U-Net's own channel; otherwise the tower goes on without it
    assert (model.image.focal is not None) == summary["kept"] == runs[1][0]["kept"]
    if summary["kept"]:
        assert all(torch.equal(a, b) for a, b in zip(model.image.focal.state_dict().values(),
                                                     runs[1][1].image.focal.state_dict().values()))
    assert all(p.requires_grad for p in model.parameters())


def test_train_focal_without_voxel_targets_trains_nothing(tiny_set):
    model = SlotModel()
    summary = train_focal(model, tiny_set.subset([4, 5]), None, FocalConfig(steps=3), device="cpu",
                          progress=False)
    assert summary == {"steps": 0, "kept": False} and model.image.focal is None

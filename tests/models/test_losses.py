"""InfoNCE (symmetric, multi-positive, hard negatives, learnable temperature) and attribute losses."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from medsearch.models.heads import attribute_targets, decode_findings
from medsearch.models.losses import attribute_loss, info_nce


def _unit(x):
    return F.normalize(x, dim=-1)


def test_info_nce_rewards_alignment_and_penalises_hard_negatives():
    torch.manual_seed(0)
    img = _unit(torch.randn(4, 16))
    eye = torch.eye(4, dtype=torch.bool)
    scale = torch.tensor(2.0)
    aligned = info_nce(img, img.clone(), eye, scale)
    shuffled = info_nce(img, img[[1, 2, 3, 0]], eye, scale)
    assert aligned < shuffled
    # A hard negative identical to image 0's positive text raises the loss.
    pos = torch.cat([eye, torch.zeros(4, 1, dtype=torch.bool)], dim=1)
    with_hard = info_nce(img, torch.cat([img, img[:1]]), pos, scale)
    assert with_hard > aligned


def test_info_nce_multi_positive_targets_and_temperature_gradient():
    img = _unit(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
    txt = img.clone()
    same = torch.tensor([[1, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=torch.bool)
    scale = torch.tensor(0.0, requires_grad=True)
    loss = info_nce(img, txt, same, scale)
    loss.backward()
    # Duplicates count as positives: at high scale the loss tends to the targets' entropy,
    # log 2 for the two duplicate rows and 0 for the third, so (2/3) log 2.
    assert scale.grad is not None and scale.grad < 0
    hi = info_nce(img, txt, same, torch.tensor(4.6))
    assert abs(float(hi) - 2 / 3 * float(torch.log(torch.tensor(2.0)))) < 0.01


def test_attribute_targets_and_loss():
    findings = [{"type": "nodule", "site": "lingula", "laterality": "left", "density": "solid", "diameter_mm": 8.0},
                {"type": "pleural effusion", "site": "pleura", "laterality": "bilateral", "density": None,
                 "diameter_mm": None}]
    t = attribute_targets(findings)
    assert t["presence"].sum() == 1 + 5  # the nodule in the left upper lobe; bilateral effusion in every lobe
    assert t["density"].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert t["size"].tolist() == [0.0, 1.0, 0.0, 0.0, 0.0]
    targets = {k: v[None] for k, v in t.items()}
    good = {k: (v * 2 - 1) * 12 for k, v in targets.items()}
    bad = {k: -v for k, v in good.items()}
    assert attribute_loss(good, targets) < 0.01 < attribute_loss(bad, targets)
    decoded = decode_findings({k: v[0] for k, v in good.items()})
    kinds = {(f["type"], f["site"], f["laterality"]) for f in decoded}
    assert kinds == {("nodule", "left upper lobe", "left"), ("pleural effusion", "pleura", "bilateral")}
    nodule = next(f for f in decoded if f["type"] == "nodule")
    assert nodule["density"] == "solid" and 6 <= nodule["size_mm"] < 10

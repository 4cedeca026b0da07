"""medsearch.models.batchnorm_folding, and the nodule detector scoring through a folded copy of its networks."""

import numpy as np
import pytest
import torch
from monai.networks.blocks import Convolution
from torch import nn

from medsearch.models.batchnorm_folding import folded_copy
from medsearch.models.nodule_detector import NoduleDetector
from medsearch.models.nodule_net import N_FEATURES, NoduleNet


def _trained_like(net: nn.Module) -> nn.Module:
    """``net`` with batch-norm statistics and affines away from their defaults, in eval mode."""
    torch.manual_seed(0)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm3d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return net.eval()


def _norms(net: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm3d) for m in net.modules())


def test_folds_every_norm_after_a_convolution_and_keeps_the_function():
    net = _trained_like(NoduleNet(width=4, types=2))
    x, f = torch.rand(5, 1, 16, 16, 16) * 2 - 1, torch.randn(5, N_FEATURES)
    folded = folded_copy(net)
    assert _norms(net) > 0 and _norms(folded) == 0
    with torch.no_grad():
        for a, b in zip(folded(x, f), net(x, f)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_the_original_keeps_its_layers_and_weights():
    net = _trained_like(NoduleNet(width=4))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    folded_copy(net)
    after = net.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)


def test_a_block_that_normalises_before_its_convolution_is_left_alone():
    block = Convolution(3, 2, 3, norm="batch", act="relu", adn_ordering="AN").eval()
    folded = folded_copy(block)
    assert isinstance(folded.adn.N, nn.BatchNorm3d)


def test_a_network_in_training_mode_is_refused():
    with pytest.raises(ValueError, match="eval"):
        folded_copy(NoduleNet(width=4).train())


def test_the_detector_scores_through_a_folded_copy_made_once_per_set_of_weights():
    det = NoduleDetector(_trained_like(NoduleNet(width=4, types=2)), types=("nodule", "mass"))
    patches = (np.random.default_rng(0).random((40, 1, 16, 16, 16)) * 2 - 1).astype(np.float32)
    features = np.random.default_rng(1).standard_normal((40, N_FEATURES)).astype(np.float32)
    first = det.scoring_net()
    assert first is not det.net and _norms(first) == 0 and det.scoring_net() is first
    p, diameter, _, others = det.score_types(patches, features)
    with torch.no_grad():
        logits, logsize, _ = det.net(torch.from_numpy(patches), torch.from_numpy(features))
    np.testing.assert_allclose(p, torch.sigmoid(det.calibrated_log_odds(logits))[:, 0].numpy(), atol=1e-5)
    np.testing.assert_allclose(diameter, logsize.exp().numpy(), rtol=1e-4)
    # weights changed in place (as an optimiser does) make a new copy that follows them
    with torch.no_grad():
        det.net.head[-1].bias.add_(1.0)
    second = det.scoring_net()
    assert second is not first
    assert not np.allclose(det.score_types(patches, features)[0], p)


def test_a_detector_in_training_mode_scores_with_its_own_network():
    det = NoduleDetector(NoduleNet(width=4))
    det.net.train()
    assert det.scoring_net() is det.net

"""medsearch.models.onednn: the same outputs and weights, convolutions through oneDNN at inference."""

import copy

import pytest
import torch
from torch import nn

from medsearch.models.image_tower_seg import SegEncoder
from medsearch.models.onednn import OneDNNConv3d, plain_convolutions, use_onednn

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this PyTorch has no oneDNN")


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv3d(2, 4, 3, padding=1), nn.BatchNorm3d(4), nn.ReLU(),
                        nn.Conv3d(4, 3, 3, stride=2, padding=1, bias=False))
    return net.eval()


def test_switches_every_plain_conv3d_and_back():
    net = use_onednn(_net())
    assert [type(m) for m in net.modules() if isinstance(m, nn.Conv3d)] == [OneDNNConv3d, OneDNNConv3d]
    plain_convolutions(net)
    assert [type(m) for m in net.modules() if isinstance(m, nn.Conv3d)] == [nn.Conv3d, nn.Conv3d]


def test_weights_and_state_dict_keys_unchanged():
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    after = use_onednn(net).state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_runs_onednn_kernel_for_a_single_small_volume():
    # batch 1 and few channels: PyTorch's own choice here is its reference kernel, slow_conv3d
    net, x = _net(), torch.randn(1, 2, 6, 9, 9)
    fast = use_onednn(copy.deepcopy(net))
    with torch.no_grad(), torch.profiler.profile() as prof:
        fast(x)
    names = {e.key for e in prof.key_averages()}
    assert "aten::mkldnn_convolution" in names
    assert "aten::slow_conv3d_forward" not in names


def test_same_outputs_as_plain_forward():
    net, x = _net(), torch.randn(1, 2, 6, 9, 9)
    with torch.no_grad():
        expected = net(x)
        got = use_onednn(copy.deepcopy(net))(x)
    assert got.shape == expected.shape == (1, 3, 3, 5, 5)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_training_and_gradients_use_the_plain_kernel():
    net = use_onednn(_net())
    x = torch.randn(2, 2, 6, 9, 9, requires_grad=True)
    net(x).sum().backward()            # eval mode, gradients on: nn.Conv3d's own forward, differentiable
    assert x.grad is not None and net[0].weight.grad is not None
    net.train()
    with torch.no_grad(), torch.profiler.profile() as prof:
        net(torch.randn(1, 2, 6, 9, 9))
    assert "aten::mkldnn_convolution" not in {e.key for e in prof.key_averages()}


def test_u_net_shape_contract_and_values_hold():
    net = SegEncoder().eval()
    x = torch.randn(1, 5, 24, 40, 40)
    with torch.no_grad():
        expected = net(x)
        got = use_onednn(copy.deepcopy(net))(x)
    for a, b in zip(got, expected):
        if torch.is_tensor(a):
            assert a.shape == b.shape
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_the_encoder_runs_its_image_tower_through_onednn():
    from medsearch.models.registry import DEFAULT_MODEL_DIR, Encoder

    enc = Encoder(DEFAULT_MODEL_DIR)
    convs = [m for m in enc.model.image.modules() if isinstance(m, nn.Conv3d)]
    assert convs and all(type(m) is OneDNNConv3d for m in convs)

"""Shape contracts of every network, on the CPU."""

from __future__ import annotations

import pytest
import torch

from medsearch import vocab
from medsearch.models.dual import DualEncoder, build_image_encoder
from medsearch.models.heads import AttributeHeads
from medsearch.models.image_tower import CTEncoder
from medsearch.models.image_tower_resnet import ResNetEncoder
from medsearch.models.text_tower import MINILM_DIM, MiniLM, TextProjection

SHAPE = (48, 80, 80)


@pytest.mark.parametrize("net, spatial", [(CTEncoder(), (64, 3, 5, 5)), (ResNetEncoder(), (128, 3, 5, 5))])
def test_image_towers_pooled_and_spatial_shapes(net, spatial):
    net.eval()
    with torch.no_grad():
        pooled, fmap = net(torch.zeros(2, 2, *SHAPE))
    assert pooled.shape == (2, net.pooled_dim)
    assert fmap.shape == (2, *spatial)
    assert net.out_channels == spatial[0]


def test_attribute_heads_shapes():
    out = AttributeHeads(256)(torch.randn(3, 256))
    assert out["presence"].shape == (3, len(vocab.FINDING_TYPES), len(vocab.LOBES))
    assert out["density"].shape == (3, len(vocab.DENSITIES))
    assert out["size"].shape == (3, len(vocab.SIZE_BINS_MM))


def test_text_projection_is_unit_norm():
    out = TextProjection(256)(torch.randn(5, MINILM_DIM))
    assert out.shape == (5, 256)
    assert torch.allclose(out.norm(dim=1), torch.ones(5), atol=1e-5)


def test_minilm_loads_offline_and_pools_per_text():
    m = MiniLM()
    vec = m(["right lower lobe solid nodule", "left pleural effusion", "right lower lobe solid nodule"])
    assert vec.shape == (3, MINILM_DIM)
    assert torch.allclose(vec[0], vec[2], atol=1e-5)
    assert not torch.allclose(vec[0], vec[1], atol=1e-3)
    assert not any(p.requires_grad for p in m.parameters())


def test_dual_encoder_outputs():
    model = DualEncoder().eval()
    with torch.no_grad():
        out = model.encode_image(torch.zeros(1, 2, *SHAPE))
        txt = model.encode_text(torch.randn(2, MINILM_DIM))
    assert out["embedding"].shape == (1, 256)
    assert torch.allclose(out["embedding"].norm(dim=1), torch.ones(1), atol=1e-5)
    assert txt.shape == (2, 256)


def test_unknown_architecture_is_a_config_error():
    from medsearch.errors import ConfigError

    with pytest.raises(ConfigError, match="resnet10"):
        build_image_encoder("vit")

"""The cross-attention reranker: shape contract, masking, heatmap, ITM pairs, a tiny training run."""

from __future__ import annotations

import random

import pytest
import torch

from medsearch.errors import ModelError
from medsearch.models.reranker import (
    CrossAttentionReranker, grid_coords, itm_pairs, load_reranker, save_reranker, train_reranker,
)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return CrossAttentionReranker(text_dim=16, image_dim=8, dim=16, heads=2, layers=2).eval()


def test_grid_coords_cover_the_cube():
    c = grid_coords((3, 2, 1))
    assert c.shape == (6, 3)
    assert c[:, 0].min() == -1 and c[:, 0].max() == 1 and (c[:, 2] == 0).all()


@pytest.mark.parametrize("grid", [(6, 6, 4), (3, 5, 2)])
def test_shapes_and_heatmap_distribution(model, grid):
    text, mask = torch.randn(3, 5, 16), torch.ones(3, 5, dtype=torch.bool)
    logits, heat = model(text, mask, torch.randn(3, 8, *grid))
    assert logits.shape == (3,)
    assert heat.shape == (3, *grid)
    assert torch.allclose(heat.sum(dim=(1, 2, 3)), torch.ones(3), atol=1e-5)
    assert (heat >= 0).all()


def test_one_text_broadcasts_over_candidates(model):
    text, mask = torch.randn(1, 4, 16), torch.ones(1, 4, dtype=torch.bool)
    spatial = torch.randn(5, 8, 2, 2, 2)
    logits, _ = model(text, mask, spatial)
    one_by_one = torch.stack([model(text, mask, spatial[i:i + 1])[0][0] for i in range(5)])
    assert torch.allclose(logits, one_by_one, atol=1e-5)


def test_padding_tokens_do_not_change_the_score(model):
    text = torch.randn(1, 4, 16)
    mask = torch.ones(1, 4, dtype=torch.bool)
    padded = torch.cat([text, torch.randn(1, 3, 16) * 100], dim=1)
    pmask = torch.cat([mask, torch.zeros(1, 3, dtype=torch.bool)], dim=1)
    spatial = torch.randn(1, 8, 2, 3, 2)
    a, ha = model(text, mask, spatial)
    b, hb = model(padded, pmask, spatial)
    assert torch.allclose(a, b, atol=1e-5) and torch.allclose(ha, hb, atol=1e-5)


def test_float16_spatial_maps_are_accepted(model):
    logits, _ = model(torch.randn(1, 3, 16), torch.ones(1, 3, dtype=torch.bool),
                      torch.randn(2, 8, 2, 2, 2).half())
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()


FINDINGS = [
    [{"type": "nodule", "site": "left lower lobe", "laterality": "left", "density": "ground-glass",
      "diameter_mm": 22.0, "shape": "round"}],
    [{"type": "pleural effusion", "site": "pleura", "laterality": "right", "density": None, "diameter_mm": None}],
    [],
]


def test_itm_pairs_have_positives_and_hard_negatives():
    pairs = itm_pairs(FINDINGS, random.Random(0))
    pos = [p for p in pairs if p[2] == 1.0]
    neg = [p for p in pairs if p[2] == 0.0]
    assert {p[0] for p in pos} == {0, 1}
    assert neg, "hard negatives or other-study negatives expected"
    # a negative phrase never equals a positive phrase of the same study
    for i, text, _ in neg:
        assert (i, text, 1.0) not in pos


def test_itm_pairs_deterministic_for_a_seed():
    assert itm_pairs(FINDINGS, random.Random(3)) == itm_pairs(FINDINGS, random.Random(3))


def fake_tokens(texts):
    """Deterministic bag-of-characters tokens (keeps this test fast; the real one uses MiniLM)."""
    width = max(len(t.split()) for t in texts)
    out = torch.zeros(len(texts), width, 384)
    mask = torch.zeros(len(texts), width, dtype=torch.bool)
    for i, t in enumerate(texts):
        for j, w in enumerate(t.split()):
            g = torch.Generator().manual_seed(sum(map(ord, w)) * 131 + len(w))
            out[i, j] = torch.randn(384, generator=g)
            mask[i, j] = True
    return out, mask


def simple_pairs(findings, rng):
    """Positives and one-word hard negatives (side, lobe), without the terminology (fast)."""
    texts = {0: ("left lower lobe nodule", ["right lower lobe nodule", "left upper lobe nodule", "pleural effusion"]),
             1: ("pleural effusion", ["left lower lobe nodule", "pneumothorax"])}
    return [(i, t, 1.0) for i, (t, _) in texts.items()] + [(i, n, 0.0) for i, (_, ns) in texts.items() for n in ns]


def test_training_learns_to_tell_pairs_apart(tmp_path):
    torch.manual_seed(0)
    # study 0: signal in the first cell; study 1: signal in the last cell
    spatial = torch.zeros(2, 4, 2, 2, 2)
    spatial[0, :, 0, 0, 0] = torch.tensor([3.0, 0.0, 1.0, 2.0])
    spatial[1, :, 1, 1, 1] = torch.tensor([0.0, 3.0, 2.0, 1.0])
    findings = FINDINGS[:2]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: thread hand-offs cost more than they save on a busy machine
    try:
        model = train_reranker(spatial, findings, tokens=fake_tokens, epochs=30, batch=16, lr=5e-3, seed=0,
                               progress=False, pairs_fn=simple_pairs)
    finally:
        torch.set_num_threads(threads)
    pairs = simple_pairs(findings, random.Random(1))
    texts = [p[1] for p in pairs]
    tok, mask = fake_tokens(texts)
    with torch.no_grad():
        logits, _ = model(tok, mask, spatial[torch.tensor([p[0] for p in pairs])])
    labels = torch.tensor([p[2] for p in pairs])
    acc = ((logits > 0).float() == labels).float().mean()
    assert acc >= 0.9
    save_reranker(model, tmp_path / "r.pt", {"keep": True})
    loaded, metrics = load_reranker(tmp_path / "r.pt")
    assert metrics == {"keep": True}
    with torch.no_grad():
        assert torch.allclose(loaded(tok, mask, spatial[torch.tensor([p[0] for p in pairs])])[0], logits)


def test_load_reports_a_broken_file(tmp_path):
    bad = tmp_path / "r.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelError, match="cannot be loaded"):
        load_reranker(bad)

"""The likelihood scorer: its vectors' contract, and that their inner product ranks by the log-likelihood."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from medsearch import vocab
from medsearch.errors import ConfigError
from medsearch.models import registry
from medsearch.models.likelihood import (
    FEATURES, GROUPS, LikelihoodScorer, group_of, image_embedding, image_features, slots_from_attributes,
    text_embedding, text_weights)
from medsearch.models.slots import D, L, T, Z, attribute_vector

NODULE = vocab.FINDING_TYPES.index("nodule")
EFFUSION = vocab.FINDING_TYPES.index("pleural effusion")
RUL, RLL = vocab.LOBES.index("right upper lobe"), vocab.LOBES.index("right lower lobe")
SOLID = vocab.DENSITIES.index("solid")


def _studies(b: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    presence = torch.rand(b, T, L, generator=g) * 0.2
    density = torch.softmax(torch.randn(b, T, L, D, generator=g), dim=-1)
    size = torch.softmax(torch.randn(b, T, L, Z, generator=g), dim=-1)
    return presence, density, size


def _clauses(specs: list[tuple[int, int, list[int], int | None, int | None]]) -> dict:
    """Clause-head outputs for (owner, type, lobes, density or None, size bin or None) clauses."""
    n = len(specs)
    out = {"type": torch.zeros(n, T + 1), "lobes": torch.zeros(n, L), "density": torch.ones(n, D),
           "size": torch.ones(n, Z), "owner": torch.tensor([s[0] for s in specs], dtype=torch.long)}
    for i, (_, t, lobes, d, z) in enumerate(specs):
        out["type"][i, t] = 1.0
        out["lobes"][i, lobes] = 1.0
        if d is not None:
            out["density"][i] = 0.0
            out["density"][i, d] = 1.0
        if z is not None:
            out["size"][i] = 0.0
            out["size"][i, z] = 1.0
    return out


NONE = _clauses([])


def _scores(attr, positive, negated, complete, scorer=LikelihoodScorer()):
    img = image_embedding(attr, scorer, 512)
    txt = text_embedding(positive, negated, complete, scorer, 512)
    return txt @ img.T


def test_vectors_are_unit_and_of_the_model_width():
    attr = attribute_vector(*_studies())
    img = image_embedding(attr, LikelihoodScorer(), 512)
    assert img.shape == (4, 512) and torch.allclose(img.norm(dim=1), torch.ones(4), atol=1e-5)
    txt = text_embedding(_clauses([(0, NODULE, [RUL], SOLID, 2)]), NONE, torch.tensor([False]), LikelihoodScorer(),
                         512)
    assert txt.shape == (1, 512) and txt.norm().item() == pytest.approx(1.0, abs=1e-6)


def test_a_width_too_small_for_the_features_is_refused():
    with pytest.raises(ValueError, match=str(FEATURES + 1)):
        image_embedding(attribute_vector(*_studies()), LikelihoodScorer(), 256)


def test_the_inner_product_ranks_as_the_log_likelihood():
    presence, density, size = _studies(b=16, seed=3)
    attr = attribute_vector(presence, density, size)
    scorer = LikelihoodScorer()
    positive = _clauses([(0, NODULE, [RUL], SOLID, 2), (0, EFFUSION, [0, 1, 2], None, None)])
    w = text_weights(positive, NONE, torch.tensor([True]), scorer)
    raw = (w @ image_features(presence, density, size, eps=scorer.eps).T)[0]
    sims = _scores(attr, positive, NONE, torch.tensor([True]), scorer)[0]
    assert torch.equal(raw.argsort(descending=True), sims.argsort(descending=True))
    # the log-likelihood itself, written out: the nodule with its density and size, the effusion in the right
    # lung, every other slot absent
    p = presence.clamp(scorer.eps, 1 - scorer.eps)
    nod = (p[:, NODULE, RUL] * density[:, NODULE, RUL, SOLID]).clamp_min(scorer.eps).log() + \
        (p[:, NODULE, RUL] * size[:, NODULE, RUL, 2]).clamp_min(scorer.eps).log() - p[:, NODULE, RUL].log()
    eff = (1 - torch.prod(1 - p[:, EFFUSION, :3], dim=1)).clamp(scorer.eps, 1 - scorer.eps).log()
    named = torch.zeros(T, L, dtype=torch.bool)
    named[NODULE, RUL] = True
    named[EFFUSION, :3] = True
    rest = ((1 - p).log() * (~named).float()).sum(dim=(1, 2))
    assert torch.allclose(raw, nod + eff + scorer.beta * rest, atol=1e-4)


def test_a_faint_finding_counts_by_its_odds_not_its_difference():
    # the projection scorer barely separates 0.05 from 0.2; the log-likelihood ranks them as 4 : 1
    presence, density, size = _studies(b=3)
    presence[:, NODULE, RLL] = torch.tensor([0.05, 0.2, 0.01])
    sims = _scores(attribute_vector(presence, density, size), _clauses([(0, NODULE, [RLL], None, None)]), NONE,
                   torch.tensor([False]))[0]
    assert sims.argsort(descending=True).tolist() == [1, 0, 2]


def test_only_a_complete_text_counts_what_it_does_not_name_as_absent():
    presence, density, size = _studies(b=2)
    presence[:, NODULE, RUL] = 0.9
    presence[:, EFFUSION] = 0.01
    presence[1, EFFUSION] = 0.95  # the second study also shows an effusion
    attr = attribute_vector(presence, density, size)
    query = _clauses([(0, NODULE, [RUL], None, None), (1, NODULE, [RUL], None, None)])
    sims = _scores(attr, query, NONE, torch.tensor([True, False]))
    assert sims[0, 0] > sims[0, 1]  # the report of a nodule alone prefers the study without the effusion
    assert sims[1, 0].item() == pytest.approx(sims[1, 1].item(), abs=1e-6)  # the short query does not care


def test_a_negated_finding_counts_against_the_studies_that_show_it():
    presence, density, size = _studies(b=2)
    presence[:, NODULE, RUL] = 0.9
    presence[1, EFFUSION, :] = 0.9
    attr = attribute_vector(presence, density, size)
    query = _clauses([(0, NODULE, [RUL], None, None)])
    negated = _clauses([(0, EFFUSION, [], None, None)])
    with_neg = _scores(attr, query, negated, torch.tensor([False]))[0]
    assert with_neg[0] > with_neg[1]
    without = _scores(attr, query, NONE, torch.tensor([False]))[0]
    assert without[0].item() == pytest.approx(without[1].item(), abs=1e-6)


def test_a_text_without_findings_is_a_zero_vector_and_the_normal_report_prefers_clean_studies():
    presence, density, size = _studies(b=2)
    presence[1, EFFUSION] = 0.9
    attr = attribute_vector(presence, density, size)
    sims = _scores(attr, NONE, NONE, torch.tensor([False, True]))
    assert torch.count_nonzero(sims[0]) == 0
    assert sims[1, 0] > sims[1, 1]


@pytest.mark.parametrize("lobes, group", [
    ([1, 0, 0, 0, 0], (0,)), ([0, 0, 0, 0, 1], (4,)), ([1, 1, 1, 0, 0], (0, 1, 2)), ([0, 0, 0, 1, 1], (3, 4)),
    ([0, 0, 0, 0, 0], (0, 1, 2, 3, 4)), ([1, 0, 0, 1, 0], (0, 1, 2, 3, 4)), ([1, 0, 1, 0, 0], (0, 1, 2)),
])
def test_a_clause_names_the_smallest_group_that_holds_its_lobes(lobes, group):
    assert GROUPS[group_of(torch.tensor(lobes, dtype=torch.float32))] == group


def test_slots_come_back_from_the_attribute_vector():
    presence, density, size = _studies()
    presence[0, NODULE] = 0.0  # no presence: even distributions
    p, d, z = slots_from_attributes(attribute_vector(presence, density, size))
    assert torch.allclose(p, presence)
    has = (presence > 0)[..., None] & torch.tensor([n in ("nodule", "mass") for n in vocab.FINDING_TYPES])[
        None, :, None, None]
    assert torch.allclose(d[has.expand_as(d)], density[has.expand_as(density)], atol=1e-5)
    assert torch.allclose(d[0, NODULE], torch.full((L, D), 1 / D))


def test_a_joint_that_need_not_sum_to_one_comes_back_as_it_was_stored():
    # the nodule detector stores presence x (per-bin noisy-OR / presence): the joint P(type, bin)
    presence, density, size = _studies()
    presence[:, NODULE] = 0.5
    size[:, NODULE] = torch.tensor([0.8, 0.0, 0.0, 0.0, 0.6])[:Z]        # sums to more than one
    _, _, z = slots_from_attributes(attribute_vector(presence, density, size))
    assert torch.allclose(z[:, NODULE], size[:, NODULE], atol=1e-5)


def test_features_stay_finite_at_certain_slots():
    presence, density, size = _studies()
    presence[:, :, :] = 1.0
    density[:] = 0.0
    feats = image_features(presence, density, size)
    assert torch.isfinite(feats).all() and (feats <= 0).all()
    assert feats.min().item() >= math.log(1e-3) - 1e-4


def test_the_config_round_trips_and_refuses_unknown_keys():
    sc = LikelihoodScorer(beta=0.5, gamma=2.0)
    assert LikelihoodScorer.from_config(json.loads(json.dumps(sc.to_config()))) == sc
    with pytest.raises(ValueError):
        LikelihoodScorer.from_config({"kind": "likelihood", "betta": 1.0})
    with pytest.raises(ValueError):
        LikelihoodScorer.from_config({"kind": "projection"})


def test_the_scorer_is_part_of_the_model_version(tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(registry.DEFAULT_MODEL_DIR, folder)
    shipped = registry.Encoder(folder)
    assert shipped.model.scorer is not None and "-s" in shipped.model_version
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if k != "scorer"}))
    plain = registry.Encoder(folder)
    assert plain.model.scorer is None and plain.model_version == shipped.model_version.rsplit("-s", 1)[0]
    # the same text, two scorers: different vectors, both unit
    a, b = shipped.encode_texts(["right lower lobe nodule"]), plain.encode_texts(["right lower lobe nodule"])
    assert abs(float((a * b).sum())) < 0.99
    (folder / "config.json").write_text(json.dumps({**cfg, "scorer": {"kind": "likelihood", "betta": 1}}))
    with pytest.raises(ConfigError, match="scorer"):
        registry.Encoder(folder)

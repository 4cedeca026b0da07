"""Evaluation: metrics and chance levels, the JSON schema, and seed disjointness."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medsearch.errors import InputError
from medsearch.models import evaluate, phrases, registry
from medsearch.models.metrics import ranking_chance, ranking_metrics, recall_at_k, recall_chance
from medsearch.models.train import CONFIG_FILE


def test_recall_and_its_chance_level():
    sim = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.1, 0.8], [0.3, 0.2, 0.1]])
    same = torch.eye(3, dtype=torch.bool)
    assert recall_at_k(sim, same, 1) == pytest.approx(1 / 3)
    assert recall_at_k(sim, same, 3) == 1.0
    assert recall_chance(same, 1) == pytest.approx(1 / 3)
    assert recall_chance(torch.ones(3, 3, dtype=torch.bool), 1) == 1.0


def test_ranking_metrics_perfect_and_random():
    rel = torch.tensor([[2, 0, 1, 0, 2]])
    perfect = ranking_metrics(rel.float(), rel, k=10)
    assert perfect["mAP"] == 1.0 and perfect["nDCG@10"] == pytest.approx(1.0)
    assert perfect["P@10"] == pytest.approx(2 / 5)
    worst = ranking_metrics(-rel.float(), rel, k=10)
    assert worst["nDCG@10"] < perfect["nDCG@10"] and worst["mAP"] < 1.0
    chance = ranking_chance(rel)
    assert worst["nDCG@10"] <= chance["nDCG@10"] <= perfect["nDCG@10"]


def test_eval_seeds_never_overlap_training_seeds():
    assert not set(evaluate.EVAL_SEEDS) & set(evaluate.TRAIN_SEEDS)
    evaluate.check_seed_disjoint([1001, 1002])
    with pytest.raises(InputError, match="reserved for evaluation"):
        evaluate.check_seed_disjoint([1001, 9001])


def test_shipped_model_never_saw_an_evaluation_seed():
    """The model records a hash of each training study; studies of the benchmark's evaluation
    seed are not among them."""
    from medsearch.models.data import _study_key
    from medsearch.synth import generate_study

    config = json.loads((registry.DEFAULT_MODEL_DIR / CONFIG_FILE).read_text())
    trained = set(config["train_study_keys"])
    eval_key = _study_key(generate_study(evaluate.BENCH_EVAL_SEED, 0).labels["study_uid"])
    assert eval_key not in trained and eval_key not in set(config.get("fit_study_keys", []))
    assert len(trained) == config["train_studies"] + config["val_studies"]
    # every key is a study of a training seed: the first studies of seed 1101 are among them
    assert _study_key(generate_study(config["train_seeds"][0], 0).labels["study_uid"]) in trained
    evaluate.check_seed_disjoint(config["train_seeds"])


def test_phrase_specs_cover_the_four_granularities(phantom_studies):
    specs = evaluate.phrase_specs(phantom_studies)
    kinds = {tuple(sorted(s)) for s in specs}
    assert ("type",) in kinds and ("site", "type") in kinds
    assert ("density", "site", "type") in kinds and ("size_bin", "type") in kinds


def test_evaluate_embeddings_schema_and_chance(phantom_studies):
    class Oracle:
        """Text encoder stub: unused rows, only the schema is checked here."""

        def encode_texts(self, texts):
            rng = np.random.default_rng(len(texts))
            v = rng.normal(size=(len(texts), 8)).astype(np.float32)
            return v / np.linalg.norm(v, axis=1, keepdims=True)

    image = np.random.default_rng(0).normal(size=(len(phantom_studies), 8)).astype(np.float32)
    result = evaluate.evaluate_embeddings(Oracle(), phantom_studies, image)
    assert result["pool"] == len(phantom_studies)
    for lang in ("en", "zh"):
        assert set(result["report_to_volume"][lang]) == {"R@1", "R@5", "R@10", "R@50"}
        assert set(result["phrase_to_volume"][lang]) == {"P@10", "mAP", "nDCG@10"}
    assert set(result["chance"]["report_to_volume"]) == {"R@1", "R@5", "R@10", "R@50"}
    assert result["chance"]["report_to_volume"]["R@50"] == 1.0  # the pool is smaller than 50
    assert "chance" in evaluate.format_table(result)


def test_identical_finding_sets_are_one_answer():
    a = [{"type": "nodule", "site": "right lower lobe", "laterality": "right", "density": "solid",
          "diameter_mm": 8.0}]
    b = [{**a[0], "diameter_mm": 9.0}]  # same size bin
    c = [{**a[0], "diameter_mm": 25.0}]
    assert phrases.study_key(a) == phrases.study_key(b) != phrases.study_key(c)


def test_eval_refuses_an_archive_without_labels(tmp_path):
    with pytest.raises(InputError, match="labels.jsonl"):
        evaluate.evaluate_archive(tmp_path)

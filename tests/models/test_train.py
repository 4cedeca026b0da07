"""Training: determinism for a seed, checkpoint resume, data pairs and hard negatives."""

from __future__ import annotations

import random

import pytest
import torch

from medsearch.errors import InputError
from medsearch.models import phrases
from medsearch.models.data import make_batch, perturb, scrub_report
from medsearch.models.train import CHECKPOINT_FILE, MODEL_FILE, TrainConfig, train

# The reranker trained after the towers (reranker_epochs) has its own tests (test_reranker.py).
TINY = dict(steps=2, batch_size=4, warmup=1, eval_every=2, checkpoint_every=1, reranker_epochs=0)


def _weights(folder):
    return torch.load(folder / MODEL_FILE, weights_only=True)


def _same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_same_seed_same_model_other_seed_other_model(phantom_studies, tmp_path):
    train(phantom_studies, tmp_path / "a", TrainConfig(seed=3, **TINY), progress=False)
    train(phantom_studies, tmp_path / "b", TrainConfig(seed=3, **TINY), progress=False)
    train(phantom_studies, tmp_path / "c", TrainConfig(seed=4, **TINY), progress=False)
    a, b, c = (_weights(tmp_path / x) for x in "abc")
    assert _same(a, b)
    assert not _same(a, c)


def test_resume_from_checkpoint_equals_an_uninterrupted_run(phantom_studies, tmp_path):
    cfg = TrainConfig(seed=5, **TINY)
    train(phantom_studies, tmp_path / "full", cfg, progress=False)
    partial = train(phantom_studies, tmp_path / "resumed", cfg, stop_after=1, progress=False)
    assert partial["steps"] == 1 and (tmp_path / "resumed" / CHECKPOINT_FILE).exists()
    assert not (tmp_path / "resumed" / MODEL_FILE).exists()
    train(phantom_studies, tmp_path / "resumed", cfg, progress=False)
    assert _same(_weights(tmp_path / "full"), _weights(tmp_path / "resumed"))


def test_training_needs_studies(tmp_path, phantom_studies):
    with pytest.raises(InputError, match="at least 2 studies"):
        train(phantom_studies[:1], tmp_path, TrainConfig(**TINY), progress=False)


def test_batch_positives_follow_the_labels(phantom_studies):
    batch = make_batch(phantom_studies[:6], random.Random(0), hard_negatives=1)
    b = 6
    assert batch["image"].shape == (b, 2, 32, 48, 48)
    assert batch["positives"].shape == (b, len(batch["texts"]))
    assert batch["positives"][torch.arange(b), torch.arange(b)].all()
    assert len(batch["texts"]) >= b


@pytest.mark.parametrize("spec, changed", [
    ({"type": "nodule", "site": "right lower lobe"}, "site"),
    ({"type": "nodule", "density": "solid"}, "density"),
    ({"type": "nodule", "size_bin": 4}, "size_bin"),
])
def test_hard_negatives_differ_in_exactly_one_attribute(spec, changed):
    for seed in range(10):
        neg = perturb(spec, random.Random(seed))
        diff = [k for k in spec if spec[k] != neg[k]]
        assert diff == [changed]
        finding = {"type": "nodule", "site": "right lower lobe", "density": "solid", "diameter_mm": 45.0}
        assert phrases.finding_matches(finding, spec) and not phrases.finding_matches(finding, neg)


def test_perturb_without_attributes_gives_none():
    assert perturb({"type": "emphysema"}, random.Random(0)) is None


@pytest.mark.parametrize("text, leaked", [
    ("Patient: ZHANG^WEI\nRLL nodule 8 mm.", "ZHANG"),
    ("Exam on 2024-03-05 showed a nodule.", "2024-03-05"),
    ("Accession: A12345678\nSee A12345678. Nodule.", "12345678"),
    ("报告医师：李明\n右肺下叶结节。", "李明"),
])
def test_scrub_report_removes_identifiers_and_keeps_findings(text, leaked):
    out = scrub_report(text)
    assert leaked not in out
    assert "nodule" in out.lower() or "结节" in out


def test_a_larger_step_count_extends_a_finished_run(phantom_studies, tmp_path, caplog):
    import logging

    train(phantom_studies, tmp_path, TrainConfig(seed=6, **{**TINY, "steps": 1}), progress=False)
    with caplog.at_level(logging.INFO, logger="medsearch.models.train"):
        summary = train(phantom_studies, tmp_path, TrainConfig(seed=6, **TINY), progress=False)
    assert "resuming from step 1" in caplog.text
    assert summary["steps"] == 2


def test_load_archive_resamples_onto_the_grid_asked_for_and_caches_each_grid_apart(tmp_path):
    import numpy as np

    from medsearch.models.data import load_archive
    from medsearch.models.slot_model import SEG_GRIDS
    from medsearch.synth import generate_archive

    pool = tmp_path / "pool"
    generate_archive(pool, 1, seed=9003, workers=1, progress=False)
    cache = tmp_path / "cache"
    shapes = {}
    for name, grid in SEG_GRIDS.items():
        (study,) = load_archive(pool, cache_dir=cache, progress=False, spacing_mm=grid.spacing_mm, shape=grid.shape)
        shapes[name] = study.hu.shape
        cached = cache / "x".join(map(str, grid.shape)) / f"{study.key}.npy"
        assert cached.exists() and np.load(cached).shape == grid.shape
    assert shapes == {name: grid.shape for name, grid in SEG_GRIDS.items()}
    # a second read comes from the cache of its own grid
    (again,) = load_archive(pool, cache_dir=cache, progress=False, spacing_mm=SEG_GRIDS["fine"].spacing_mm,
                            shape=SEG_GRIDS["fine"].shape)
    assert again.hu.shape == SEG_GRIDS["fine"].shape

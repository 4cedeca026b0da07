"""Fitting the learned merge: its inputs are what the encoder merges, and `medsearch fit-region-merge` end to
end on a tiny synthetic archive, with its refusals."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from medsearch import vocab
from medsearch.cli import cli
from medsearch.models.region_classifier import REGION_FILE, REGION_TYPES


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """Six studies of a training seed; the sixth holds a mass (right upper lobe), none a consolidation."""
    from medsearch.synth import generate_archive

    out = tmp_path_factory.mktemp("merge") / "archive"
    generate_archive(out, 6, seed=1202, workers=1, progress=False)
    return out


@pytest.fixture
def model(tmp_path):
    from medsearch.models.registry import DEFAULT_MODEL_DIR

    folder = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, folder)
    return folder


def test_the_inputs_are_the_presences_the_encoder_merges(archive):
    from medsearch.models import registry
    from medsearch.models.data import load_archive
    from medsearch.models.preprocess import hu_windows
    from medsearch.models.train_merge import fixed_rule, merge_inputs

    enc = registry.Encoder(registry.DEFAULT_MODEL_DIR)
    merge = enc.model.region_merge
    # the shipped model merges consolidation and atelectasis, and keeps the fixed rule for masses
    assert merge.types == ("atelectasis", "consolidation")
    studies = load_archive(archive, detector=enc.nodule_detector, spacing_mm=enc.config["canonical_spacing_mm"],
                           shape=enc.config["canonical_shape"], progress=False)
    unet, mine, labels = merge_inputs(enc, studies, progress=False)
    assert unet.shape == mine.shape == labels.shape == (6, len(REGION_TYPES), len(vocab.LOBES))
    assert labels.sum() == 1 and labels[5, REGION_TYPES.index("mass"), vocab.LOBES.index("right upper lobe")] == 1
    x = torch.stack([hu_windows(torch.from_numpy(s.hu.astype(np.float32)), enc.config["windows_hu"]) for s in studies])
    with torch.no_grad():
        presence = enc.encode_image_tensor(x, [s.nodules for s in studies])["presence"]
    merged = {t: merge.presence(t, torch.from_numpy(unet), torch.from_numpy(mine)).numpy() for t in merge.types}
    for t in REGION_TYPES:
        # a fixed rule applies where the classifier's evidence holds the type; the merge everywhere
        held = [b for b, s in enumerate(studies) if t in merged or t in (s.nodules.others or {})]
        assert held
        expected = merged[t] if t in merged else fixed_rule(t, unet, mine)
        assert np.allclose(presence[held, vocab.FINDING_TYPES.index(t)].numpy(), expected[held], atol=1e-5)


def test_fit_region_merge_writes_the_merge_and_the_encoder_uses_it(archive, model):
    from medsearch.models import registry
    from medsearch.models.data import _study_key
    from medsearch.models.region_classifier import RegionClassifier

    before = registry.Encoder(model).model_version
    result = CliRunner().invoke(cli, ["fit-region-merge", str(model), "--archive", str(archive), "--types", "mass",
                                      "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "fitted the learned merge on 6 studies" in result.output and "mass lobe AP" in result.output
    merge = RegionClassifier.load(model).merge
    assert merge.types == ("mass",) and merge.summary["lobes_with"] == {"mass": 1}
    config = json.loads((model / "config.json").read_text())
    assert config["region_classifier"]["merge"]["fit"]["mass"]["lobes_with"] == 1
    assert config["region_classifier"]["steps"] > 0                       # the classifier's record is kept
    keys = {_study_key(json.loads(line)["study_uid"]) for line in (archive / "labels.jsonl").read_text().splitlines()}
    assert keys <= set(config["fit_study_keys"])                          # eval refuses these studies now
    assert not keys & set(config["train_study_keys"])                     # the tower's own record is kept
    from medsearch.errors import InputError
    from medsearch.models.evaluate import evaluate_archive

    with pytest.raises(InputError, match="6 studies of the evaluation archive were used in training"):
        evaluate_archive(archive, model, via_ingest=False, progress=False)
    enc = registry.Encoder(model)
    assert enc.model.region_merge.types == ("mass",) and enc.model_version != before
    # nothing was cached beside the archive
    assert sorted(p.name for p in archive.iterdir()) == ["dicom", "labels.jsonl", "reports.jsonl"]


@pytest.mark.parametrize("prepare, args, message", [
    (lambda m, a: None, ["--types", "nodule"], "--types"),
    (lambda m, a: None, ["--types", "mass,mass"], "--types"),
    (lambda m, a: (m / REGION_FILE).unlink(), [], "train-regions"),
    (lambda m, a: None, ["--archive-is-empty"], "labels.jsonl"),
    (lambda m, a: None, ["--types", "consolidation"], "no lobe of the archive holds a consolidation"),
])
def test_fit_region_merge_refuses_what_it_cannot_fit(archive, model, tmp_path, prepare, args, message):
    prepare(model, archive)
    where = archive
    if args == ["--archive-is-empty"]:
        where, args = tmp_path / "empty", []
        where.mkdir()
    before = {p.name: p.read_bytes() for p in model.iterdir() if p.is_file()}
    result = CliRunner().invoke(cli, ["fit-region-merge", str(model), "--archive", str(where), "--workers", "1",
                                      *args])
    assert result.exit_code != 0 and message in result.output
    assert {p.name: p.read_bytes() for p in model.iterdir() if p.is_file()} == before      # nothing written

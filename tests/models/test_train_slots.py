"""Training of the ctseg model: determinism, resume, the three stages end to end (tiny sizes)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medsearch import vocab
from medsearch.models import registry
from medsearch.models.train_focal import FocalConfig
from medsearch.models.train_seg import CHECKPOINT, DenseSet, SegConfig, train_image
from medsearch.models.train_slots import SlotTrainConfig, dense_from_studies, train_ctseg

TINY = dict(steps=2, batch_size=2, warmup=1, eval_every=2, checkpoint_every=1)


@pytest.fixture(scope="module")
def tiny_set(phantom_studies) -> DenseSet:
    data = dense_from_studies(phantom_studies[:6])
    # voxel targets for half of them: a "nodule" bit where the phantom is bright inside the lungs
    data.dense[:3] = True
    data.types[:3] = (np.stack([s.hu[1::2, 1::2, 1::2] for s in phantom_studies[:3]]) > -200).astype(np.int16)
    return data


def _image_weights(model):
    return {k: v.clone() for k, v in model.image.state_dict().items()}


def _same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_image_stage_is_deterministic_and_resumes(tiny_set, tmp_path):
    from medsearch.models.slot_model import SlotModel

    runs = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        torch.manual_seed(0)
        model = SlotModel()
        train_image(model, tiny_set, tiny_set.subset([0, 1]), tmp_path / name, SegConfig(seed=seed, **TINY),
                    progress=False)
        runs[name] = _image_weights(model)
    assert _same(runs["a"], runs["b"]) and not _same(runs["a"], runs["c"])
    torch.manual_seed(0)
    model = SlotModel()
    train_image(model, tiny_set, None, tmp_path / "r", SegConfig(seed=1, **TINY), progress=False, stop_after=1)
    assert (tmp_path / "r" / CHECKPOINT).exists()
    torch.manual_seed(0)
    model = SlotModel()
    summary = train_image(model, tiny_set, None, tmp_path / "r", SegConfig(seed=1, **TINY), progress=False)
    assert summary["steps"] == 2 and _same(_image_weights(model), runs["a"])


def test_train_ctseg_end_to_end_writes_a_model_the_registry_serves(tmp_path):
    from medsearch.dicom.volume import HUVolume
    from medsearch.synth import generate_study

    cfg = SlotTrainConfig(seg=SegConfig(steps=2, batch_size=2, warmup=1, eval_every=2), clause_examples=300,
                          clause_steps=30, proj_steps=3, proj_batch=4, reranker_epochs=1,
                          focal=FocalConfig(steps=2, batch_size=2, width=8))
    summary = train_ctseg(tmp_path / "m", [1003], 6, cfg=cfg, progress=False, workers=1, detail_width=8,
                          grid="fine")
    assert summary["image"]["steps"] == 2 and 0 <= summary["clause"]["type"] <= 1
    assert set(summary["projection"]) >= {"identity", "tuned", "kept"}
    assert set(summary["reranker"]["keep"]) == {"phrase", "report"} and (tmp_path / "m" / "reranker.pt").exists()
    enc = registry.Encoder(tmp_path / "m")
    assert enc.config["arch"] == "ctseg" and len(enc.config["train_study_keys"]) == 6
    # stage 3 kept the projection or a likelihood scorer of the grid, whichever validated better, and the model
    # serves what it kept
    kept = summary["scorer"]["kept"]
    assert len(summary["scorer"]["likelihood"]) == 3
    assert enc.config.get("scorer", "projection") == kept
    assert (enc.model.scorer is None) == (kept == "projection")
    assert enc.config["detail_width"] == 8 and enc.model.image.detail is not None
    # stage 1c ran; its head is in the model exactly when validation kept it
    assert summary["focal"]["steps"] == 2
    assert enc.config["focal_width"] == (8 if summary["focal"]["kept"] else 0)
    assert (enc.model.image.focal is not None) == summary["focal"]["kept"]
    # the model carries its grid: inference resamples onto it and pools the stored map as trained
    assert enc.config["grid"] == "fine" and tuple(enc.config["canonical_shape"]) == (56, 112, 112)
    assert enc.model.spatial_pool == (2, 6, 6)
    study = generate_study(1003, 0)
    out = enc.encode_volume(HUVolume(study.hu, study.spacing, study.affine, "CT"))
    assert out.embedding.shape == (enc.dim,)
    assert out.spatial.shape[1:] == (10, 10, 14)  # (X, Y, Z): half of (112, 112, 56), pooled 6, 6, 2
    assert enc.encode_texts(["right upper lobe 8 mm nodule, left pleural effusion", "no abnormality"]).shape == \
        (2, enc.dim)
    # a nodule detector in the --init model goes along to the new one
    from medsearch.models.nodule_detector import NODULE_FILE, NoduleDetector
    from medsearch.models.nodule_net import NoduleNet

    NoduleDetector(NoduleNet(width=4), 1.0, -2.0, {"steps": 3}).save(tmp_path / "m" / NODULE_FILE)
    # and its region classifier too
    from medsearch.models.region_classifier import REGION_FILE, RegionClassifier, RegionNet

    RegionClassifier(RegionNet(hidden=8), {"mass": (0.5, -1.0)}).save(tmp_path / "m" / REGION_FILE)
    config_m = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**config_m, "nodule_detector": {"steps": 3},
                                                            "region_classifier": {"steps": 5}}))
    # --steps 0 --init: the tower's weights stay; calibration (with its floors) and the later stages refit
    again = train_ctseg(tmp_path / "r", [1003], 6, cfg=SlotTrainConfig(**{**cfg.__dict__, "seg": SegConfig(
        steps=0, batch_size=2), "focal": FocalConfig(steps=0)}), progress=False, workers=1, detail_width=8, grid="fine", init=tmp_path / "m")
    assert again["image"]["steps"] == 0 and again["image"]["loss"] is None
    assert (tmp_path / "r" / NODULE_FILE).read_bytes() == (tmp_path / "m" / NODULE_FILE).read_bytes()
    assert registry.Encoder(tmp_path / "r").nodule_detector.offset == -2.0
    # stages 3 and 4 saw the detector's evidence on the training studies, cached per detector and study
    from medsearch.models.data import detector_digest

    evidence = tmp_path / "r" / "cache" / f"nodules-{detector_digest(NoduleDetector.load(tmp_path / 'm'))}"
    assert len(list(evidence.glob("dense-1003-*.npz"))) == 6
    config = registry.Encoder(tmp_path / "r").config
    assert config["nodule_detector"] == {"steps": 3, "carried_from": "m"}
    assert config["region_classifier"] == {"steps": 5, "carried_from": "m"}
    assert (tmp_path / "r" / REGION_FILE).read_bytes() == (tmp_path / "m" / REGION_FILE).read_bytes()
    assert registry.Encoder(tmp_path / "r").nodule_detector.regions.calibration["mass"] == (0.5, -1.0)
    assert [r["image"]["steps"] for r in config["lineage"]] == [2] and config["lineage"][0]["grid"] == "fine"
    assert set(config["train_study_keys"]) == set(enc.config["train_study_keys"])
    assert set(again["calibration"]["floor"]) == set(vocab.FINDING_TYPES)
    kept = registry.Encoder(tmp_path / "r").model.image.state_dict()
    assert all(torch.equal(kept[k], v) for k, v in enc.model.image.state_dict().items()
               if not k.startswith("presence_"))


@pytest.mark.parametrize("augment", [True, False])
def test_batches_assembled_on_the_device_are_those_of_make_batch(tiny_set, augment):
    import random

    from medsearch.models.train_seg import DeviceBatches, make_batch

    idx = [4, 0, 4, 2]
    ref, rng = random.Random(7), random.Random(7)
    want = make_batch(tiny_set, idx, ref, augment=augment)
    got = DeviceBatches(tiny_set, torch.device("cpu")).batch(idx, rng, augment=augment)
    assert rng.getstate() == ref.getstate()  # the same draws, so training goes on with the same sequence
    assert got.keys() == want.keys()
    for key in want:
        assert got[key].dtype == want[key].dtype and got[key].shape == want[key].shape, key
        if key == "x":
            assert torch.allclose(got[key], want[key], atol=1e-6)
        else:
            assert torch.equal(got[key], want[key]), key


def test_image_only_training_writes_a_tower_that_must_be_refitted_before_use(tmp_path):
    from medsearch.errors import ConfigError
    from medsearch.models.nodule_detector import NODULE_FILE, NoduleDetector
    from medsearch.models.nodule_net import NoduleNet

    cfg = SlotTrainConfig(seg=SegConfig(steps=2, batch_size=2, warmup=1, eval_every=2), clause_examples=300,
                          clause_steps=30, proj_steps=3, proj_batch=4, reranker_epochs=0)
    first = train_ctseg(tmp_path / "m", [1003], 6, cfg=cfg, progress=False, workers=1)
    NoduleDetector(NoduleNet(width=4), 1.0, -2.0, {"steps": 3}).save(tmp_path / "m" / NODULE_FILE)
    tower = train_ctseg(tmp_path / "g", [1003], 6, cfg=SlotTrainConfig(**{**cfg.__dict__, "image_only": True}),
                        progress=False, workers=1, init=tmp_path / "m")
    assert tower["image"]["steps"] == 2 and "clause" not in tower and "projection" not in tower
    # the detector's evidence serves the later stages only, so a tower-only run does not compute it
    assert not list((tmp_path / "g" / "cache").glob("nodules-*"))
    config = json.loads((tmp_path / "g" / "config.json").read_text())
    assert config["image_only"] is True and (tmp_path / "g" / NODULE_FILE).exists()
    with pytest.raises(ConfigError, match="image tower only.*--init .*--steps 0"):
        registry.Encoder(tmp_path / "g")
    refit = train_ctseg(tmp_path / "r", [1003], 6, cfg=SlotTrainConfig(**{**cfg.__dict__, "seg": SegConfig(
        steps=0, batch_size=2)}), progress=False, workers=1, init=tmp_path / "g")
    assert refit["image"]["steps"] == 0 and "projection" in refit
    enc = registry.Encoder(tmp_path / "r")
    assert "image_only" not in enc.config and [r["image"]["steps"] for r in enc.config["lineage"]] == [2, 2]
    trained = registry.Encoder(tmp_path / "m").model.image.state_dict()
    kept = enc.model.image.state_dict()
    assert not all(torch.equal(trained[k], kept[k]) for k in trained)  # the tower-only run trained it
    assert first["image"]["steps"] == 2


def test_image_attributes_take_the_nodule_slots_from_the_evidence_the_set_carries(tiny_set):
    from dataclasses import replace

    from medsearch.models.nodule_detector import NoduleEvidence
    from medsearch.models.slot_model import SlotModel
    from medsearch.models.train_slots import concat, image_attributes

    torch.manual_seed(0)
    model = SlotModel()
    t = vocab.FINDING_TYPES.index("nodule")
    centre = np.array([[s // 4 for s in tiny_set.hu.shape[1:]]], float)
    sure = NoduleEvidence(centre, np.array([0.99], np.float32), np.log(np.array([8.0], np.float32)),
                          np.eye(len(vocab.DENSITIES), dtype=np.float32)[:1])
    two = tiny_set.subset([0, 1])
    bare = image_attributes(model, two, "cpu")
    with_ev = image_attributes(model, replace(two, nodules=[sure, NoduleEvidence.empty()]), "cpu")
    # no detection: no nodule; a sure one: its lobes' noisy-OR (an untrained tower spreads the lobes thinly)
    assert float(with_ev[1, t]) == 0.0 and float(with_ev[0, t]) > 0.1
    assert float(with_ev[0, t]) != pytest.approx(float(bare[0, t]))
    assert torch.equal(with_ev[:, :t], bare[:, :t])  # the other types are the U-Net's
    # a set without evidence joined to one with it: its studies keep the U-Net's slots
    both = concat([replace(two, nodules=[sure, sure]), tiny_set.subset([2])])
    assert both.nodules[2] is None
    alone = image_attributes(model, tiny_set.subset([2]), "cpu")[0]
    assert torch.allclose(image_attributes(model, both, "cpu")[2], alone)


def test_warm_start_loads_matching_weights_and_keeps_new_parts_fresh(tmp_path):
    from medsearch.models.slot_model import SlotModel
    from medsearch.models.train_slots import save_slot_model, warm_start

    torch.manual_seed(0)
    old = SlotModel(detail_width=0)
    with torch.no_grad():
        old.image.presence_offset.fill_(1.25)
    save_slot_model(old, tmp_path / "old", {"note": "older model without the detail stage"})
    torch.manual_seed(1)
    new = SlotModel(detail_width=8)
    out = warm_start(new, tmp_path / "old")
    assert torch.equal(new.image.presence_offset, old.image.presence_offset)
    assert torch.equal(new.image.stem.conv.weight, old.image.stem.conv.weight)
    assert "image.head.weight" in out["fresh"] and any(k.startswith("image.detail.") for k in out["fresh"])
    assert out["loaded"] == len(new.state_dict()) - len(out["fresh"])


@pytest.mark.parametrize("content, message", [
    (None, "holds no readable model"),
    ({"arch": "ctnet", "dim": 256}, "not ctseg"),
])
def test_warm_start_refuses_what_is_not_a_ctseg_model(tmp_path, content, message):
    import json

    from medsearch.errors import ConfigError
    from medsearch.models.slot_model import SlotModel
    from medsearch.models.train_slots import save_slot_model, warm_start

    folder = tmp_path / "m"
    if content is None:
        folder.mkdir()
    else:
        save_slot_model(SlotModel(detail_width=0), folder, {})
        (folder / "config.json").write_text(json.dumps(content))
    with pytest.raises(ConfigError, match=message):
        warm_start(SlotModel(detail_width=8), folder)


def test_training_refuses_an_unknown_grid(tmp_path):
    from medsearch.errors import ConfigError

    with pytest.raises(ConfigError, match="Unknown canonical grid 'huge'.*coarse, fine"):
        train_ctseg(tmp_path, [1003], 4, progress=False, grid="huge")


def test_training_refuses_a_dense_cache_of_another_grid(tmp_path):
    import json

    from medsearch.errors import ConfigError

    cache = tmp_path / "m" / "cache"
    cache.mkdir(parents=True)
    # a shard as build_dense_cache writes it, on a grid that is neither coarse nor fine
    n, shape = 4, (8, 8, 8)
    np.savez(cache / "dense-1003-000000.npz", hu=np.full((n, *shape), -1000, np.int16),
             region=np.zeros((n, *shape), np.uint8), types=np.zeros((n, *shape), np.int16),
             density=np.full((n, *shape), 255, np.uint8), logsize=np.zeros((n, *shape), np.float16),
             meta=np.array(json.dumps([{"index": i, "findings": [], "report_en": "", "report_zh": ""}
                                       for i in range(n)])))
    with pytest.raises(ConfigError, match="grid \\(8, 8, 8\\).*Delete that cache folder"):
        train_ctseg(tmp_path / "m", [1003], n, progress=False, grid="coarse")


def test_training_refuses_evaluation_seeds(tmp_path):
    from medsearch.errors import InputError

    with pytest.raises(InputError, match="reserved for evaluation"):
        train_ctseg(tmp_path, [9001], 4, progress=False)


def test_training_needs_studies(tmp_path):
    from medsearch.errors import InputError

    with pytest.raises(InputError, match="at least 4 studies"):
        train_ctseg(tmp_path, [], 0, progress=False)


def test_presence_calibration_only_lowers_the_training_loss(tiny_set):
    from medsearch.models.slot_model import SlotModel
    from medsearch.models.train_slots import calibrate_presence

    torch.manual_seed(0)
    model = SlotModel()
    before = model.image.presence_offset.detach().clone()
    out = calibrate_presence(model, tiny_set, steps=60)
    assert out["bce_after"] <= out["bce_before"] + 1e-6
    assert not torch.equal(before, model.image.presence_offset.detach())
    assert 0.0 <= out["slot_f1"] <= 1.0 and out["studies"] == len(tiny_set)


def test_hard_negative_loss_counts_only_the_largest_lung_negatives_away_from_findings():
    from torch.nn import functional as F

    from medsearch.models.train_seg import hard_negative_loss

    logits = torch.full((1, 1, 6, 6, 6), -8.0)
    target = torch.zeros_like(logits)
    region = torch.ones(1, 6, 6, 6, dtype=torch.long)
    target[0, 0, 1, 1, 1] = 1
    logits[0, 0, 1, 1, 1] = 9.0          # the finding itself: not a negative
    logits[0, 0, 1, 1, 2] = 9.0          # next to it: ambiguous, not counted either
    region[0, 5, 5, 5] = 0
    logits[0, 0, 5, 5, 5] = 9.0          # outside the lungs: not counted
    logits[0, 0, 4, 4, 0] = 3.0          # the one hard negative (a "vessel")
    want = (F.softplus(torch.tensor(3.0)) + F.softplus(torch.tensor(-8.0))) / 2
    assert float(hard_negative_loss(logits, target, region, k=2)) == pytest.approx(float(want), rel=1e-5)
    # with it pushed down the loss falls: this is what trains the study-level decision
    logits[0, 0, 4, 4, 0] = -8.0
    assert float(hard_negative_loss(logits, target, region, k=2)) < float(want) / 10


def test_hard_negative_loss_is_zero_without_lung_voxels():
    from medsearch.models.train_seg import hard_negative_loss

    logits = torch.zeros(2, 3, 4, 4, 4, requires_grad=True)
    loss = hard_negative_loss(logits, torch.zeros(2, 3, 4, 4, 4), torch.zeros(2, 4, 4, 4, dtype=torch.long), k=4)
    loss.backward()      # a batch without lungs still trains the rest
    assert loss.item() == 0.0 and logits.grad is not None


def test_presence_calibration_chooses_each_types_floor(tiny_set, monkeypatch):
    """A type whose counts only vary at a low floor gets that floor; the others keep an informative one."""
    from medsearch.models import train_slots
    from medsearch.models.slot_model import SlotModel
    from medsearch.models.slots import T

    data = tiny_set.subset(range(len(tiny_set)))
    floors = (0.1, 0.3, 0.5)
    y = torch.zeros(data.presence.shape)
    y[:3, :, 0] = 1.0                                       # every type present in one lobe of half the studies
    data.presence = y.numpy().copy()
    x = torch.full((len(data), len(floors), *y.shape[1:]), float(np.log(0.05)))
    x[:, 0, 0] = torch.log(4 * y[:, 0] + 0.05)              # type 0: only the lowest floor's counts vary
    x[:, 2, 1:] = torch.log(4 * y[:, 1:] + 0.05)            # the others: the highest floor's counts vary
    monkeypatch.setattr(train_slots, "_log_counts", lambda model, d, fl: x)

    model = SlotModel()
    out = train_slots.calibrate_presence(model, data, steps=200, floors=floors)
    assert [float(f) for f in model.image.presence_floor] == pytest.approx([0.1] + [0.5] * (T - 1))
    assert out["floor"] == {t: (0.1 if i == 0 else 0.5) for i, t in enumerate(vocab.FINDING_TYPES)}
    assert out["bce_after"] < out["bce_before"] and out["slot_f1"] == 1.0

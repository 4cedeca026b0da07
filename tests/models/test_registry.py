"""The encoder interface: the shipped model loads and encodes; INT8; doctor; errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medsearch.dicom.volume import HUVolume
from medsearch.doctor import Check
from medsearch.errors import ConfigError, InputError
from medsearch.models import registry
from medsearch.models.dual import DualEncoder
from medsearch.models.train import CONFIG_FILE, MODEL_FILE, save_model


def _volume() -> HUVolume:
    rng = np.random.default_rng(0)
    hu = rng.normal(-800, 30, (30, 64, 64)).astype(np.float32)
    hu[10:20, 20:30, 40:50] = 40.0
    return HUVolume(hu, (5.0, 4.0, 4.0), np.diag([4.0, 4.0, 5.0, 1.0]), "CT")


def _save_untrained(arch: str, folder):
    torch.manual_seed(0)
    if arch == "ctseg":
        from medsearch.models.slot_model import SlotModel
        from medsearch.models.train_slots import save_slot_model

        save_slot_model(SlotModel(), folder, {"note": "untrained, for interface tests"})
    else:
        save_model(DualEncoder(arch).eval(), folder, {"note": "untrained, for interface tests"})
    return folder


@pytest.fixture(scope="module", params=["ctseg", "ctnet"])
def any_untrained_dir(request, tmp_path_factory):
    return _save_untrained(request.param, tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="module")
def untrained_dir(tmp_path_factory):
    return _save_untrained("ctnet", tmp_path_factory.mktemp("model"))


_SPATIAL_CHANNELS = {"ctseg": 15, "ctnet": 64, "resnet10": 64}
_DIM = {"ctseg": 512, "ctnet": 256, "resnet10": 256}


def _check_encoded(enc, vol):
    out = enc.encode_volume(vol)
    arch = enc.config["arch"]
    assert out.embedding.dtype == np.float32 and out.embedding.shape == (enc.dim,) == (_DIM[arch],)
    assert abs(float(np.linalg.norm(out.embedding)) - 1) < 1e-4
    assert out.spatial.dtype == np.float16 and out.spatial.ndim == 4
    assert out.spatial.shape[0] == _SPATIAL_CHANNELS[arch]
    assert out.canon_shape == (80, 80, 48) and out.canon_affine.shape == (4, 4)
    for f in out.findings:
        assert {"type", "finding_type", "site", "laterality", "density", "size_mm", "probability", "key_slice",
                "bbox"} <= set(f)
        if arch == "ctseg":
            assert 0 <= f["key_slice"] < vol.hu.shape[0] and len(f["bbox"]) == 4
    assert out.model_version
    return out


@pytest.mark.parametrize("int8", [False, True])
def test_encoder_interface(any_untrained_dir, int8):
    enc = registry.Encoder(any_untrained_dir, int8=int8)
    out = _check_encoded(enc, _volume())
    vec = enc.encode_text("right lower lobe 8 mm solid nodule")
    assert vec.dtype == np.float32 and vec.shape == (enc.dim,)
    assert abs(float(np.linalg.norm(vec)) - 1) < 1e-4
    assert out.model_version.endswith("-int8") == int8


def test_int8_stays_close_to_fp32(untrained_dir):
    fp32, int8 = registry.Encoder(untrained_dir), registry.Encoder(untrained_dir, int8=True)
    a, b = fp32.encode_text("left pleural effusion"), int8.encode_text("left pleural effusion")
    # Quantization noise only (an untrained projection amplifies it); retrieval loss is measured by
    # bench/bench_model.py, which decides whether INT8 is the default.
    assert float(a @ b) > 0.85
    assert type(int8.model.text_proj.net[0]).__name__ == "Linear" and "quantized" in type(
        int8.model.text_proj.net[0]).__module__


def test_shipped_model_loads_encodes_and_fits_the_budget():
    files = [registry.DEFAULT_MODEL_DIR / MODEL_FILE, registry.DEFAULT_MODEL_DIR / CONFIG_FILE]
    assert all(f.exists() for f in files)
    assert sum(f.stat().st_size for f in files) <= 15 * 1024 * 1024
    config = json.loads(files[1].read_text())
    assert config["arch"] == "ctseg"
    # trained for real: this run or the runs it was warm-started from (a recalibration keeps the tower)
    runs = [{"train": config["train"], "image": config["summary"]["image"]}] + config.get("lineage", [])
    assert all(r["image"]["steps"] == r["train"]["seg"]["steps"] for r in runs)
    assert sum(r["image"]["steps"] for r in runs) > 0
    enc = registry.load_encoder(registry.DEFAULT_MODEL_DIR, int8=False)
    _check_encoded(enc, _volume())


def test_get_encoder_follows_settings_and_doctor_reports(sqlite_instance, untrained_dir, monkeypatch):
    monkeypatch.setattr(sqlite_instance.settings, "model_dir", str(untrained_dir), raising=False)
    assert registry.model_dir_for(sqlite_instance) == untrained_dir
    check = registry.doctor_check(sqlite_instance, Check)
    assert check.status == "ok" and "dim 256" in check.detail


def test_missing_model_is_a_config_error_with_a_fix(tmp_path):
    with pytest.raises(ConfigError, match="medsearch train"):
        registry.Encoder(tmp_path)


@pytest.mark.parametrize("text", ["", "   "])
def test_empty_text_is_refused(untrained_dir, text):
    with pytest.raises(InputError, match="empty"):
        registry.Encoder(untrained_dir).encode_text(text)


def test_flat_volume_is_refused(untrained_dir):
    vol = HUVolume(np.zeros((1, 8, 8), np.float32), (1.0, 1.0, 1.0), np.eye(4), "CT")
    with pytest.raises(InputError, match="at least 2 slices"):
        registry.Encoder(untrained_dir).encode_volume(vol)


def test_evaluation_encodes_with_the_models_own_input_windows(any_untrained_dir, phantom_studies):
    from medsearch.models.evaluate import encode_studies

    enc = registry.Encoder(any_untrained_dir)
    emb = encode_studies(enc, phantom_studies[:2])
    assert emb.shape == (2, enc.dim) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-4)


def test_a_model_saved_before_per_type_floors_loads_with_the_common_floor(tmp_path):
    from medsearch.models.slots import VOXEL_FLOOR

    folder = _save_untrained("ctseg", tmp_path / "old")
    state = torch.load(folder / MODEL_FILE, weights_only=True)
    del state["image.presence_floor"]
    torch.save(state, folder / MODEL_FILE)
    enc = registry.Encoder(folder)
    assert [float(f) for f in enc.model.image.presence_floor] == pytest.approx([VOXEL_FLOOR] * 9)
    _check_encoded(enc, _volume())

import json

import pytest
from click.testing import CliRunner

from medsearch.cli import cli

ALL = ["init", "doctor", "synth", "deid", "ingest", "terms", "train", "eval", "search", "serve", "scp",
       "worker", "audit", "users", "tokens", "keys", "pull", "index", "erase"]


def run(args, home=None, input=None):
    runner = CliRunner()
    full = (["--home", str(home)] if home else []) + args
    return runner.invoke(cli, full, input=input, catch_exceptions=False)


def test_help_lists_every_command():
    out = run(["--help"]).output
    for name in ALL:
        assert f"  {name} " in out or f"  {name}\n" in out, name


@pytest.mark.parametrize("name", ALL)
def test_every_command_has_help(name):
    result = run([name, "--help"])
    assert result.exit_code == 0 and "Usage:" in result.output


def test_init_and_doctor_json(home, db_url):
    assert run(["init", "--database-url", db_url], home).exit_code == 0
    assert oct((home / "keys" / "master.key").stat().st_mode & 0o777) == "0o600"
    result = run(["doctor", "--json"], home)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["ok"] is True
    assert {"studies", "series", "vectors"} <= set(report)
    assert report["studies"] == 0


def test_init_is_idempotent(home):
    run(["init"], home)
    key = (home / "keys" / "master.key").read_bytes()
    assert run(["init"], home).exit_code == 0
    assert (home / "keys" / "master.key").read_bytes() == key


def test_commands_without_instance_say_how_to_create_one(home):
    result = CliRunner().invoke(cli, ["--home", str(home), "doctor"])
    assert result.exit_code == 3
    assert "medsearch init" in result.output


def test_bad_config_stops_with_hint(home):
    run(["init"], home)
    (home / "config.toml").write_text("[medsearch]\nlog_formt = 'json'\n")
    result = CliRunner().invoke(cli, ["--home", str(home), "doctor"])
    assert result.exit_code == 2
    assert "Did you mean 'log_format'" in result.output


def test_train_refuses_zero_steps_without_a_tower_to_keep(tmp_path):
    result = CliRunner().invoke(cli, ["train", "--out", str(tmp_path / "m"), "--steps", "0", "--synth-seed", "1003"])
    assert result.exit_code != 0
    assert "--steps 0 keeps the image tower" in result.output and "--init MODEL_DIR" in result.output
    assert not (tmp_path / "m").exists()


def test_train_refuses_image_only_with_zero_steps(tmp_path):
    result = CliRunner().invoke(cli, ["train", "--out", str(tmp_path / "m"), "--steps", "0", "--image-only",
                                      "--synth-seed", "1003", "--init", "medsearch/models/default"])
    assert result.exit_code != 0 and "--image-only with --steps 0 would train nothing" in result.output
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("option", [["--focal-steps", "10"], ["--grid", "fine"], ["--detail-width", "8"],
                                    ["--image-only"]])
def test_ctseg_only_options_are_refused_for_the_dual_encoder(tmp_path, option):
    result = CliRunner().invoke(cli, ["train", "--arch", "ctnet", "--archive", str(tmp_path), "--out",
                                      str(tmp_path / "m"), *option])
    assert result.exit_code != 0
    assert "apply to --arch ctseg only" in result.output and not (tmp_path / "m").exists()


def test_train_nodules_refuses_an_evaluation_seed(tmp_path):
    result = CliRunner().invoke(cli, ["train-nodules", str(tmp_path), "--synth-seed", "9001"])
    assert result.exit_code != 0 and "reserved for evaluation" in result.output
    assert not (tmp_path / "nodule.pt").exists()


@pytest.mark.parametrize("config, message", [(None, "holds no readable config.json"),
                                             ('{"arch": "ctnet"}', "Train a ctseg model first")])
def test_train_nodules_needs_a_ctseg_model_folder(tmp_path, config, message):
    if config is not None:
        (tmp_path / "config.json").write_text(config)
    result = CliRunner().invoke(cli, ["train-nodules", str(tmp_path), "--studies", "8"])
    assert result.exit_code != 0 and message in result.output
    assert not (tmp_path / "nodule.pt").exists()


def test_calibrate_nodules_refuses_an_evaluation_seed(tmp_path):
    result = CliRunner().invoke(cli, ["calibrate-nodules", str(tmp_path), "--candidates", "96", "--synth-seed", "9001"])
    assert result.exit_code != 0 and "reserved for evaluation" in result.output
    assert not (tmp_path / "nodule.pt").exists()


def test_calibrate_nodules_needs_a_detector(tmp_path):
    (tmp_path / "config.json").write_text('{"arch": "ctseg"}')
    result = CliRunner().invoke(cli, ["calibrate-nodules", str(tmp_path), "--candidates", "96", "--studies", "8"])
    assert result.exit_code != 0 and "holds no nodule detector" in result.output and "train-nodules" in result.output
    assert not (tmp_path / "nodule.pt").exists()


def test_calibrate_nodules_rescores_more_candidates_and_records_it(tmp_path):
    import shutil

    import torch

    from medsearch.models.nodule_detector import NODULE_FILE, NoduleDetector
    from medsearch.models.registry import DEFAULT_MODEL_DIR

    for name in ("config.json", NODULE_FILE):
        shutil.copy(DEFAULT_MODEL_DIR / name, tmp_path / name)
    shipped = NoduleDetector.load(DEFAULT_MODEL_DIR)
    result = CliRunner().invoke(cli, ["calibrate-nodules", str(tmp_path), "--candidates", "64", "--studies", "12",
                                      "--synth-seed", "1405", "--workers", "1"])
    assert result.exit_code == 0, result.output
    det = NoduleDetector.load(tmp_path)
    assert det.max_candidates == 64 and (det.scale, det.offset) != (shipped.scale, shipped.offset)
    assert all(torch.equal(a, b) for a, b in zip(det.net.state_dict().values(), shipped.net.state_dict().values()))
    record = json.loads((tmp_path / "config.json").read_text())["nodule_detector"]["calibrated"]
    assert record["candidates"] == 64 and record["previous_candidates"] == shipped.max_candidates
    assert record["synth_seed"] == 1405 and "64 candidates per scan" in result.output
    # the shipped detector is an ensemble: every network keeps its weights and gets its own calibration
    assert len(det.networks()) == len(shipped.networks()) > 1
    for mine, theirs in zip(det.members, shipped.members):
        assert all(torch.equal(a, b) for a, b in zip(mine.net.state_dict().values(), theirs.net.state_dict().values()))
        assert (mine.scale, mine.offset) != (theirs.scale, theirs.offset)


def _detector_folder(folder, seed, types=3):
    import torch

    from medsearch.models.nodule_detector import NODULE_FILE, NoduleDetector
    from medsearch.models.nodule_net import DETECTED_TYPES, NoduleNet

    folder.mkdir()
    (folder / "config.json").write_text('{"arch": "ctseg", "nodule_detector": {"steps": 1}}')
    torch.manual_seed(seed)
    NoduleDetector(NoduleNet(width=4, types=types), 0.5, -2.0, summary={"steps": 1, "synth_seed": 1100 + seed},
                   max_candidates=96 - 8 * seed, types=DETECTED_TYPES[:types]).save(folder / NODULE_FILE)
    return folder


def test_combine_nodules_averages_another_folders_network_and_records_it(tmp_path):
    from medsearch.models.nodule_detector import NoduleDetector

    model, other = _detector_folder(tmp_path / "model", 0), _detector_folder(tmp_path / "other", 1)
    result = CliRunner().invoke(cli, ["combine-nodules", str(model), str(other)])
    assert result.exit_code == 0, result.output
    det = NoduleDetector.load(model)
    assert len(det.networks()) == 2 and det.max_candidates == 96      # the first detector's candidates
    members = json.loads((model / "config.json").read_text())["nodule_detector"]["members"]
    assert [(m["synth_seed"], m["trained_candidates"]) for m in members] == [(1101, 88)]
    assert "averages 2 networks" in result.output


@pytest.mark.parametrize("model_seed, other, message", [
    (None, lambda p: _detector_folder(p, 1), "holds no nodule detector"),              # nothing to join
    (0, lambda p: p.mkdir() or p, "holds no nodule detector"),                          # nothing to add
    (0, lambda p: _detector_folder(p, 1, types=1), "same --types"),                      # other types
    (0, lambda p: _detector_folder(p, 0), "another --seed"),                            # the same network
])
def test_combine_nodules_refuses_what_cannot_join(tmp_path, model_seed, other, message):
    model = tmp_path / "model"
    if model_seed is None:
        model.mkdir()
        (model / "config.json").write_text('{"arch": "ctseg"}')
    else:
        _detector_folder(model, model_seed)
    before = sorted(p.read_bytes() for p in model.iterdir())
    result = CliRunner().invoke(cli, ["combine-nodules", str(model), str(other(tmp_path / "other"))])
    assert result.exit_code != 0 and message in result.output
    assert sorted(p.read_bytes() for p in model.iterdir()) == before      # nothing written


def test_train_regions_refuses_an_evaluation_seed(tmp_path):
    result = CliRunner().invoke(cli, ["train-regions", str(tmp_path), "--synth-seed", "9001"])
    assert result.exit_code != 0 and "reserved for evaluation" in result.output
    assert not (tmp_path / "regions.pt").exists()


@pytest.mark.parametrize("config, detector, message", [(None, False, "holds no readable config.json"),
                                                       ('{"arch": "ctnet"}', True, "no ctseg model"),
                                                       ('{"arch": "ctseg"}', False, "train-nodules")])
def test_train_regions_needs_a_ctseg_model_with_a_detector(tmp_path, config, detector, message):
    if config is not None:
        (tmp_path / "config.json").write_text(config)
    if detector:
        (tmp_path / "nodule.pt").write_bytes(b"")
    result = CliRunner().invoke(cli, ["train-regions", str(tmp_path), "--studies", "8"])
    assert result.exit_code != 0 and message in result.output
    assert not (tmp_path / "regions.pt").exists()


@pytest.mark.parametrize("types", ["cavity", "nodule,lesion", "nodule,cavity,cavity", ""])
def test_train_nodules_refuses_types_it_cannot_score(tmp_path, types):
    (tmp_path / "config.json").write_text('{"arch": "ctseg"}')
    result = CliRunner().invoke(cli, ["train-nodules", str(tmp_path), "--studies", "8", "--types", types])
    assert result.exit_code != 0 and "--types" in result.output and "nodule first" in result.output
    assert not (tmp_path / "nodule.pt").exists()


def test_train_nodules_by_default_trains_the_types_the_shipped_detector_scores():
    from medsearch.cli import DETECTOR_TYPES, _detector_types
    from medsearch.models.nodule_detector import NoduleDetector
    from medsearch.models.registry import DEFAULT_MODEL_DIR

    assert NoduleDetector.load(DEFAULT_MODEL_DIR).types == DETECTOR_TYPES == _detector_types(",".join(DETECTOR_TYPES))

"""The nodule detector: NoduleNet's shape contract, files, grid mapping, slots and painting, and the
encoder using it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsearch import vocab
from medsearch.errors import ConfigError
from medsearch.models.image_tower_seg import HEAD_SPLIT
from medsearch.models.localize import canonical_to_native
from medsearch.models.nodule_detector import (BACKGROUND_LOGIT, NODULE_FILE, NoduleDetector, NoduleEvidence,
                                              native_to_half, nodule_slots, paint)
from medsearch.models.nodule_net import N_DENSITIES, N_FEATURES, NoduleNet

NR, NT, ND, _ = HEAD_SPLIT
NODULE = vocab.FINDING_TYPES.index("nodule")


@pytest.mark.parametrize("n", [1, 5])
@pytest.mark.parametrize("types", [1, 3])
def test_nodule_net_shape_contract(n, types):
    torch.manual_seed(0)
    net = NoduleNet(width=8, types=types).eval()
    with torch.no_grad():
        logits, logsize, density = net(torch.rand(n, 1, 16, 16, 16) * 2 - 1, torch.rand(n, N_FEATURES))
    assert logits.shape == (n, types) and logsize.shape == (n,) and density.shape == (n, N_DENSITIES)
    assert N_DENSITIES == len(vocab.DENSITIES)


def test_a_typed_net_extends_the_nodule_only_head_at_its_end():
    """A nodule-only file's weights are the first rows of a typed net's: the nodule logit, size and density
    mean the same in both, so older files load into the same code."""
    torch.manual_seed(0)
    one, three = NoduleNet(width=4), NoduleNet(width=4, types=3)
    state = three.state_dict()
    for k, v in one.state_dict().items():
        state[k] = torch.cat([v, state[k][len(v):]]) if k.startswith("head.2") else v
    three.load_state_dict(state)
    x, f = torch.rand(2, 1, 16, 16, 16), torch.rand(2, N_FEATURES)
    with torch.no_grad():
        a, b = one.eval()(x, f), three.eval()(x, f)
    assert torch.allclose(a[0][:, 0], b[0][:, 0]) and torch.allclose(a[1], b[1]) and torch.allclose(a[2], b[2])


def test_a_typed_detector_round_trips_and_scores_each_type(tmp_path):
    from medsearch.models.data import detector_digest
    from medsearch.models.nodule_net import DETECTED_TYPES

    torch.manual_seed(0)
    det = NoduleDetector(NoduleNet(width=4, types=3), 1.0, -2.0, types=DETECTED_TYPES[:3],
                         calibration={"mass": (2.0, -1.0), "cavity": (0.5, -30.0)})
    det.save(tmp_path / NODULE_FILE)
    back = NoduleDetector.load(tmp_path)
    assert back.types == DETECTED_TYPES[:3] and back.calibration == det.calibration
    assert detector_digest(back) == detector_digest(det)
    x, f = np.random.default_rng(0).uniform(-1, 1, (3, 1, 16, 16, 16)).astype(np.float32), np.zeros((3, 4), np.float32)
    p, _, _, others = back.score_types(x, f)
    assert set(others) == {"mass", "cavity"} and all(v.shape == (3,) for v in others.values())
    assert (others["cavity"] < 1e-6).all()                 # its own calibration, not the nodule's
    assert np.allclose(p, det.score(x, f)[0])
    with pytest.raises(ValueError, match="types"):
        NoduleDetector(NoduleNet(width=4, types=3))          # a typed net needs its type names


def test_detector_file_round_trip(tmp_path):
    torch.manual_seed(0)
    det = NoduleDetector(NoduleNet(width=8), scale=1.5, offset=-3.0, summary={"steps": 7})
    det.save(tmp_path / NODULE_FILE)
    back = NoduleDetector.load(tmp_path)
    assert (back.scale, back.offset, back.summary) == (1.5, -3.0, {"steps": 7})
    x, f = np.random.default_rng(0).uniform(-1, 1, (3, 1, 16, 16, 16)).astype(np.float32), np.zeros((3, 4), np.float32)
    assert np.allclose(det.score(x, f)[0], back.score(x, f)[0])
    assert NoduleDetector.load(tmp_path / "none") is None


def test_the_number_of_candidates_travels_with_the_detector(tmp_path):
    from medsearch.models.candidates import MAX_CANDIDATES
    from medsearch.models.data import detector_digest
    from medsearch.synth.study import generate_study

    torch.manual_seed(0)
    net = NoduleNet(width=4)
    NoduleDetector(net, max_candidates=12).save(tmp_path / NODULE_FILE)
    det = NoduleDetector.load(tmp_path)
    assert det.max_candidates == 12
    st = generate_study(1101, 0, 128, findings=["nodule"])
    assert 0 < len(det.detect(st.hu, st.spacing)) <= 12 < len(NoduleDetector(net).detect(st.hu, st.spacing))
    # another number of candidates is another detector: its evidence is cached apart
    assert detector_digest(det) != detector_digest(NoduleDetector(net))
    # a file from before the number was stored scores the default number
    blob = torch.load(tmp_path / NODULE_FILE, weights_only=True)
    del blob["max_candidates"]
    torch.save(blob, tmp_path / NODULE_FILE)
    assert NoduleDetector.load(tmp_path).max_candidates == MAX_CANDIDATES


def _typed(seed: int, nodule_offset: float, **kw) -> NoduleDetector:
    from medsearch.models.nodule_net import DETECTED_TYPES

    torch.manual_seed(seed)
    return NoduleDetector(NoduleNet(width=4, types=3), 0.5, nodule_offset, types=DETECTED_TYPES[:3],
                          calibration={"mass": (1.0, -1.0), "cavity": (0.5, 2.0)}, **kw)


def test_an_ensemble_averages_its_networks_calibrated_log_odds_and_round_trips(tmp_path):
    from medsearch.models.data import detector_digest

    a, b = _typed(0, -2.0, max_candidates=96), _typed(1, 3.0)
    x = np.random.default_rng(0).uniform(-1, 1, (4, 1, 16, 16, 16)).astype(np.float32)
    f = np.random.default_rng(1).uniform(0, 1, (4, N_FEATURES)).astype(np.float32)
    pa, sa, da, oa = a.score_types(x, f)
    pb, sb, db, ob = b.score_types(x, f)
    digest_alone = detector_digest(a)
    a.add_member(b)
    p, size, density, others = a.score_types(x, f)
    logit = lambda q: np.log(q / (1 - q))  # noqa: E731
    assert np.allclose(logit(p), (logit(pa) + logit(pb)) / 2, atol=1e-4)
    for t in others:
        assert np.allclose(logit(others[t]), (logit(oa[t]) + logit(ob[t])) / 2, atol=1e-4)
    assert np.allclose(np.log(size), (np.log(sa) + np.log(sb)) / 2, atol=1e-5)
    assert np.allclose(density, (da + db) / 2, atol=1e-6)
    # another ensemble is another detector: its evidence is cached apart
    assert detector_digest(a) != digest_alone
    a.save(tmp_path / NODULE_FILE)
    back = NoduleDetector.load(tmp_path)
    assert len(back.networks()) == 2 and back.max_candidates == 96 and back.members[0].calibration == b.calibration
    assert detector_digest(back) == detector_digest(a)
    assert np.allclose(back.score_types(x, f)[0], p)


@pytest.mark.parametrize("n", [1, 31, 32, 33, 97])
def test_scoring_in_chunks_equals_scoring_each_candidate_alone(n):
    from medsearch.models.nodule_detector import SCORE_BATCH

    det = _typed(0, -2.0, max_candidates=96)
    det.add_member(_typed(1, 3.0))
    x = np.random.default_rng(0).uniform(-1, 1, (n, 1, 16, 16, 16)).astype(np.float32)
    f = np.random.default_rng(1).uniform(0, 1, (n, N_FEATURES)).astype(np.float32)
    p, size, density, others = det.score_types(x, f)
    assert p.shape == size.shape == (n,) and density.shape == (n, N_DENSITIES)
    alone = [det.score_types(x[i:i + 1], f[i:i + 1]) for i in range(n)]
    assert np.allclose(p, np.concatenate([a[0] for a in alone]), atol=1e-5)
    assert np.allclose(size, np.concatenate([a[1] for a in alone]), rtol=1e-4)
    assert np.allclose(density, np.concatenate([a[2] for a in alone]), atol=1e-5)
    for t in others:
        assert np.allclose(others[t], np.concatenate([a[3][t] for a in alone]), atol=1e-5)
    assert SCORE_BATCH < 96  # the shipped detector's candidates take more than one chunk


@pytest.mark.parametrize("other, match", [
    (lambda: NoduleDetector(NoduleNet(width=4)), "cannot join"),            # another set of types
    (lambda: _typed(0, 5.0), "already one of this detector's"),             # the same network again
])
def test_an_ensemble_refuses_what_cannot_join_it(other, match):
    det = _typed(0, -2.0)
    with pytest.raises(ValueError, match=match):
        det.add_member(other())
    assert det.members == []


def test_a_detector_file_whose_member_scores_other_types_is_refused(tmp_path):
    det = _typed(0, -2.0)
    det.members.append(NoduleDetector(NoduleNet(width=4)))    # as an edited file would hold it
    det.save(tmp_path / NODULE_FILE)
    with pytest.raises(ConfigError) as err:
        NoduleDetector.load(tmp_path)
    assert NODULE_FILE in str(err.value)


def test_a_corrupt_detector_file_names_the_file_and_the_fix(tmp_path):
    (tmp_path / NODULE_FILE).write_bytes(b"not a torch file")
    with pytest.raises(ConfigError) as err:
        NoduleDetector.load(tmp_path)
    assert NODULE_FILE in str(err.value) and "train-nodules" in err.value.fix


def test_scores_are_calibrated_probabilities():
    det = NoduleDetector(NoduleNet(width=8), scale=1.0, offset=-20.0)
    p, diameter, density = det.score(np.zeros((2, 1, 16, 16, 16), np.float32), np.zeros((2, 4), np.float32))
    assert (p < 1e-3).all() and (diameter > 0).all() and np.allclose(density.sum(1), 1)
    empty = det.score(np.zeros((0, 1, 16, 16, 16), np.float32), np.zeros((0, 4), np.float32))
    assert [a.shape[0] for a in empty] == [0, 0, 0]


def test_native_to_half_inverts_the_localisers_canonical_to_native():
    rng = np.random.default_rng(1)
    canon_affine = np.diag([4.3, 4.3, 6.5, 1.0])
    canon_affine[:3, 3] = [-170, -160, -150]
    native_affine = np.array([[-0.7, 0, 0, 180], [0, -0.7, 0, 170], [0, 0, 2.5, -140], [0, 0, 0, 1.0]])
    half = rng.uniform(0, 20, (6, 3))                                   # (z, y, x) on the half grid
    canon_xyz = ((half + 0.5) * 2 - 0.5)[:, ::-1]
    native_xyz = canonical_to_native(canon_xyz, canon_affine, native_affine)
    assert np.allclose(native_to_half(native_xyz[:, ::-1], native_affine, canon_affine), half)


def _evidence(cells, p, diameter=10.0, density=0):
    dens = np.zeros((len(p), len(vocab.DENSITIES)), np.float32)
    dens[:, density] = 1
    return NoduleEvidence(np.asarray(cells, float), np.asarray(p, np.float32),
                          np.full(len(p), np.log(diameter), np.float32), dens)


def test_nodule_slots_are_the_noisy_or_of_the_detections_in_each_lobe():
    region = torch.zeros(len(vocab.LOBES), 4, 6, 6)
    a, b = vocab.LOBES.index("right upper lobe"), vocab.LOBES.index("left lower lobe")
    region[a, :, :, :3] = 1.0
    region[b, :, :, 3:] = 1.0
    ev = _evidence([[1, 1, 1], [2, 2, 2], [1, 1, 4]], [0.5, 0.5, 0.1], diameter=25.0, density=1)
    slots = nodule_slots(ev, region)
    assert slots["presence"][a].item() == pytest.approx(0.75)
    assert slots["presence"][b].item() == pytest.approx(0.1)
    assert slots["presence"][[i for i in range(len(vocab.LOBES)) if i not in (a, b)]].abs().max() < 1e-6
    assert slots["density"][a].argmax().item() == 1
    assert slots["size"][a].argmax().item() == vocab.size_bin(25.0)
    assert nodule_slots(NoduleEvidence.empty(), region) is None


def test_a_faint_small_nodule_keeps_its_own_size_bin_beside_a_surer_large_one():
    region = torch.zeros(len(vocab.LOBES), 4, 6, 6)
    a = vocab.LOBES.index("right lower lobe")
    region[a] = 1.0
    ev = _evidence([[1, 1, 1], [2, 2, 2]], [0.9, 0.3], diameter=40.0, density=0)
    ev.logsize[1], ev.density[1] = np.log(4.0), np.eye(len(vocab.DENSITIES))[2]
    slots = nodule_slots(ev, region)
    presence = slots["presence"][a].item()
    assert presence == pytest.approx(1 - 0.1 * 0.7)
    joint_size = presence * slots["size"][a]                     # P(a nodule of that size in the lobe)
    assert joint_size[vocab.size_bin(40.0)].item() == pytest.approx(0.9, abs=0.03)   # soft bins
    assert joint_size[vocab.size_bin(4.0)].item() == pytest.approx(0.3, abs=0.03)   # not diluted into a mean
    joint_density = presence * slots["density"][a]
    assert joint_density[0].item() == pytest.approx(0.9, abs=1e-4) and joint_density[2].item() == pytest.approx(0.3, abs=1e-4)


def test_paint_replaces_the_nodule_channel_and_sets_density_and_size_where_sure():
    maps = torch.zeros(sum(HEAD_SPLIT), 4, 6, 6)
    ev = _evidence([[1, 2, 3], [3.4, 5.6, 0.2]], [0.9, 0.2], diameter=12.0, density=3)
    out = paint(maps, ev, NR + NODULE, NR + NT, NR + NT + ND)
    ch = out[NR + NODULE]
    assert ch[1, 2, 3] > 2 and -2 < ch[3, 5, 0] < 0                    # logit(0.9), logit(0.2)
    assert (ch == BACKGROUND_LOGIT).sum() == ch.numel() - 2
    assert out[NR + NT:NR + NT + ND, 1, 2, 3].argmax().item() == 3    # density of the sure one
    assert out[-1, 1, 2, 3].item() == pytest.approx(np.log(12.0))
    assert torch.equal(out[NR + NT:, 3, 5, 0], maps[NR + NT:, 3, 5, 0])  # the unsure one leaves them
    others = [c for c in range(maps.shape[0]) if c != NR + NODULE and not NR + NT <= c]
    assert torch.equal(out[others], maps[others])


def test_slot_model_takes_the_nodule_slots_from_the_evidence():
    from medsearch.models.slot_model import SlotModel

    torch.manual_seed(0)
    model = SlotModel().eval()
    x = torch.rand(2, 5, 16, 32, 32)
    with torch.no_grad():
        bare = model.encode_image(x)
        region = torch.softmax(bare["maps"][:, :NR], dim=1)[:, 1:]
        cell = [2, 5, 5]
        ev = _evidence([cell], [0.95])
        out = model.encode_image(x, [ev, None])
    expected = nodule_slots(ev, region[0])["presence"]
    assert torch.allclose(out["presence"][0, NODULE], expected)
    assert torch.equal(out["presence"][1], bare["presence"][1])        # no evidence: the U-Net's slots
    others = [t for t in range(NT) if t != NODULE]
    assert torch.equal(out["presence"][0, others], bare["presence"][0, others])
    assert out["maps"][0, NR + NODULE, 2, 5, 5] > 2 and not torch.equal(out["embedding"][0], bare["embedding"][0])
    with torch.no_grad():
        deferred = model.encode_image(x, lambda: [ev, None])           # evidence computed beside the U-Net
    assert torch.equal(deferred["embedding"], out["embedding"])
    empty = model.encode_image(x, [NoduleEvidence.empty(), None])
    assert (empty["presence"][0, NODULE] == 0).all()                   # a detector that saw nothing


def test_the_encoder_runs_the_detector_of_its_model_folder(tmp_path):
    import shutil

    from medsearch.dicom.volume import HUVolume
    from medsearch.models.registry import DEFAULT_MODEL_DIR, Encoder
    from medsearch.synth.study import generate_study

    model = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, model)
    (model / NODULE_FILE).unlink(missing_ok=True)
    bare = Encoder(model)
    assert bare.nodule_detector is None
    torch.manual_seed(0)
    # a detector that calls every candidate a 10 mm nodule with certainty
    NoduleDetector(NoduleNet(width=4), scale=0.0, offset=12.0).save(model / NODULE_FILE)
    enc = Encoder(model)
    # the detector's tag follows the weights' hash, before the scorer's (arch-weights-n<detector>-s<scorer>)
    weights, scorer = bare.model_version.rsplit("-s", 1)
    assert enc.nodule_detector is not None and enc.model_version.startswith(weights + "-n")
    assert enc.model_version.endswith("-s" + scorer)
    st = generate_study(1101, 0, 128, findings=["nodule"])
    vol = HUVolume(st.hu, st.spacing, st.affine, "CT")
    out, before = enc.encode_volume(vol), bare.encode_volume(vol)
    nodules = [f for f in out.findings if f["type"] == "nodule"]
    assert nodules and all(f["key_slice"] is not None and 0 <= f["key_slice"] < st.hu.shape[0] for f in nodules)
    detected_slices = set(np.rint(enc.nodule_detector.detect(st.hu, st.spacing).index[:, 0]).astype(int))
    assert {f["key_slice"] for f in nodules} <= detected_slices        # the detector's own slices
    assert not np.allclose(out.embedding, before.embedding)
    assert np.linalg.norm(out.embedding) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("offset, strong", [(12.0, True), (-12.0, False)])
def test_evidence_keeps_the_candidates_below_the_threshold_apart(offset, strong):
    from medsearch.dicom.volume import HUVolume
    from medsearch.models.nodule_detector import MIN_PROBABILITY
    from medsearch.models.preprocess import to_canonical
    from medsearch.synth.study import generate_study

    torch.manual_seed(0)
    det = NoduleDetector(NoduleNet(width=4), scale=0.0, offset=offset)   # every candidate at one probability
    st = generate_study(1101, 0, 128, findings=["nodule"])
    vol = HUVolume(st.hu, st.spacing, st.affine, "CT")
    _, affine = to_canonical(vol)
    ev = det.evidence(vol, affine)
    n = len(det.detect(st.hu, st.spacing))
    assert n > 0 and ev.weak is not None and ev.lungs is not None
    assert (len(ev), len(ev.weak)) == ((n, 0) if strong else (0, n))
    # the weak candidates never count as nodules, but carry where they are
    assert (ev.probability >= MIN_PROBABILITY).all() and (ev.weak.probability < MIN_PROBABILITY).all()
    assert ev.weak.native.shape == (len(ev.weak), 3) and ev.weak.cells.shape == (len(ev.weak), 3)


def test_load_archive_carries_the_detectors_evidence_and_caches_it(tmp_path):
    from medsearch.models.data import load_archive
    from medsearch.synth import generate_archive

    pool = tmp_path / "pool"
    generate_archive(pool, 2, seed=9004, workers=1, progress=False)
    torch.manual_seed(0)
    det = NoduleDetector(NoduleNet(width=4), scale=0.0, offset=0.0)     # every candidate at p = 0.5
    cache = tmp_path / "cache"
    first = load_archive(pool, cache_dir=cache, progress=False, detector=det)
    assert all(isinstance(s.nodules, NoduleEvidence) for s in first)
    assert any(len(s.nodules) for s in first) and all(np.allclose(s.nodules.probability, 0.5) for s in first)
    assert len(list(cache.glob("nodules-*/*.npz"))) == 2
    again = load_archive(pool, cache_dir=cache, progress=False, detector=det)
    for a, b in zip(first, again):
        assert np.array_equal(a.hu, b.hu) and np.allclose(a.nodules.cells, b.nodules.cells)
    plain = load_archive(pool, cache_dir=cache, progress=False)
    assert all(s.nodules is None for s in plain) and np.array_equal(plain[0].hu, first[0].hu)


def test_a_finding_holding_a_detection_takes_its_slice_and_box_from_it():
    from medsearch.models.nodule_detector import located

    ev = _evidence([[2, 3, 3], [2, 3, 4], [7, 7, 7]], [0.6, 0.9, 0.99], diameter=10.0)
    ev.native = np.array([[40.0, 60.0, 70.0], [44.2, 61.0, 90.0], [5.0, 5.0, 5.0]])
    affine = np.diag([2.0, 2.0, 2.5, 1.0])                              # 2 mm pixels
    key, box = located(ev, np.array([[2, 3, 3], [2, 3, 4], [2, 4, 4]]), affine, (80, 128, 128))
    assert key == 44                                                    # the surer of the two inside
    assert box == [86, 57, 94, 65]                                      # 10 mm: radius 2.5 px + 1
    assert located(ev, np.array([[0, 0, 0]]), affine, (80, 128, 128)) is None
    ev.native = None
    assert located(ev, np.array([[2, 3, 3]]), affine, (80, 128, 128)) is None


def _typed_detector(nodule: float, mass: float, cavity: float) -> NoduleDetector:
    """A typed detector that gives every candidate the same probability of each type."""
    from medsearch.models.nodule_net import DETECTED_TYPES

    torch.manual_seed(0)
    return NoduleDetector(NoduleNet(width=4, types=3), scale=0.0, offset=nodule, types=DETECTED_TYPES[:3],
                          calibration={"mass": (0.0, mass), "cavity": (0.0, cavity)})


def test_a_typed_detectors_evidence_holds_each_other_type_apart():
    from medsearch.dicom.volume import HUVolume
    from medsearch.models.preprocess import to_canonical
    from medsearch.synth.study import generate_study

    det = _typed_detector(-12.0, 12.0, -12.0)                           # every candidate a mass, none else
    st = generate_study(1101, 1, 128, findings=["mass"])
    vol = HUVolume(st.hu, st.spacing, st.affine, "CT")
    _, affine = to_canonical(vol)
    ev = det.evidence(vol, affine)
    n = len(det.detect(st.hu, st.spacing))
    assert len(ev) == 0 and len(ev.weak) == n                           # no nodule
    assert set(ev.others) == {"mass", "cavity"}
    assert len(ev.others["mass"]) == n and len(ev.others["cavity"]) == 0
    assert np.allclose(ev.others["mass"].cells, ev.weak.cells)          # the same candidates, placed alike
    # a nodule-only detector's evidence has no other types
    assert NoduleDetector(NoduleNet(width=4)).evidence(vol, affine).others is None


def test_painting_another_type_only_raises_its_channel_where_the_detector_is_surer():
    from medsearch.models.nodule_detector import paint_other

    maps = torch.zeros(20, 4, 6, 6)
    maps[NR + 3, 1, 1, 1] = 5.0
    ev = _evidence([[1, 1, 1], [2, 3, 4]], [0.5, 0.9])
    out = paint_other(maps, ev, NR + 3)
    assert out[NR + 3, 1, 1, 1] == 5.0                                  # the U-Net was surer there
    assert out[NR + 3, 2, 3, 4].item() == pytest.approx(np.log(9.0), abs=1e-4)
    changed = (out != maps).nonzero().tolist()
    assert changed == [[NR + 3, 2, 3, 4]] and (maps == 0).sum() == maps.numel() - 1   # maps left as they were
    assert paint_other(maps, NoduleEvidence.empty(), NR + 3) is maps


def test_the_evidence_cache_keeps_the_other_types(tmp_path):
    from medsearch.models.data import load_evidence, save_evidence

    ev = _evidence([[1, 2, 3]], [0.9])
    ev.native = np.array([[4.0, 5.0, 6.0]])
    ev.others = {"cavity": _evidence([[2, 2, 2], [3, 3, 3]], [0.5, 0.7], diameter=20.0)}
    save_evidence(tmp_path / "a.npz", ev)
    back = load_evidence(tmp_path / "a.npz")
    assert np.array_equal(back.cells, ev.cells) and np.array_equal(back.native, ev.native)
    assert set(back.others) == {"cavity"} and np.allclose(back.others["cavity"].probability, [0.5, 0.7])
    assert np.allclose(back.others["cavity"].logsize, np.log(20.0)) and back.others["cavity"].native is None
    save_evidence(tmp_path / "b.npz", _evidence([[1, 2, 3]], [0.9]))
    assert load_evidence(tmp_path / "b.npz").others is None


def test_the_slot_model_folds_the_other_types_into_the_unets_slots():
    from medsearch.models.slot_model import SlotModel

    torch.manual_seed(0)
    model = SlotModel().eval()
    x = torch.rand(1, 5, 16, 32, 32)
    cavity, mass = vocab.FINDING_TYPES.index("cavity"), vocab.FINDING_TYPES.index("mass")
    with torch.no_grad():
        plain = model.encode_image(x, [_evidence([[2, 5, 5]], [0.95])])
        ev = _evidence([[2, 5, 5]], [0.95])
        ev.others = {"cavity": _evidence([[2, 5, 5]], [0.99]), "mass": NoduleEvidence.empty()}
        out = model.encode_image(x, [ev])
    region = torch.softmax(plain["maps"][:, :NR], dim=1)[0, 1:]
    own = nodule_slots(ev.others["cavity"], region)["presence"]
    assert torch.allclose(out["presence"][0, cavity], torch.maximum(plain["presence"][0, cavity], own))
    assert (out["presence"][0, cavity] > plain["presence"][0, cavity]).any()
    assert (out["presence"][0, mass] == 0).all()      # masses merge by the geometric mean: none found, none kept
    assert torch.equal(out["density"], plain["density"]) and torch.equal(out["size"], plain["size"])
    assert not torch.equal(out["embedding"], plain["embedding"])
    # the findings and key slices follow: the cavity channel is raised to the detection's logit at its cell
    assert out["maps"][0, NR + cavity, 2, 5, 5] >= np.log(0.99 / 0.01) - 1e-4
    assert torch.equal(out["maps"][0, NR + mass], plain["maps"][0, NR + mass])


def _with_regions(mass: float) -> NoduleDetector:
    """A nodule-only detector with a region classifier that calls every component a mass with logit ``mass``
    and nothing else."""
    from medsearch.models.region_classifier import RegionClassifier, RegionNet

    torch.manual_seed(0)
    det = NoduleDetector(NoduleNet(width=4))
    det.regions = RegionClassifier(RegionNet(hidden=8), {"mass": (0.0, mass), "atelectasis": (0.0, -12.0),
                                                         "consolidation": (0.0, -12.0)})
    return det


def test_the_region_classifiers_components_travel_as_evidence_of_each_region_type():
    from medsearch.dicom.volume import HUVolume
    from medsearch.models.preprocess import to_canonical
    from medsearch.synth.study import generate_study

    det = _with_regions(12.0)
    st = generate_study(1303, 5, 128, findings=["mass"])
    vol = HUVolume(st.hu, st.spacing, st.affine, "CT")
    _, affine = to_canonical(vol)
    found = det.detect(st.hu, st.spacing).regions
    assert len(found) >= 1 and (found.index >= 0).all() and (found.index < np.asarray(st.hu.shape)).all()
    ev = det.evidence(vol, affine)
    assert {"mass", "atelectasis", "consolidation"} <= set(ev.others)
    assert len(ev.others["mass"]) == len(found) and len(ev.others["atelectasis"]) == 0
    assert np.allclose(ev.others["mass"].native, found.index)
    assert np.allclose(ev.others["mass"].logsize, np.log(found.diameter_mm))
    # the mass's labelled centre lies within one component's extent
    centre_native = np.linalg.solve(st.affine, np.r_[st.labels["findings"][0]["center_mm"], 1.0])
    assert np.min(np.abs(found.index - centre_native[[2, 1, 0]]).max(axis=1)) < 12
    assert _with_regions(-12.0).evidence(vol, affine).others["mass"].probability.size == 0


def test_the_region_stage_in_a_pool_finds_what_it_finds_in_line():
    from concurrent.futures import ThreadPoolExecutor

    from medsearch.synth.study import generate_study

    det = _with_regions(12.0)
    st = generate_study(1303, 5, 128, findings=["mass", "nodule"])
    in_line = det.detect(st.hu, st.spacing)
    with ThreadPoolExecutor(max_workers=1) as pool:
        beside = det.detect(st.hu, st.spacing, pool)
    assert len(in_line) >= 1 and len(in_line.regions) >= 1
    for name in ("index", "probability", "diameter_mm", "density"):
        assert np.array_equal(getattr(in_line, name), getattr(beside, name)), name
    for name in ("index", "diameter_mm"):
        assert np.array_equal(getattr(in_line.regions, name), getattr(beside.regions, name)), name
    assert in_line.regions.probability.keys() == beside.regions.probability.keys()
    for t, p in in_line.regions.probability.items():
        assert np.array_equal(p, beside.regions.probability[t])


def test_a_region_classifier_beside_the_detector_is_loaded_and_named(tmp_path):
    import shutil

    from medsearch.models.data import detector_digest
    from medsearch.models.region_classifier import REGION_FILE
    from medsearch.models.registry import DEFAULT_MODEL_DIR, Encoder

    model = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, model)
    (model / REGION_FILE).unlink(missing_ok=True)
    plain = NoduleDetector.load(model)
    assert plain.regions is None
    _with_regions(0.0).regions.save(model / REGION_FILE)
    det = NoduleDetector.load(model)
    assert det.regions is not None and det.regions.calibration["mass"] == (0.0, 0.0)
    assert detector_digest(det) != detector_digest(plain)                # its evidence is cached apart
    import hashlib

    import json

    from medsearch.models.region_classifier import EXPLAINED_BY, LOBE_REACH, MERGE

    assert LOBE_REACH == 1
    rules = json.dumps([MERGE, EXPLAINED_BY, LOBE_REACH], sort_keys=True).encode()
    tag = "-r" + hashlib.sha256((model / REGION_FILE).read_bytes() + rules).hexdigest()[:6]
    with_regions = Encoder(model).model_version
    (model / REGION_FILE).unlink()
    without = Encoder(model).model_version
    assert tag in with_regions and "-r" not in without
    assert with_regions.replace(tag, "") == without                      # only the tag tells them apart


def test_lobes_within_reach_take_each_lobes_largest_probability_around_a_cell():
    from medsearch.models.nodule_detector import lobes_within

    region = torch.zeros(len(vocab.LOBES), 4, 5, 5)
    region[2, 1, 2, 3] = 0.9                      # one cell of lobe 2 beside a centre the U-Net calls background
    region[0, 3, 4, 4] = 0.5                      # lobe 0, two cells away from the centre
    assert lobes_within(region, 0) is region      # a reach of 0: the cell's own
    near = lobes_within(region, 1)
    assert near.shape == region.shape
    assert near[2, 1, 2, 2] == pytest.approx(0.9) and near[2, 1, 2, 1] == 0.0       # one cell away, not two
    assert near[0, 1, 2, 2] == 0.0 and near[0, 2, 3, 3] == pytest.approx(0.5)
    assert near[:, 1, 2, 2].sum() == pytest.approx(0.9)                            # other lobes stay out
    assert torch.equal(lobes_within(region, 1), near)                              # the input is left as it was
    assert region[2, 1, 2, 2] == 0.0


def test_region_components_take_their_lobe_within_reach_and_the_detectors_own_types_do_not():
    """A mass against the chest wall: its centroid is a cell the U-Net calls background, its lobe one cell away.
    The region classifier's mass there gives that lobe its presence; a cavity from the detector at the same cell
    keeps the centroid's own (near zero) lobe probabilities."""
    from medsearch.models.image_tower_seg import HEAD_SPLIT
    from medsearch.models.nodule_detector import NoduleEvidence
    from medsearch.models.slot_model import SlotModel

    nr = HEAD_SPLIT[0]
    model = SlotModel()
    model.region_merge = None
    shape = (4, 6, 6)
    maps = torch.zeros(1, sum(HEAD_SPLIT), *shape)
    maps[0, :nr] = -20.0
    maps[0, 0] = 20.0                             # background everywhere ...
    maps[0, 0, 1, 2, 3] = -20.0
    maps[0, 1 + 2, 1, 2, 3] = 20.0                # ... but one cell of lobe 2 beside the centroid (1, 2, 2)
    with torch.no_grad():
        slots = model.image.slots(maps)
    slots["presence"].zero_()

    def at(p: float) -> NoduleEvidence:
        return NoduleEvidence(np.array([[1.0, 2.0, 2.0]]), np.array([p], np.float32), np.log(np.array([40.0], np.float32)),
                              np.eye(len(vocab.DENSITIES), dtype=np.float32)[:1], np.zeros((1, 3)))

    ev = NoduleEvidence(np.zeros((0, 3)), np.zeros(0, np.float32), np.zeros(0, np.float32),
                        np.zeros((0, len(vocab.DENSITIES)), np.float32), np.zeros((0, 3)),
                        others={"mass": at(0.8), "cavity": at(0.8)})
    mass, cavity = vocab.FINDING_TYPES.index("mass"), vocab.FINDING_TYPES.index("cavity")
    # masses meet the U-Net by the geometric mean: give the U-Net's mass a presence everywhere to see the lobes
    slots["presence"][0, mass] = 1.0
    with torch.no_grad():
        _, out = model._with_nodules(maps, slots, [ev])
    assert float(out["presence"][0, mass, 2]) == pytest.approx(0.8 ** 0.5, abs=1e-4)
    assert float(out["presence"][0, mass].sum()) == pytest.approx(0.8 ** 0.5, abs=1e-4)   # that lobe only
    assert float(out["presence"][0, cavity].max()) < 1e-6                                 # its centroid's own lobes


def test_masses_need_both_the_unet_and_the_region_classifier():
    from medsearch.models.region_classifier import MERGE
    from medsearch.models.slot_model import merge_other

    assert MERGE["mass"] == "geo" and MERGE.get("atelectasis", "max") == "max"
    mass, atel = vocab.FINDING_TYPES.index("mass"), vocab.FINDING_TYPES.index("atelectasis")
    slots = {"presence": torch.full((1, len(vocab.FINDING_TYPES), len(vocab.LOBES)), 0.64)}
    own = {"presence": torch.full((len(vocab.LOBES),), 0.25)}
    merge_other(slots, 0, mass, own)
    merge_other(slots, 0, atel, own)
    assert torch.allclose(slots["presence"][0, mass], torch.full((len(vocab.LOBES),), 0.4))   # sqrt(0.64 x 0.25)
    assert torch.allclose(slots["presence"][0, atel], torch.full((len(vocab.LOBES),), 0.64))  # the larger
    merge_other(slots, 0, atel, None)                                                       # nothing found
    assert torch.allclose(slots["presence"][0, atel], torch.full((len(vocab.LOBES),), 0.64))


def test_another_types_presence_explains_the_unets_presence_away():
    from medsearch.models.region_classifier import EXPLAINED_BY
    from medsearch.models.slot_model import merge_other

    assert EXPLAINED_BY == {}                        # measured and off (docs/model.md); the rule itself:
    cons = vocab.FINDING_TYPES.index("consolidation")
    lobes = len(vocab.LOBES)
    slots = {"presence": torch.full((1, len(vocab.FINDING_TYPES), lobes), 0.8)}
    mass = torch.tensor([0.75, 0.0, 0.0, 0.0, 0.0])
    own = {"presence": torch.tensor([0.1, 0.1, 0.9, 0.0, 0.0])}
    merge_other(slots, 0, cons, own, mass)
    # lobe 0: the U-Net's 0.8 counts for 0.8 x (1 - 0.75) = 0.2, over the classifier's 0.1; lobe 2: the
    # classifier's own consolidation still wins; elsewhere the U-Net's presence is as it was
    assert torch.allclose(slots["presence"][0, cons], torch.tensor([0.2, 0.8, 0.9, 0.8, 0.8]))
    slots = {"presence": torch.full((1, len(vocab.FINDING_TYPES), lobes), 0.8)}
    merge_other(slots, 0, cons, None, mass)                 # no consolidation component: the U-Net's, explained
    assert torch.allclose(slots["presence"][0, cons], torch.tensor([0.2, 0.8, 0.8, 0.8, 0.8]))
    slots = {"presence": torch.full((1, len(vocab.FINDING_TYPES), lobes), 0.8)}
    merge_other(slots, 0, cons, None)                       # no mass either: unchanged
    assert torch.allclose(slots["presence"][0, cons], torch.full((lobes,), 0.8))

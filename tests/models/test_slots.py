"""The ctseg model: U-Net shape contract, finding slots, clause targets and the shared space."""

from __future__ import annotations

import pytest
import torch

from medsearch import vocab
from medsearch.models.clause_head import CLAUSE_SPLIT, ClauseHead, clause_targets, size_bins_between
from medsearch.models.clauses import clause_examples, is_complete, lobes_for, negated_clauses, split_clauses
from medsearch.models.image_tower_seg import HEAD_SPLIT, SegEncoder
from medsearch.models.slot_model import FULL_ATTR_DIM, SlotModel
from medsearch.models.slots import ATTR_DIM, D, L, T, Z, attribute_vector, image_slots, size_bins_of_log


@pytest.mark.parametrize("detail_width", [0, 8, 32])
def test_seg_encoder_shape_contract(detail_width):
    net = SegEncoder(detail_width=detail_width).eval()
    with torch.no_grad():
        maps, pooled = net(torch.rand(2, 5, 16, 32, 32))
    assert maps.shape == (2, sum(HEAD_SPLIT), 8, 16, 16)
    assert pooled.shape == (2, net.pooled_dim)
    assert (net.detail is None) == (detail_width == 0)
    assert net.head.in_channels == (detail_width or 16)


def test_detail_stage_keeps_a_one_voxel_spot_at_its_own_cell():
    # the max-pooled input reaches the heads: a single bright voxel changes the output at its own
    # half-resolution cell more than anywhere else
    torch.manual_seed(0)
    net = SegEncoder(detail_width=8).eval()
    x = torch.zeros(1, 5, 16, 32, 32)
    y = x.clone()
    y[0, :, 9, 17, 21] = 1.0
    with torch.no_grad():
        diff = (net(y)[0] - net(x)[0]).abs().sum(dim=1)[0]
    assert diff.argmax().item() == (4 * 16 + 8) * 16 + 10


def test_slot_model_outputs_unit_embeddings_of_both_towers():
    model = SlotModel().eval()
    with torch.no_grad():
        out = model.encode_image(torch.rand(1, 5, 16, 32, 32))
        text = model.encode_clauses(torch.randn(3, 384), torch.tensor([0, 0, 1]), 3)
    assert out["embedding"].shape == (1, model.dim)
    assert out["attributes"].shape == (1, FULL_ATTR_DIM)
    assert out["presence"].shape == (1, T, L) and out["density"].shape == (1, T, L, D)
    assert out["spatial"].shape[:2] == (1, HEAD_SPLIT[0] + HEAD_SPLIT[1])
    assert torch.allclose(out["embedding"].norm(dim=-1), torch.ones(1), atol=1e-5)
    assert torch.allclose(text.norm(dim=-1), torch.ones(3), atol=1e-5)  # text 2 has no clause: "normal"


def test_clause_head_shapes():
    out = ClauseHead()(torch.randn(4, 384))
    assert [out[k].shape[1] for k in ("type", "lobes", "density", "size")] == list(CLAUSE_SPLIT)


@pytest.mark.parametrize("mm, expected", [(3.0, 0), (5.9, 0), (8.0, 1), (15.0, 2), (25.0, 3), (45.0, 4)])
def test_size_bins_of_log_puts_a_diameter_in_its_bin(mm, expected):
    member = size_bins_of_log(torch.tensor([mm]).log())[0]
    assert int(member.argmax()) == expected == vocab.size_bin(mm)
    assert float(member.sum()) == pytest.approx(1.0)


def _slots(findings: list[tuple[str, str, str | None, float | None]]):
    """Exact image slots of (type, lobe, density, mm) findings."""
    presence, density, size = torch.zeros(1, T, L), torch.zeros(1, T, L, D), torch.zeros(1, T, L, Z)
    for ftype, lobe, dens, mm in findings:
        t, l_ = vocab.FINDING_TYPES.index(ftype), vocab.LOBES.index(lobe)
        presence[0, t, l_] = 1
        if dens:
            density[0, t, l_, vocab.DENSITIES.index(dens)] = 1
        if mm:
            size[0, t, l_, vocab.size_bin(mm)] = 1
    return attribute_vector(presence, density, size)


def _clause(spec: dict):
    tg = clause_targets(spec)
    type_p = torch.zeros(1, T + 1)
    type_p[0, int(tg["type"])] = 1
    from medsearch.models.slots import clause_slots

    s = clause_slots(type_p, tg["lobes"][None], tg["density"][None], tg["size"][None])
    return attribute_vector(s["presence"], s["density"], s["size"])


def _cos(a, b):
    return float(torch.nn.functional.cosine_similarity(a, b))


def test_the_attribute_space_ranks_by_how_much_of_the_query_a_study_matches():
    query = _clause({"type": "nodule", "site": "right upper lobe", "density": "solid", "size_min": 8, "size_max": 8})
    exact = _slots([("nodule", "right upper lobe", "solid", 8)])
    other_size = _slots([("nodule", "right upper lobe", "solid", 25)])
    other_lobe = _slots([("nodule", "left lower lobe", "solid", 8)])
    other_type = _slots([("mass", "right upper lobe", "solid", 40)])
    scores = [_cos(query, s) for s in (exact, other_size, other_lobe, other_type)]
    assert scores == sorted(scores, reverse=True) and scores[0] > scores[1] > scores[2] > scores[3]
    assert scores[3] == pytest.approx(0.0, abs=1e-6)


def test_an_unspecified_attribute_matches_every_value():
    query = _clause({"type": "nodule"})
    a = _cos(query, _slots([("nodule", "right upper lobe", "solid", 8)]))
    b = _cos(query, _slots([("nodule", "left lower lobe", "ground-glass", 25)]))
    assert a == pytest.approx(b) and a > 0.3


def test_the_attribute_vector_binds_attributes_to_their_finding():
    # a solid RUL nodule + a ground-glass LLL nodule is not the same as the swap
    a = _slots([("nodule", "right upper lobe", "solid", 8), ("nodule", "left lower lobe", "ground-glass", 8)])
    b = _slots([("nodule", "right upper lobe", "ground-glass", 8), ("nodule", "left lower lobe", "solid", 8)])
    assert a.shape == (1, ATTR_DIM)
    assert _cos(a, b) < 0.9


def test_image_slots_follow_the_type_and_region_maps():
    nr, nt, nd, _ = HEAD_SPLIT
    maps = torch.full((1, sum(HEAD_SPLIT), 4, 6, 6), -8.0)
    maps[0, 0] = 8.0  # background region everywhere ...
    maps[0, 0, 1:3, 2:4, 2:4] = -8.0
    maps[0, 1 + vocab.LOBES.index("left lower lobe"), 1:3, 2:4, 2:4] = 8.0  # ... except a LLL block
    maps[0, nr + vocab.FINDING_TYPES.index("nodule"), 1:3, 2:4, 2:4] = 8.0
    maps[0, nr + nt + vocab.DENSITIES.index("calcified"), 1:3, 2:4, 2:4] = 8.0
    maps[0, -1] = float(torch.tensor(15.0).log())
    s = image_slots(maps)
    t, lobe = vocab.FINDING_TYPES.index("nodule"), vocab.LOBES.index("left lower lobe")
    assert s["presence"][0, t, lobe] > 0.99
    assert float(s["presence"][0].sum()) == pytest.approx(float(s["presence"][0, t, lobe]), abs=1e-2)
    assert int(s["density"][0, t, lobe].argmax()) == vocab.DENSITIES.index("calcified")
    assert int(s["size"][0, t, lobe].argmax()) == vocab.size_bin(15.0)


@pytest.mark.parametrize("site, laterality, lobes", [
    ("right upper lobe", None, ["right upper lobe"]),
    ("lingula", None, ["left upper lobe"]),
    ("superior segment of right lower lobe", None, ["right lower lobe"]),
    ("left lung", None, ["left upper lobe", "left lower lobe"]),
    ("lower lobe", "bilateral", ["right lower lobe", "left lower lobe"]),
    ("pleura", "right", ["right upper lobe", "right middle lobe", "right lower lobe"]),
    (None, None, list(vocab.LOBES)),
])
def test_lobes_for_sites(site, laterality, lobes):
    assert lobes_for(site, laterality) == sorted(vocab.LOBES.index(x) for x in lobes)


@pytest.mark.parametrize("lo, hi, bins", [(None, None, [0, 1, 2, 3, 4]), (8, 8, [1]), (8, 25, [1, 2, 3]),
                                          (20, None, [3, 4]), (None, 9, [0, 1])])
def test_size_ranges_cover_the_bins_they_overlap(lo, hi, bins):
    assert size_bins_between(lo, hi) == bins


@pytest.mark.parametrize("canonical, clauses", [
    ("right upper lobe 8 mm nodule, no pneumothorax", ["right upper lobe 8 mm nodule"]),
    ("no abnormality", []),
    ("", []),
    ("left pleural effusion, multiple bilateral lower lobes nodules",
     ["left pleural effusion", "multiple bilateral lower lobes nodules"]),
])
def test_split_clauses_drops_negations(canonical, clauses):
    assert split_clauses(canonical) == clauses


@pytest.mark.parametrize("canonical, negated, complete", [
    ("right upper lobe 8 mm nodule", [], False),
    ("right upper lobe 8 mm nodule, no pneumothorax, no lung nodule", ["pneumothorax", "lung nodule"], True),
    ("no abnormality", [], True),
    ("no", [], False),
    ("", [], False),
    ("left pleural effusion, no mediastinum lymphadenopathy", ["mediastinum lymphadenopathy"], True),
])
def test_negated_clauses_and_complete_texts(canonical, negated, complete):
    assert negated_clauses(canonical) == negated
    assert is_complete(canonical) is complete


def test_a_report_of_predicted_findings_names_them_and_negates_the_other_types():
    from medsearch.models.phrases import NORMAL_PHRASE, report_canonical_from_predictions

    found = [{"finding_type": "nodule", "site": "right lower lobe", "density": "solid", "size_mm": 8.0,
              "probability": 0.9},
             {"finding_type": "pleural effusion", "site": None, "laterality": "left", "probability": 0.3}]
    text = report_canonical_from_predictions(found)
    assert "nodule" in split_clauses(text)[0] and "right lower lobe" in text and len(split_clauses(text)) == 1
    assert set(negated_clauses(text)) == set(vocab.FINDING_TYPES) - {"nodule"} and is_complete(text)
    assert report_canonical_from_predictions(found[1:]) == NORMAL_PHRASE


def test_generated_clauses_are_deterministic_and_cover_every_type():
    a, b = clause_examples(400, 5), clause_examples(400, 5)
    assert a == b
    assert {s["type"] for _, s in a} >= set(vocab.FINDING_TYPES)
    assert any(s["type"] is None for _, s in a)  # other findings (the "not a type" class)
    assert all(split_clauses(text) == [text] for text, _ in a)


# --------------------------------------------------------------------------- findings with key slices
def _maps_with(blobs):
    """Half-resolution maps (20, 6, 10, 10): background region, plus (type, lobe, zyx slices) blobs."""
    nr, nt, nd, _ = HEAD_SPLIT
    maps = torch.full((sum(HEAD_SPLIT), 6, 10, 10), -8.0)
    maps[0] = 8.0
    maps[nr + nt] = 8.0  # solid
    maps[-1] = float(torch.tensor(12.0).log())
    for ftype, lobe, where in blobs:
        maps[(0, *where)] = -8.0
        maps[(1 + vocab.LOBES.index(lobe), *where)] = 8.0
        maps[(nr + vocab.FINDING_TYPES.index(ftype), *where)] = 8.0
    return maps


def _geometry():
    import numpy as np

    canon = np.diag([4.3, 4.3, 6.5, 1.0])
    native = np.diag([-1.0, -1.0, 1.0, 1.0]) @ canon  # native voxel == canonical voxel
    return canon, native, (12, 20, 20)


def test_decode_gives_each_finding_its_lobe_attributes_and_native_location():
    from medsearch.models.slot_findings import decode

    canon, native, shape = _geometry()
    maps = _maps_with([("nodule", "right upper lobe", (slice(2, 3), slice(4, 6), slice(6, 8)))])
    (f,) = decode(maps, canon, native, shape)
    assert (f["type"], f["site"], f["laterality"], f["density"]) == ("nodule", "right upper lobe", "right", "solid")
    assert f["size_mm"] == pytest.approx(12.0, rel=0.01) and f["probability"] > 0.99
    assert f["key_slice"] in (4, 5)  # map voxel 2 covers canonical slices 4-5
    x0, y0, x1, y1 = f["bbox"]
    assert x0 <= 12 and x1 >= 15 and y0 <= 8 and y1 >= 11


def test_decode_refines_a_focal_key_slice_on_the_native_pixels():
    import numpy as np

    from medsearch.models.slot_findings import decode

    canon, native, shape = _geometry()
    maps = _maps_with([("nodule", "left lower lobe", (slice(2, 3), slice(4, 6), slice(2, 4)))])
    hu = np.full(shape, -850.0)
    hu[6, 9:11, 5:7] = 40.0  # the nodule's widest section is on slice 6
    (f,) = decode(maps, canon, native, shape, hu)
    assert f["key_slice"] == 6


def test_decode_reports_pleural_findings_per_side_and_both_sides_as_bilateral():
    from medsearch.models.slot_findings import decode

    canon, native, shape = _geometry()
    one = decode(_maps_with([("pleural effusion", "right lower lobe", (slice(0, 2), slice(6, 9), slice(7, 9)))]),
                 canon, native, shape)
    both = decode(_maps_with([("pleural effusion", "right lower lobe", (slice(0, 2), slice(6, 9), slice(7, 9))),
                              ("pleural effusion", "left lower lobe", (slice(0, 2), slice(6, 9), slice(1, 3)))]),
                  canon, native, shape)
    assert [(f["site"], f["laterality"], f["size_mm"]) for f in one] == [("pleura", "right", None)]
    assert [(f["site"], f["laterality"]) for f in both] == [("pleura", "bilateral")]
    assert decode(_maps_with([]), canon, native, shape) == []


def test_decode_keeps_only_regions_whose_slot_is_present():
    from medsearch.models.slot_findings import decode

    canon, native, shape = _geometry()
    maps = _maps_with([("nodule", "right upper lobe", (slice(2, 3), slice(4, 6), slice(6, 8)))])
    presence = torch.zeros(T, L)
    assert decode(maps, canon, native, shape, presence=presence) == []
    presence[vocab.FINDING_TYPES.index("nodule"), vocab.LOBES.index("right upper lobe")] = 0.8
    (f,) = decode(maps, canon, native, shape, presence=presence)
    assert f["probability"] == pytest.approx(0.8)


def test_a_types_own_voxel_floor_decides_which_voxels_count():
    from medsearch.models.slots import slot_counts

    w = torch.zeros(1, T, L, 10)
    w[0, :, 0, :4] = 0.25                         # every type: four faint voxels in one lobe
    common = slot_counts(w)                       # the common floor (0.3) counts none of them
    assert float(common.sum()) == 0.0
    floor = torch.full((T,), 0.3)
    floor[2] = 0.1                                # one type's own, lower floor counts its voxels
    own = slot_counts(w, floor)
    assert float(own[0, 2, 0]) == pytest.approx(4 * 0.15 / 0.9)
    assert float(own.sum()) == pytest.approx(float(own[0, 2, 0]))


def test_image_slots_use_the_floor_they_are_given():
    nr, nt, _, _ = HEAD_SPLIT
    maps = torch.full((1, sum(HEAD_SPLIT), 4, 6, 6), -8.0)
    maps[0, 1 + vocab.LOBES.index("right lower lobe")] = 8.0
    t = vocab.FINDING_TYPES.index("emphysema")
    maps[0, nr + t, :2] = float(torch.logit(torch.tensor(0.25)))   # faint, below the common floor
    floor = torch.full((nt,), 0.3)
    off = torch.zeros(nt)
    faint = image_slots(maps, torch.full((nt,), 3.0), off)["presence"][0, t].max()
    floor[t] = 0.1
    counted = image_slots(maps, torch.full((nt,), 3.0), off, floor=floor)["presence"][0, t].max()
    assert float(faint) < 0.01 < 0.99 < float(counted)


def test_seg_encoder_slots_use_its_own_calibration():
    net = SegEncoder().eval()
    maps = torch.randn(2, sum(HEAD_SPLIT), 4, 6, 6)
    with torch.no_grad():
        net.presence_offset.fill_(0.5)
        net.presence_floor[3] = 0.1
        want = image_slots(maps, net.presence_scale, net.presence_offset, floor=net.presence_floor)
        got = net.slots(maps)
        default = image_slots(maps)
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert not torch.allclose(got["presence"], default["presence"])

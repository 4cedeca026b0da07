"""End to end: a tiny synthetic archive, ingested through the real de-identification, encoder and index,
searched through the real parser; the CLI; query by example; audit; the cache.

The model is the real network with seeded, untrained weights (written with the
model area's ``save_model``), plus an untrained reranker kept for both query
kinds, so that every stage runs; ranking *quality* is measured by
``bench/bench_search.py`` with the trained model, not here.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from sqlalchemy import func, select

from medsearch import search as S
from medsearch.accounts import Principal, add_user
from medsearch.cli import cli
from medsearch.errors import InputError
from medsearch.store.models import AuditEvent, Patient, Series, Study, VaultRecord, Volume

SEED = 7_301


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from medsearch.dicom.ingest import ingest_paths
    from medsearch.instance import Instance
    from medsearch.models.dual import DualEncoder
    from medsearch.models.reranker import CrossAttentionReranker, RERANKER_FILE, save_reranker
    from medsearch.models.train import save_model
    from medsearch.synth.archive import generate_archive

    root = tmp_path_factory.mktemp("e2e")
    arch = root / "archive"
    generate_archive(arch, 3, SEED, progress=False, workers=1)
    torch.manual_seed(SEED)
    model_dir = root / "model"
    model = DualEncoder()
    save_model(model, model_dir, {"note": "untrained, for pipeline tests"})
    save_reranker(CrossAttentionReranker(image_dim=model.image.out_channels), model_dir / RERANKER_FILE,
                  {"keep": {"phrase": True, "report": True}})
    inst = Instance.create(root / "home", settings={"model_dir": str(model_dir), "model_int8": False})
    report = ingest_paths(inst, [arch / "dicom"])
    assert report.encoding is None, report.summary()
    labels = [json.loads(line) for line in (arch / "labels.jsonl").read_text().splitlines()]
    yield {"inst": inst, "archive": arch, "labels": labels}
    inst.close()


def audit_rows(inst, event_type):
    with inst.sessions() as s:
        return s.execute(select(AuditEvent).where(AuditEvent.event_type == event_type)
                         .order_by(AuditEvent.id)).scalars().all()


def test_search_returns_explained_results_and_is_audited(world):
    inst = world["inst"]
    before = len(audit_rows(inst, "search"))
    out = S.search(inst, "左肺下叶2cm磨玻璃结节", k=5, user=Principal("ann", "radiologist"))
    assert out["query"]["canonical"] == "left lower lobe 20 mm ground-glass nodule"
    assert out["query"]["findings"][0]["density"] == "ground-glass"
    assert 1 <= len(out["results"]) <= 3 and out["total"] == len(out["results"])
    with inst.sessions() as s:
        shapes = dict(s.execute(select(Series.pseudonym, Volume.shape).join(Volume)).all())
    for r in out["results"]:
        assert r["components"]["region"] is not None  # the reranker ran on the stored spatial map
        z, y, x = shapes[r["series"]]
        assert 0 <= r["key_slice"] < z
        x0, y0, x1, y1 = r["region"]
        assert 0 <= x0 <= x1 < x and 0 <= y0 <= y1 < y
    events = audit_rows(inst, "search")
    assert len(events) == before + 1
    payload = json.loads(events[-1].payload)
    assert events[-1].actor == "ann" and payload["query"] == "左肺下叶2cm磨玻璃结节"
    assert payload["results"] == [r["study"] for r in out["results"]]
    # pseudonyms only: no original identifier leaves the pipeline
    dumped = json.dumps(out, ensure_ascii=False) + events[-1].payload
    for lab in world["labels"]:
        assert lab["study_uid"] not in dumped and lab["accession_number"] not in dumped
        assert lab["patient_id"] not in dumped


def test_cache_hits_are_audited_and_dropped_when_the_index_changes(world):
    from medsearch.index import writing

    inst = world["inst"]
    first = S.search(inst, "nodule in the right lower lobe", k=3)
    second = S.search(inst, "nodule in the right lower lobe", k=3)
    assert second["cached"] and not first["cached"]
    assert second["results"] == first["results"]
    assert json.loads(audit_rows(inst, "search")[-1].payload)["query"] == "nodule in the right lower lobe"
    with inst.sessions() as s:
        vid, emb = s.execute(select(Volume.vector_id, Volume.embedding).where(Volume.vector_id.is_not(None))
                             .limit(1)).one()
    with writing(inst) as idx:  # a change of the index (re-adding a vector) moves its generation on
        idx.remove([vid])
        idx.add([vid], np.frombuffer(emb, np.float32)[None])
    assert not S.search(inst, "nodule in the right lower lobe", k=3)["cached"]


def test_negated_query_and_sites(world):
    inst = world["inst"]
    out = S.search(inst, "no pleural effusion", k=10)
    assert all("no pleural effusion" in r["matched"] for r in out["results"])
    elsewhere = Principal("bob", "radiologist", allowed_sites=("another-hospital",))
    assert S.search(inst, "nodule", user=elsewhere)["results"] == []


def test_similar_and_upload(world):
    inst = world["inst"]
    with inst.sessions() as s:
        series, study = s.execute(select(Series.pseudonym, Study.pseudonym).join(Study).join(Volume)
                                  .where(Volume.vector_id.is_not(None)).limit(1)).one()
    out = S.similar(inst, series, k=5)
    assert study not in [r["study"] for r in out["results"]] and out["results"]

    def counts():
        with inst.sessions() as s:
            return [s.scalar(select(func.count()).select_from(t)) for t in (Patient, Study, Series, VaultRecord)]

    files_before = sorted(p for p in inst.home.rglob("*") if p.is_file() and "audit" not in p.name)
    rows_before = counts()
    lab = world["labels"][0]
    main = next(x for x in lab["series"] if x["series_uid"] == lab["main_series_uid"])
    blobs = [p.read_bytes() for p in sorted((world["archive"] / main["path"]).iterdir())]
    up = S.similar_to_upload(inst, blobs, k=3, user=Principal("ann", "radiologist"))
    assert up["query"]["similar_to"] == {"upload": len(blobs)} and up["results"]
    # never stored: no new row, no new file (the database file changes only by the audit row)
    assert counts() == rows_before
    files_after = sorted(p for p in inst.home.rglob("*") if p.is_file() and "audit" not in p.name)
    assert files_after == files_before
    assert lab["study_uid"] not in json.dumps(up)


@pytest.mark.parametrize("blobs, message", [([], "No files"), ([b"not dicom at all"], "not a DICOM file")])
def test_upload_errors(world, blobs, message):
    with pytest.raises(InputError, match=message):
        S.similar_to_upload(world["inst"], blobs)


def run_cli(inst, *args):
    return CliRunner().invoke(cli, ["--home", str(inst.home), "search", *args])


def test_cli_json_and_table(world):
    inst = world["inst"]
    res = run_cli(inst, "RLL nodule", "-k", "2", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert set(out) == {"query", "results", "total", "took_ms"} and len(out["results"]) <= 2
    assert out["query"]["findings"][0]["site"]["term"] == "right lower lobe"
    table = run_cli(inst, "RLL nodule", "-k", "2")
    assert table.exit_code == 0 and "score" in table.output
    assert audit_rows(inst, "search")[-1].actor.startswith("cli:")


@pytest.mark.parametrize("args, code, message", [
    (["--as", "nobody"], 9, "No enabled account"),
    (["--reveal", "--reason", "tumour board"], 9, "admin account"),
    (["--as", "rad1", "--reveal", "--reason", "tumour board"], 9, "admin account"),
    (["--as", "admin1", "--reveal"], 7, "needs a reason"),
])
def test_cli_refusals(world, args, code, message):
    inst = world["inst"]
    for name, role in (("rad1", "radiologist"), ("admin1", "admin")):
        if name not in {u["name"] for u in __import__("medsearch.accounts").accounts.list_users(inst)}:
            add_user(inst, name, "a-long-password", role)
    res = run_cli(inst, "nodule", *args)
    assert res.exit_code == code and message in res.output


def test_cli_reveal_as_admin_is_audited(world):
    inst = world["inst"]
    if "boss" not in {u["name"] for u in __import__("medsearch.accounts").accounts.list_users(inst)}:
        add_user(inst, "boss", "a-long-password", "admin")
    res = run_cli(inst, "nodule", "-k", "3", "--json", "--as", "boss", "--reveal", "--reason", "open in PACS")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    originals = {lab["study_uid"]: lab["accession_number"] for lab in world["labels"]}
    assert out["results"]
    for r in out["results"]:
        assert originals[r["study_uid"]] == r["accession"]
    events = audit_rows(inst, "reidentify")[-len(out["results"]):]
    assert {json.loads(e.payload)["owner"] for e in events} == {r["study"] for r in out["results"]}
    assert all(e.actor == "boss" and json.loads(e.payload)["reason"] == "open in PACS" for e in events)


def test_localisation_geometry_on_a_real_series(world):
    """A heat peak at the cell holding a labelled finding's centre lands near that finding's key slice."""
    from medsearch.dicom.pseudonym import pseudonym
    from medsearch.models.localize import localize
    from medsearch.models.spatial_store import load_spatial

    inst = world["inst"]
    secret = inst.keyring.secret("pseudonym")
    checked = 0
    for lab in world["labels"]:
        rec = load_spatial(inst, pseudonym(secret, "series", lab["main_series_uid"]))
        for f in lab["findings"]:
            if rec is None or f.get("key_slice") is None:
                continue
            grid = np.asarray(rec.spatial.shape[1:])
            ras = np.array([-f["center_mm"][0], -f["center_mm"][1], f["center_mm"][2], 1.0])
            voxel = (np.linalg.inv(rec.canon_affine) @ ras)[:3]
            cell = np.floor((voxel + 0.5) * grid / np.asarray(rec.canon_shape)).astype(int)
            if not ((cell >= 0) & (cell < grid)).all():
                continue  # the finding lies outside the canonical field of view
            heat = np.full(tuple(grid), 1e-4, dtype=np.float32)
            heat[tuple(cell)] = 1.0
            key, _ = localize(heat, rec.canon_shape, rec.canon_affine, rec.native_affine, rec.native_shape)
            # one cell of the coarse map spans this many native slices; the peak is within half of it
            cell_mm = np.abs(np.diag(rec.canon_affine)[:3]) * np.asarray(rec.canon_shape) / grid
            dz = abs(rec.native_affine[2, 2]) or 1.0
            assert abs(key - f["key_slice"]) <= cell_mm[2] / dz / 2 + 2, (key, f["key_slice"])
            checked += 1
    assert checked >= 1


def test_first_search_of_a_process_freezes_what_it_loaded(world, monkeypatch):
    # full garbage collections over the loaded models and dictionaries made the p99 (docs/index-and-search.md)
    import gc

    calls = []
    real_freeze = gc.freeze
    monkeypatch.setattr(gc, "freeze", lambda: (calls.append(1), real_freeze()))
    monkeypatch.setattr(S, "_settled", False)
    before = gc.get_freeze_count()
    S.search(world["inst"], "right lower lobe consolidation unique to the freeze test", k=3)
    assert calls == [1] and gc.get_freeze_count() > before
    S.search(world["inst"], "another query the cache has not seen", k=3)
    assert calls == [1]  # once per process

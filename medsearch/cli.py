"""The ``medsearch`` command-line interface.

Commands are thin: they parse options, open the instance and call a library
function.  Every command is documented in ``docs/cli.md`` (a test enforces it).
A command whose capability has not landed raises :class:`NotBuiltError`, which
exits non-zero and says what it waits for: it never pretends to work.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from medsearch.errors import ConfigError, MedsearchError, NotBuiltError


class _Group(click.Group):
    """Maps every :class:`MedsearchError` to its message and exit code, in one place."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except MedsearchError as exc:
            click.echo(f"error: {exc.message}", err=True)
            ctx.exit(exc.exit_code)


def _home(ctx: click.Context) -> Path | None:
    return ctx.find_root().params.get("home")


def _instance(ctx: click.Context):
    from medsearch.instance import open_instance
    from medsearch.logs import setup_logging

    inst = open_instance(_home(ctx))
    setup_logging(inst.settings.log_level, inst.settings.log_format)
    ctx.call_on_close(inst.close)
    return inst


def _operator() -> str:
    """The actor recorded for an administrative CLI command: the OS account running it."""
    import getpass

    try:
        return f"cli:{getpass.getuser()}"[:64]
    except (KeyError, OSError):
        return "cli"


def _echo_json(data) -> None:
    click.echo(json.dumps(data, ensure_ascii=False, indent=2, default=str))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--home", type=click.Path(file_okay=False, path_type=Path), envvar="MEDSEARCH_HOME",
              help="Instance directory (default: $MEDSEARCH_HOME, else ./instance).")
@click.version_option(package_name="medsearch")
def cli(home):
    """medsearch: on-premise, privacy-preserving search for CT archives."""


# --------------------------------------------------------------------------- instance
@cli.command()
@click.option("--database-url", default=None, help="Database URL (default: SQLite in the instance).")
@click.pass_context
def init(ctx, database_url):
    """Create or complete an instance: config, keys (0600), database, index folder."""
    from medsearch.instance import Instance, default_home

    home = _home(ctx) or default_home()
    inst = Instance.create(home, settings={"database_url": database_url})
    click.echo(f"instance ready at {inst.home}")
    click.echo(f"  config:   {inst.config_file}")
    click.echo(f"  keys:     {inst.keys_dir} (mode 0600; back them up: without them the vault is unreadable)")
    click.echo(f"  database: {inst.engine.url.render_as_string(hide_password=True)}")
    click.echo(f"  index:    {inst.index_dir}")
    inst.close()


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def doctor(ctx, as_json):
    """Check keys, database migration, index/database agreement and the model."""
    from medsearch.doctor import run_doctor

    report = run_doctor(_instance(ctx))
    if as_json:
        _echo_json({**report["counts"], "ok": report["ok"], "checks": report["checks"]})
    else:
        for c in report["checks"]:
            click.echo(f"[{c['status']:>4}] {c['name']}: {c['detail']}" + (f"\n       fix: {c['fix']}" if c["fix"] else ""))
        click.echo("counts: " + ", ".join(f"{k}={v}" for k, v in report["counts"].items()))
    if not report["ok"]:
        ctx.exit(1)


# --------------------------------------------------------------------------- data in
@cli.command()
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--studies", default=20, show_default=True, help="Number of studies.")
@click.option("--seed", default=0, show_default=True, help="Random seed; the same seed gives identical bytes.")
@click.option("--matrix", type=click.Choice(["128", "256", "512"]), default="128", show_default=True,
              help="In-plane matrix size.")
@click.option("--preview", is_flag=True, help="Also write PNG previews with findings outlined.")
@click.option("--workers", default=None, type=click.IntRange(1, 64),
              help="Worker processes (default: all cores); the output does not depend on it.")
def synth(out, studies, seed, matrix, preview, workers):
    """Generate a synthetic chest-CT archive with ground truth in OUT/labels.jsonl."""
    from medsearch.synth.archive import generate_archive

    summary = generate_archive(out, studies, seed, int(matrix), preview=preview, workers=workers)
    click.echo(f"wrote {summary['studies']} studies of {summary['patients']} patients "
               f"({summary['files']} files, {summary['normal']} normal) to {summary['out']} "
               f"in {summary['seconds']:.1f} s")
    click.echo("findings: " + ", ".join(f"{k}={v}" for k, v in sorted(summary["findings"].items())))


@cli.command()
@click.argument("src", type=click.Path(exists=True, path_type=Path))
@click.argument("dst", type=click.Path(path_type=Path))
@click.pass_context
def deid(ctx, src, dst):
    """Write a de-identified copy of the DICOM tree SRC to DST (PS3.15 Annex E)."""
    from medsearch.dicom.deid_tree import deid_tree

    report = deid_tree(_instance(ctx), src, dst, progress=True)
    for f in report.files:
        if f.reason and f.outcome != "not_dicom":
            click.echo(f"  {f.outcome}: sha256 {f.sha256[:16] if f.sha256 else '-'}: {f.reason}")
    click.echo(report.summary())
    ctx.exit(0 if report.all_handled else 1)


@cli.command()
@click.argument("paths", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option("--encode-pending", is_flag=True, help="Encode every stored volume that is not encoded yet.")
@click.option("--json", "as_json", is_flag=True, help="Print the per-file and per-series outcomes as JSON.")
@click.pass_context
def ingest(ctx, paths, encode_pending, as_json):
    """De-identify, assemble and store the DICOM series under PATHS."""
    from medsearch.dicom.ingest import default_workers, ingest_paths
    from medsearch.dicom.ingest import encode_pending as run_encode_pending

    if not paths and not encode_pending:
        raise click.UsageError("Give PATH... to ingest, or --encode-pending.")
    inst = _instance(ctx)
    if paths:
        report = ingest_paths(inst, paths, source="cli", progress=not as_json, workers=default_workers(inst))
        if as_json:
            _echo_json(report.to_dict())
        else:
            for f in report.files:
                if f.reason and f.outcome not in ("not_dicom", "already_ingested"):
                    click.echo(f"  {f.outcome}: sha256 {f.sha256[:16] if f.sha256 else '-'}: {f.reason}")
            click.echo(report.summary())
    if encode_pending:
        counts = run_encode_pending(inst, progress=not as_json)
        if as_json:
            _echo_json(counts)
        else:
            why = counts["not_encoded_because"]
            click.echo(f"encode pending: {counts['encoded']} encoded, {counts['failed']} failed of "
                       f"{counts['pending']}" + (f" (not encoded: {why})" if why else ""))


@cli.command()
@click.option("--dicomweb", "url", required=True, help="Base URL of the DICOMweb service.")
@click.option("--since", default=None, help="Only studies on or after this date (YYYY-MM-DD).")
@click.pass_context
def pull(ctx, url, since):
    """Backfill CT studies from a DICOMweb server (QIDO-RS + WADO-RS), resumable."""
    from medsearch.pacs.pull import pull as run_pull

    report = run_pull(_instance(ctx), url, since=since)
    click.echo("pull: " + ", ".join(f"{k}={v}" for k, v in report.as_dict().items()))


# --------------------------------------------------------------------------- terminology
@cli.group(cls=_Group)
def terms():
    """Terminology: parse radiology phrases, import SNOMED CT / RadLex."""


@terms.command("parse")
@click.argument("text")
@click.option("--json", "as_json", is_flag=True, help="Print the structured parse as JSON.")
@click.pass_context
def terms_parse(ctx, text, as_json):
    """Parse an English or Chinese radiology phrase into a structured query."""
    from medsearch.query import get_parser

    parsed = get_parser(_terms_settings(ctx)).parse(text)
    if as_json:
        _echo_json(parsed.to_dict())
        return
    click.echo(f"canonical: {parsed.canonical}")
    for f in parsed.findings:
        d = f.to_dict()
        attrs = ", ".join(f"{k}={v['term'] if isinstance(v, dict) and 'term' in v else v}"
                          for k, v in d.items() if k != "concept" and v not in (None, False))
        click.echo(f"  {'NOT ' if f.negated else ''}{f.concept.term}" + (f" ({attrs})" if attrs else ""))
    if parsed.unmatched:
        click.echo("unmatched: " + ", ".join(parsed.unmatched))


def _terms_settings(ctx: click.Context):
    """The instance's settings (config.toml and environment) without opening its database or keys."""
    from medsearch.instance import CONFIG_NAME, default_home
    from medsearch.settings import load_settings

    return load_settings(Path(_home(ctx) or default_home()) / CONFIG_NAME)


def _import_summary(result, as_json: bool) -> None:
    if as_json:
        _echo_json(result.to_dict())
        return
    click.echo(f"{result.source}: {result.matched} cross-referenced concepts found, {result.synonyms} synonyms "
               f"and {result.concepts} narrower concepts written to {result.path}")
    for label, items in (("missing from the release", result.missing), ("inactive in the release", result.inactive)):
        if items:
            click.echo(f"  cross-references {label}: {', '.join(items)}")
    click.echo("Add the file to the terminology_imports setting to use it.")


def _layer_options(f):
    """Options shared by the terminology importers."""
    f = click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")(f)
    f = click.option("--depth", default=2, show_default=True, help="Levels of narrower concepts to add.")(f)
    f = click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
                     help="Terminology layer to write (TOML).")(f)
    return click.pass_context(f)


def _run_import(ctx, importer, source: Path, out: Path, depth: int, as_json: bool) -> None:
    from medsearch.query import get_parser

    _import_summary(importer(source, get_parser(_terms_settings(ctx)).term, out, depth=depth), as_json)


@terms.command("import-snomed")
@click.argument("release", type=click.Path(exists=True, file_okay=False, path_type=Path))
@_layer_options
def terms_import_snomed(ctx, release, out, depth, as_json):
    """Import a licensed SNOMED CT RF2 snapshot (Concept, Description, Relationship files)."""
    from medsearch.query.importers.snomed import import_snomed

    _run_import(ctx, import_snomed, release, out, depth, as_json)


@terms.command("import-radlex")
@click.argument("csv_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_layer_options
def terms_import_radlex(ctx, csv_file, out, depth, as_json):
    """Import a RadLex CSV export (BioPortal)."""
    from medsearch.query.importers.radlex import import_radlex

    _run_import(ctx, import_radlex, csv_file, out, depth, as_json)


# --------------------------------------------------------------------------- model and search
@cli.command()
@click.option("--archive", type=click.Path(exists=True, file_okay=False, path_type=Path), multiple=True,
              help="Hospital DICOM tree or synthetic archive whose reports/labels train the model (repeatable).")
@click.option("--reports", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Reports (CSV/JSONL keyed by accession number) for a hospital archive.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Model folder.")
@click.option("--steps", default=None, type=click.IntRange(min=0),
              help="Optimisation steps of the image tower (default: 900 for ctseg, 1500 otherwise). ctseg with "
                   "--init: 0 keeps the tower's weights and only recalibrates and refits the later stages.")
@click.option("--batch-size", default=None, type=int, help="Studies per step (default: 6 for ctseg, 16 otherwise).")
@click.option("--seed", default=0, show_default=True, help="Seed of initialisation, sampling and augmentation.")
@click.option("--arch", default="ctseg", show_default=True, type=click.Choice(["ctseg", "ctnet", "resnet10"]),
              help="Model: ctseg (U-Net image tower with finding slots, shipped) or a CLIP-style dual encoder.")
@click.option("--synth-seed", "synth_seeds", type=int, multiple=True,
              help="ctseg: generate synthetic training studies with voxel targets from this seed (repeatable); "
                   "other archs: the seed of each synthetic --archive, recorded. Seeds 9000-9999 are refused.")
@click.option("--synth-studies", default=600, show_default=True,
              help="ctseg: synthetic studies generated per --synth-seed.")
@click.option("--workers", default=2, show_default=True, help="Processes that generate synthetic studies.")
@click.option("--init", "init_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="ctseg: start from this model's weights (fine-tuning, e.g. the bundled model on a hospital's "
                   "archive); parts whose shape differs start fresh. The learning rate drops to 1e-3.")
@click.option("--detail-width", default=0, show_default=True, type=click.IntRange(0, 256),
              help="ctseg: channels of the image tower's detail stage before the heads (0: none, as shipped).")
@click.option("--grid", type=click.Choice(["coarse", "fine"]), default=None,
              help="ctseg: canonical grid; coarse 6.5 x 4.3 x 4.3 mm, fine 5.6 x 3.07 x 3.07 mm (resolves "
                   "small nodules, about 2.7x the training cost). Default: that of new models (docs/model.md).")
@click.option("--focal-steps", default=None, type=click.IntRange(min=0),
              help="ctseg: steps of the focal head for nodules (stage 1c: whole volumes, the rest of the tower "
                   "frozen; kept only if it beats the U-Net on validation). Default 0: none trained, and a focal "
                   "head the --init model has is kept as it is.")
@click.option("--image-only", is_flag=True,
              help="ctseg: train the image tower (stage 1) only and stop, e.g. on a GPU machine without the text "
                   "model; then 'medsearch train --init OUT --steps 0' refits the later stages. The model is "
                   "refused for encoding until then.")
def train(archive, reports, out, steps, batch_size, seed, arch, synth_seeds, synth_studies, workers, init_dir,
          detail_width, grid, focal_steps, image_only):
    """Train the image and text towers (ctseg: voxel targets, clause head, InfoNCE projection)."""
    if arch == "ctseg":
        from medsearch.models.train_seg import SegConfig
        from medsearch.models.train_slots import SlotTrainConfig, train_ctseg

        if steps == 0 and not init_dir:
            raise ConfigError("--steps 0 keeps the image tower as it is, but there is no trained tower to keep.",
                              "Pass --init MODEL_DIR with --steps 0, or train the tower with --steps N.")
        if steps == 0 and image_only:
            raise ConfigError("--image-only with --steps 0 would train nothing.",
                              "Drop --image-only to refit the later stages, or train the tower with --steps N.")
        seg = SegConfig(steps=900 if steps is None else steps, batch_size=batch_size or 6, seed=seed,
                        **({"lr": 1e-3, "warmup": 10} if init_dir else {}))
        from medsearch.models.train_focal import FocalConfig

        focal = FocalConfig(seed=seed, **({} if focal_steps is None else {"steps": focal_steps}))
        summary = train_ctseg(out, list(synth_seeds), synth_studies, list(archive), reports,
                              SlotTrainConfig(seg=seg, focal=focal, seed=seed, image_only=image_only),
                              workers=workers, init=init_dir, detail_width=detail_width, grid=grid)
        if image_only:
            click.echo(f"trained the ctseg image tower in {summary['seconds']:.0f} s: {summary['image']['steps']} "
                       f"steps, validation slot F1 {summary['image'].get('slot_f1', float('nan')):.3f}; written to "
                       f"{out}. Refit the later stages before use: medsearch train --init {out} --steps 0 "
                       "--synth-seed S --synth-studies N --out NEW_DIR")
            return
        proj = summary["projection"]
        chosen = proj["tuned"] if proj["kept"] else proj["identity"]
        image = (f"image tower {summary['image']['steps']} steps, validation slot F1 "
                 f"{summary['image'].get('slot_f1', float('nan')):.3f}" if summary["image"]["steps"] else
                 f"image tower kept from {init_dir}, presence recalibrated (slot F1 "
                 f"{summary['calibration']['slot_f1']:.3f} on training studies)")
        focal = summary.get("focal") or {}
        if focal.get("steps"):
            aucs = (focal.get("val_auc") or {}).get("nodule") or {}
            image += (f"; focal head {focal['steps']} steps, {'kept' if focal['kept'] else 'not kept'} (validation "
                      f"nodule AUC {aucs.get('focal') or float('nan'):.3f} vs the U-Net's "
                      f"{aucs.get('unet') or float('nan'):.3f})")
        click.echo(f"trained ctseg in {summary['seconds']:.0f} s: {image}; clause head type "
                   f"accuracy {summary['clause']['type']:.3f}; validation report->volume R@10 "
                   f"{chosen.get('R@10', float('nan')):.3f}, phrase nDCG@10 {chosen.get('nDCG@10', float('nan')):.3f}"
                   f" (projection {'tuned' if proj['kept'] else 'identity'}); model written to {out}")
        return
    if init_dir or detail_width or grid or focal_steps is not None or image_only:
        raise click.UsageError("--init, --detail-width, --grid, --focal-steps and --image-only apply to --arch "
                               "ctseg only.")
    if not archive:
        raise click.UsageError("--archive is required for the ctnet and resnet10 architectures.")
    from medsearch.models.train import TrainConfig, train_archives

    summary = train_archives(list(archive), out, reports,
                             TrainConfig(arch=arch, steps=steps or 1500, batch_size=batch_size or 16, seed=seed),
                             synth_seeds=list(synth_seeds))
    click.echo(f"trained {summary['steps']} steps on {summary['train_studies']} studies "
               f"({summary['val_studies']} held out) in {summary['seconds']:.0f} s: loss {summary['loss']:.3f}, "
               f"validation report->volume R@5 {summary['val_R@5']:.3f}; model written to {out}")


#: ``train-nodules --types`` by default (the shipped detector's).
DETECTOR_TYPES = ("nodule", "cavity", "ground-glass opacity")


def _detector_types(text: str) -> tuple[str, ...]:
    """``--types`` as a tuple, checked against the types the detector can score."""
    from medsearch.models.nodule_net import DETECTED_TYPES

    types = tuple(t.strip() for t in text.split(",") if t.strip())
    unknown = [t for t in types if t not in DETECTED_TYPES]
    if unknown or not types or types[0] != "nodule" or len(set(types)) != len(types):
        raise ConfigError(f"--types {text!r} is not a list of detectable types starting with nodule.",
                          f"Pass some of {', '.join(DETECTED_TYPES)}, nodule first, e.g. --types nodule,cavity.")
    return types


def _model_config(model_dir: Path) -> tuple[Path, dict]:
    """The config file of a model folder and what it holds, or a ConfigError naming the folder to pass."""
    import json

    from medsearch.models.train import CONFIG_FILE

    config_file = model_dir / CONFIG_FILE
    try:
        return config_file, json.loads(config_file.read_text())
    except (OSError, ValueError):
        raise ConfigError(f"'{model_dir}' holds no readable {CONFIG_FILE}.",
                          "Pass the folder 'medsearch train --out' wrote.") from None


def _record_in_config(config_file: Path, config: dict, key: str, summary: dict) -> None:
    """Write a trained part's summary (without its config) into the model's config under ``key``."""
    import json

    config[key] = {k: v for k, v in summary.items() if k != "config"}
    config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


@cli.command("train-nodules")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--synth-seed", default=1101, show_default=True,
              help="Seed of the synthetic studies the detector learns from (9000-9999 are refused).")
@click.option("--studies", default=600, show_default=True, type=click.IntRange(min=8),
              help="Synthetic studies to generate; half have a nodule forced in, and each type after nodule in "
                   "--types adds one study in six with it forced in.")
@click.option("--steps", default=1500, show_default=True, type=click.IntRange(min=1),
              help="Optimisation steps of the patch classifier.")
@click.option("--seed", default=0, show_default=True, help="Seed of initialisation, sampling and augmentation.")
@click.option("--workers", default=2, show_default=True, help="Processes that generate synthetic studies.")
@click.option("--candidates", default=48, show_default=True, type=click.IntRange(min=8, max=512),
              help="Most candidates scored per scan: more reach faint and small nodules, at a cost per volume.")
@click.option("--types", "types_", default=",".join(DETECTOR_TYPES), show_default=True,
              help="Finding types the classifier scores, comma-separated, nodule first (of: nodule, mass, cavity, "
                   "ground-glass opacity); the others add evidence beside the U-Net's.")
def train_nodules(model_dir, synth_seed, studies, steps, seed, workers, candidates, types_):
    """Train the nodule detector of a ctseg model (candidates on the scan's grid + a patch classifier)."""
    from medsearch.models.evaluate import check_seed_disjoint
    from medsearch.models.nodule_detector import NODULE_FILE
    from medsearch.models.train_nodules import NoduleTrainConfig, build_examples, train_detector

    check_seed_disjoint([synth_seed])
    types = _detector_types(types_)
    config_file, config = _model_config(model_dir)
    if config.get("arch") != "ctseg":
        raise ConfigError(f"'{model_dir}' holds a {config.get('arch')!r} model; the nodule detector is part of ctseg.",
                          "Train a ctseg model first ('medsearch train --arch ctseg').")
    examples = build_examples(synth_seed, studies, workers=workers, max_candidates=candidates, types=types)
    detector, summary = train_detector(examples, NoduleTrainConfig(steps=steps, seed=seed, max_candidates=candidates))
    summary = {**summary, "synth_seed": synth_seed, "studies": studies}
    detector.summary = summary
    detector.save(model_dir / NODULE_FILE)
    _record_in_config(config_file, config, "nodule_detector", summary)
    val = summary["val"]
    click.echo(f"trained the nodule detector in {summary['seconds']:.0f} s on {summary['train_studies']} studies "
               f"({summary['train_positives']} nodule candidates of {summary['train_candidates']}): validation "
               f"candidate AUC {val['candidate_auc']:.3f}, study AUC {val['study_auc']:.3f}; written to "
               f"{model_dir / NODULE_FILE}")


@cli.command("calibrate-nodules")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--candidates", required=True, type=click.IntRange(min=8, max=512),
              help="Candidates to score per scan from now on; the calibration is refitted for this number.")
@click.option("--synth-seed", default=1404, show_default=True,
              help="Seed of the synthetic studies the calibration is fitted on (9000-9999 are refused).")
@click.option("--studies", default=300, show_default=True, type=click.IntRange(min=8),
              help="Synthetic studies to generate, planned as train-nodules plans them.")
@click.option("--workers", default=2, show_default=True, help="Processes that generate synthetic studies.")
def calibrate_nodules(model_dir, candidates, synth_seed, studies, workers):
    """Score more (or fewer) candidates per scan with a trained nodule detector, its calibration refitted."""
    from medsearch.models.evaluate import check_seed_disjoint
    from medsearch.models.nodule_detector import NODULE_FILE, NoduleDetector
    from medsearch.models.train_nodules import build_examples, recalibrate_detector

    check_seed_disjoint([synth_seed])
    config_file, config = _model_config(model_dir)
    detector = NoduleDetector.load(model_dir)
    if detector is None:
        raise ConfigError(f"'{model_dir}' holds no nodule detector ({NODULE_FILE}).",
                          "Train one first ('medsearch train-nodules MODEL_DIR').")
    before = detector.max_candidates
    examples = build_examples(synth_seed, studies, workers=workers, max_candidates=candidates, types=detector.types)
    detector.max_candidates = candidates
    val = recalibrate_detector(detector, examples)
    detector.summary = {**(detector.summary or {}),
                        "calibrated": {"candidates": candidates, "previous_candidates": before,
                                       "synth_seed": synth_seed, "studies": studies,
                                       "scale": round(detector.scale, 4), "offset": round(detector.offset, 4),
                                       "calibration": {t: [round(a, 4), round(b, 4)]
                                                       for t, (a, b) in detector.calibration.items()},
                                       "val": val}}
    detector.save(model_dir / NODULE_FILE)
    _record_in_config(config_file, config, "nodule_detector", detector.summary)
    click.echo(f"the nodule detector now scores {candidates} candidates per scan (was {before}); calibration "
               f"refitted on {len(examples.has)} studies of seed {synth_seed}: candidate AUC "
               f"{val['candidate_auc']:.3f}, study AUC {val['study_auc']:.3f}; written to {model_dir / NODULE_FILE}")


@cli.command("combine-nodules")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("others", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
def combine_nodules(model_dir, others):
    """Average other model folders' nodule detectors into MODEL_DIR's (an ensemble of their networks)."""
    from medsearch.models.nodule_detector import NODULE_FILE, NoduleDetector

    config_file, config = _model_config(model_dir)
    detector = NoduleDetector.load(model_dir)
    if detector is None:
        raise ConfigError(f"'{model_dir}' holds no nodule detector ({NODULE_FILE}).",
                          "Train one first ('medsearch train-nodules MODEL_DIR').")
    joined = []
    for other_dir in others:
        other = NoduleDetector.load(other_dir)
        if other is None:
            raise ConfigError(f"'{other_dir}' holds no nodule detector ({NODULE_FILE}).",
                              f"Train one there first ('medsearch train-nodules {other_dir}').")
        try:
            detector.add_member(other)
        except ValueError as exc:
            raise ConfigError(f"The nodule detector of '{other_dir}' cannot join that of '{model_dir}': {exc}",
                              "Combine detectors trained with the same --types and another --seed or "
                              "--candidates.") from None
        summary = other.summary or {}
        joined.append({k: summary[k] for k in ("synth_seed", "studies", "steps", "train_candidates",
                                               "train_positives", "val") if k in summary}
                      | {"trained_candidates": int(summary.get("trained_candidates", other.max_candidates)),
                         "networks": len(other.networks())})
    detector.summary = {**(detector.summary or {}),
                        "members": [*(detector.summary or {}).get("members", []), *joined]}
    detector.save(model_dir / NODULE_FILE)
    _record_in_config(config_file, config, "nodule_detector", detector.summary)
    click.echo(f"the nodule detector of {model_dir} now averages {len(detector.networks())} networks over its "
               f"{detector.max_candidates} candidates per scan; written to {model_dir / NODULE_FILE}. Measure it "
               "('bench/bench_model.py --model DIR') before you ship it.")


@cli.command("train-regions")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--synth-seed", default=1303, show_default=True,
              help="Seed of the synthetic studies the classifier learns from (9000-9999 are refused).")
@click.option("--studies", default=1200, show_default=True, type=click.IntRange(min=8),
              help="Training studies to generate, with an atelectasis, a mass, a consolidation or nothing forced "
                   "in, in turn.")
@click.option("--calibration-studies", default=600, show_default=True, type=click.IntRange(min=8),
              help="Further studies, as the archive plans them, for the calibration and the validation numbers.")
@click.option("--steps", default=3000, show_default=True, type=click.IntRange(min=1),
              help="Optimisation steps of the classifier.")
@click.option("--seed", default=0, show_default=True, help="Seed of initialisation and sampling.")
@click.option("--workers", default=2, show_default=True, help="Processes that generate synthetic studies.")
def train_regions(model_dir, synth_seed, studies, calibration_studies, steps, seed, workers):
    """Train the region classifier of a ctseg model (masses, consolidations, atelectasis by shape)."""
    from medsearch.models.evaluate import check_seed_disjoint
    from medsearch.models.nodule_detector import NODULE_FILE
    from medsearch.models.region_classifier import REGION_FILE
    from medsearch.models.train_regions import (RegionTrainConfig, build_examples, calibration_plan,
                                                train_regions as fit, training_plan)

    check_seed_disjoint([synth_seed])
    config_file, config = _model_config(model_dir)
    if config.get("arch") != "ctseg" or not (model_dir / NODULE_FILE).exists():
        raise ConfigError(f"'{model_dir}' holds no ctseg model with a nodule detector; the region classifier "
                          "works on the detector's grid and lung mask.",
                          f"Train the detector first ('medsearch train-nodules {model_dir}').")
    train = build_examples(synth_seed, training_plan(studies), workers=workers)
    calib = build_examples(synth_seed, calibration_plan(calibration_studies, studies), workers=workers,
                           desc="calibration components")
    clf, summary = fit(train, calib, RegionTrainConfig(steps=steps, seed=seed))
    summary = {**summary, "synth_seed": synth_seed, "studies": studies}
    clf.summary = summary
    clf.save(model_dir / REGION_FILE)
    _record_in_config(config_file, config, "region_classifier", summary)
    val = "; ".join(f"{t} study AUC {v['study_auc']:.3f}" for t, v in summary["val"].items()
                    if v["study_auc"] is not None)
    click.echo(f"trained the region classifier in {summary['seconds']:.0f} s on {summary['train_studies']} studies "
               f"({summary['train_components']} components); validation on {summary['calibration_studies']} "
               f"studies: {val}; written to {model_dir / REGION_FILE}")


@cli.command("fit-region-merge")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--archive", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A labelled synthetic archive ('medsearch synth OUT --seed S' with a training seed, 1000-1999), "
                   "planned as the archive plans studies.")
@click.option("--types", "types_", default="consolidation", show_default=True,
              help="Region types whose presence the merge decides, comma-separated (of: atelectasis, mass, "
                   "consolidation); the others keep their fixed rule.")
@click.option("--c", "c", default=0.1, show_default=True, type=click.FloatRange(min=1e-6),
              help="Inverse strength of the regression's L2 penalty.")
@click.option("--workers", default=2, show_default=True, help="Processes that read and detect the studies.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep the canonical volumes and the detector's evidence here for another run (default: a "
                   "temporary folder, removed afterwards).")
def fit_region_merge(model_dir, archive, types_, c, workers, cache_dir):
    """Fit the learned merge of the U-Net's and the region classifier's presences (stored in regions.pt)."""
    import tempfile

    from medsearch.errors import InputError
    from medsearch.models import registry
    from medsearch.models.data import load_archive
    from medsearch.models.region_classifier import REGION_FILE, REGION_TYPES
    from medsearch.models.train_merge import fit_merge, merge_inputs

    types = tuple(t.strip() for t in types_.split(",") if t.strip())
    if not types or any(t not in REGION_TYPES for t in types) or len(set(types)) != len(types):
        raise ConfigError(f"--types {types_!r} is not a list of region types.",
                          f"Pass some of {', '.join(REGION_TYPES)}, e.g. --types consolidation.")
    config_file, config = _model_config(model_dir)
    if not (model_dir / REGION_FILE).exists():
        raise ConfigError(f"'{model_dir}' holds no region classifier ({REGION_FILE}); the merge reads its presences.",
                          f"Train one first ('medsearch train-regions {model_dir}').")
    if not (archive / "labels.jsonl").exists():
        raise InputError(f"'{archive}' holds no labels.jsonl: the merge is fitted on a labelled synthetic archive.",
                         "Generate one with 'medsearch synth OUT --studies 800 --seed S' (S in 1000-1999).")
    encoder = registry.Encoder(model_dir)
    with tempfile.TemporaryDirectory(prefix="medsearch-merge-") as tmp:
        studies = load_archive(archive, cache_dir=cache_dir or Path(tmp), detector=encoder.nodule_detector,
                               spacing_mm=encoder.config["canonical_spacing_mm"],
                               shape=encoder.config["canonical_shape"], workers=max(1, workers))
        unet, mine, labels = merge_inputs(encoder, studies)
    try:
        merge, summary = fit_merge(unet, mine, labels, types, c)
    except ValueError as exc:
        raise InputError(f"The merge cannot be fitted on '{archive}': {exc}.",
                         "Fit it on more studies ('medsearch synth OUT --studies 800').") from None
    classifier = encoder.nodule_detector.regions
    classifier.merge = merge
    classifier.save(model_dir / REGION_FILE)
    config["region_classifier"] = {**config.get("region_classifier", {}), "merge": summary}
    # the studies a later stage was fitted on: 'medsearch eval' refuses an archive that holds them, as it refuses
    # the tower's training studies ('train_study_keys')
    config["fit_study_keys"] = sorted(set(config.get("fit_study_keys", [])) | {s.key for s in studies})
    config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    fit = "; ".join(f"{t} lobe AP {v['lobe_ap_fixed_rule']:.3f} -> {v['lobe_ap_merge']:.3f} ({v['lobes_with']} lobes)"
                    for t, v in summary["fit"].items())
    click.echo(f"fitted the learned merge on {len(studies)} studies (in-sample: {fit}); written to "
               f"{model_dir / REGION_FILE}. Measure it ('bench/bench_model.py --model DIR') before you ship it.")


@cli.command("eval")
@click.option("--archive", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True)
@click.option("--model", "model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None)
@click.option("--json", "as_json", is_flag=True)
def eval_(archive, model_dir, as_json):
    """Evaluate report->volume and phrase->volume retrieval on an archive."""
    from medsearch.models.evaluate import evaluate_archive, format_table

    result = evaluate_archive(archive, model_dir, progress=not as_json)
    if as_json:
        _echo_json(result)
    else:
        click.echo(format_table(result))


@cli.command()
@click.argument("text")
@click.option("-k", default=10, show_default=True, help="Number of studies.")
@click.option("--json", "as_json", is_flag=True)
@click.option("--as", "as_user", default=None, envvar="MEDSEARCH_USER",
              help="Act as this account (its role and allowed sites apply; default: the local operator).")
@click.option("--reveal", is_flag=True, help="Add original StudyInstanceUID and accession (admin, audited).")
@click.option("--reason", default=None, help="Why the identifiers are revealed (required with --reveal).")
@click.pass_context
def search(ctx, text, k, as_json, as_user, reveal, reason):
    """Search the archive with an English or Chinese phrase."""
    from medsearch.search_cli import acting_user, check_reveal, format_table, reveal_results, run_search

    inst = _instance(ctx)
    user = acting_user(inst, as_user)
    if reveal:
        check_reveal(user, reason)
    out = run_search(inst, text, k, user)
    if reveal:
        reveal_results(inst, out, user, reason)
    if as_json:
        _echo_json({"query": out["query"], "results": out["results"], "total": out["total"],
                    "took_ms": out["took_ms"]})
    else:
        click.echo(format_table(out))


@cli.group(cls=_Group)
def index():
    """The encrypted vector index."""


@index.command("rebuild")
@click.pass_context
def index_rebuild(ctx):
    """Rebuild the index from the embeddings stored in the database."""
    from medsearch.index import rebuild

    stats = rebuild(_instance(ctx))
    click.echo(f"index rebuilt: {stats['kind'] or 'empty'}, {stats['count']} vectors"
               + (f", {stats['unrecoverable']} volumes without a stored embedding (re-encode them)"
                  if stats["unrecoverable"] else ""))


@index.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as JSON.")
@click.pass_context
def index_status(ctx, as_json):
    """Show the index structure, size and memory."""
    from medsearch.index import get_index

    stats = get_index(_instance(ctx)).stats()
    if as_json:
        _echo_json(stats)
    else:
        for key, value in stats.items():
            click.echo(f"{key}: {value}")


@cli.command()
@click.argument("patient")
@click.option("--reason", required=True, help="Why (e.g. the erasure request reference); audited.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def erase(ctx, patient, reason, yes):
    """Erase a patient (by pseudonym): vectors, files, vault records and rows; audited."""
    import getpass

    from medsearch.index.erase import erase_patient

    inst = _instance(ctx)
    if not yes:
        click.confirm("Erase this patient permanently?", abort=True)
    report = erase_patient(inst, patient, actor=f"cli:{getpass.getuser()}", reason=reason)
    click.echo(f"erased: {report.studies} studies, {report.series} series, {report.vectors} vectors, "
               f"{report.vault_records} vault records, {report.files} files")


# --------------------------------------------------------------------------- services
@cli.command()
@click.option("--host", default=None, help="Bind address (default: setting web_host).")
@click.option("--port", default=None, type=int, help="Port (default: setting web_port).")
@click.pass_context
def serve(ctx, host, port):
    """Serve the web page and the REST API with a production WSGI server."""
    from medsearch.web.serve import serve as run_server

    run_server(_instance(ctx), host, port, echo=click.echo)


@cli.command()
@click.option("--port", default=None, type=int, help="Port (default: setting scp_port).")
@click.option("--ae-title", default=None, help="AE title (default: setting scp_ae_title).")
@click.pass_context
def scp(ctx, port, ae_title):
    """Run the DICOM Storage SCP (C-ECHO, C-STORE) that feeds ingest."""
    from medsearch.pacs.scp import run_scp

    run_scp(_instance(ctx), port=port, ae_title=ae_title)


@cli.command()
@click.option("--once", is_flag=True, help="Process the queue once, then exit.")
@click.option("--retry-dead", is_flag=True, help="Queue the dead-lettered jobs again (after fixing the cause).")
@click.pass_context
def worker(ctx, once, retry_dead):
    """Ingest queued series, with retries and a dead-letter list."""
    from medsearch.pacs import queue
    from medsearch.pacs.worker import run_worker

    inst = _instance(ctx)
    if retry_dead:
        click.echo(f"requeued {queue.retry_dead(inst)} dead-lettered jobs")
        if once:
            return
    report = run_worker(inst, once=once)
    click.echo("worker: " + ", ".join(f"{k}={v}" for k, v in report.as_dict().items()))


# --------------------------------------------------------------------------- governance
@cli.group(cls=_Group)
def audit():
    """The tamper-evident audit log."""


@audit.command("verify")
@click.pass_context
def audit_verify(ctx):
    """Verify the hash chain; name the first bad entry."""
    from medsearch.audit.log import verify_chain

    inst = _instance(ctx)
    result = verify_chain(inst.sessions, inst.keyring.secret("audit"))
    if result.ok:
        click.echo(f"audit chain ok: {result.checked} entries verified")
        return
    click.echo(f"audit chain BROKEN at entry {result.first_bad_id}: {result.problem} "
               f"({result.checked} entries before it verified)", err=True)
    ctx.exit(6)


@audit.command("export")
@click.option("--format", "fmt", type=click.Choice(["csv", "json", "atna"]), default="json", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="File (default: stdout).")
@click.pass_context
def audit_export(ctx, fmt, out):
    """Export audit events as CSV, JSON or DICOM ATNA (PS3.15 A.5) messages."""
    from medsearch.audit.export import export_events

    inst = _instance(ctx)
    if out is None:
        n = export_events(inst, fmt, sys.stdout)
    else:
        with out.open("w", encoding="utf-8", newline="") as fh:
            n = export_events(inst, fmt, fh)
    click.echo(f"exported {n} audit events as {fmt}", err=True)


@cli.group(cls=_Group)
def users():
    """Local user accounts."""


@users.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(["radiologist", "compliance", "admin", "pacs"]), required=True)
@click.pass_context
def users_add(ctx, name, role):
    """Add a user; the password is read from stdin when it is not a TTY."""
    from medsearch.accounts import add_user

    inst = _instance(ctx)
    if sys.stdin.isatty():
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    add_user(inst, name, password, role, actor=_operator())
    click.echo(f"user '{name}' added with role {role}")


@users.command("list")
@click.pass_context
def users_list(ctx):
    """List users and their roles."""
    from medsearch.accounts import list_users

    for u in list_users(_instance(ctx)):
        state = "disabled" if u["disabled"] else ("locked" if u["locked"] else "active")
        click.echo(f"{u['name']:<24} {u['role']:<12} {state}")


@users.command("disable")
@click.argument("name")
@click.pass_context
def users_disable(ctx, name):
    """Disable a user."""
    from medsearch.accounts import disable_user

    disable_user(_instance(ctx), name, actor=_operator())
    click.echo(f"user '{name}' disabled")


@cli.group(cls=_Group)
def tokens():
    """API tokens for PACS and integrations."""


@tokens.command("create")
@click.argument("name")
@click.option("--role", type=click.Choice(["radiologist", "compliance", "admin", "pacs"]), default="pacs",
              show_default=True)
@click.option("--days", type=int, default=None, help="Lifetime in days (default: setting token_days).")
@click.pass_context
def tokens_create(ctx, name, role, days):
    """Create a token; it is printed once, as the last line."""
    from medsearch.accounts import create_token

    token = create_token(_instance(ctx), name, role, days, actor=_operator())
    click.echo(f"token '{name}' ({role}) created; it is shown once, store it now:")
    click.echo(token)


@tokens.command("revoke")
@click.argument("name")
@click.pass_context
def tokens_revoke(ctx, name):
    """Revoke a token."""
    from medsearch.accounts import revoke_token

    n = revoke_token(_instance(ctx), name, actor=_operator())
    click.echo(f"revoked {n} token(s) named '{name}'")


@tokens.command("list")
@click.pass_context
def tokens_list(ctx):
    """List tokens (names, roles, expiry, state; never the tokens)."""
    from medsearch.accounts import list_tokens

    for t in list_tokens(_instance(ctx)):
        click.echo(f"{t['name']:<24} {t['role']:<12} {t['state']:<8} expires {t['expires_at']}")


@cli.group(cls=_Group)
def keys():
    """Key management."""


@keys.command("rotate")
@click.pass_context
def keys_rotate(ctx):
    """Rotate the master key; resumable, loses no vault record."""
    from medsearch.dicom.rotate import rotate

    report = rotate(_instance(ctx), actor="cli")
    click.echo(report.summary())
    ctx.exit(0 if report.complete else 1)


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="medsearch")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""Train the ctseg image tower on a GPU machine in one prepared run (issue 6, deliverable 7).

The lent GPU machine has minutes, not hours, and no MiniLM weights, so this run
does the part that needs the GPU, stage 1 (the image tower on voxel targets),
and stops (``medsearch train --image-only``); the later stages (calibration,
clause head, projection, reranker) are refitted on the CPU afterwards with
``medsearch train --init TOWER --steps 0``.  Within ``--budget-s`` seconds it:

1. checks that the GPU trains at all (a few steps on four studies) and stops at
   once if not, so a broken environment costs seconds;
2. generates the dense cache of the training studies on every CPU core;
3. times a few steps of the real batch size and sets the number of steps to
   what the rest of the budget holds (recorded, so the run can be repeated with
   ``medsearch train --steps N``);
4. trains (``train_ctseg(..., image_only=True)``, batches assembled on the GPU)
   and writes the model folder's ``model.pt`` and ``config.json`` plus
   ``gpu_run.json`` to ``--out``.

    python bench/gpu_tower.py --out DIR [--init medsearch/models/default] [--seeds 1101 1102]
        [--studies 900] [--batch-size 16] [--budget-s 520] [--workers 15]

cuDNN's autotuner picks the convolution algorithms, so a GPU run is deterministic
in its data and batches but not bit-identical from one run to the next.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from medsearch.models.dense_data import build_dense_cache  # noqa: E402
from medsearch.models.slot_model import SEG_GRIDS, SlotModel  # noqa: E402
from medsearch.models.train_seg import DeviceBatches, SegConfig, load_dense, seg_loss  # noqa: E402
from medsearch.models.train_slots import SlotTrainConfig, train_ctseg, warm_start  # noqa: E402


def _steps(model, data, dev, batch_size: int, n: int) -> float:
    """Seconds per optimisation step of ``model`` at ``batch_size`` (median of ``n`` after a warm-up)."""
    import random

    net = model.image.to(dev).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    batches, rng, times = DeviceBatches(data, dev), random.Random(0), []
    for i in range(n + 3):
        t0 = time.perf_counter()
        batch = batches.batch([rng.randrange(len(data)) for _ in range(batch_size)], rng)
        maps, _ = net(batch["x"])
        presence = net.slots(maps)["presence"]
        loss, _ = seg_loss(maps, presence, batch, SegConfig())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if not torch.isfinite(loss):
            raise RuntimeError(f"the loss is {loss.item()} at probe step {i}")
        if i >= 3:
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def smoke(args, report: dict, work: Path, g, dev) -> None:
    """A few steps on four studies: a broken environment stops the run in seconds."""
    paths = build_dense_cache(work / "smoke", args.seeds[0], 4, g.spacing_mm, g.shape, workers=2, shard=4,
                              progress=False)
    torch.manual_seed(0)
    model = SlotModel()
    warm_start(model, args.init)
    report["smoke_step_s"] = round(_steps(model, load_dense(paths), dev, 2, 2), 4)
    print(f"smoke ok on {report['device']}: {report['smoke_step_s']} s per step of 2", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=Path("/tmp/gpu_tower"), help="cache and model folder")
    ap.add_argument("--init", type=Path, default=ROOT / "medsearch" / "models" / "default")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1101, 1102])
    ap.add_argument("--studies", type=int, default=900, help="studies per seed")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--budget-s", type=float, default=520.0, help="wall-clock seconds for the whole run")
    ap.add_argument("--reserve-s", type=float, default=45.0, help="kept for loading, validation and saving")
    ap.add_argument("--max-steps", type=int, default=12000)
    ap.add_argument("--no-smoke", action="store_true", help="skip step 1 (an environment known to work)")
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    args = ap.parse_args()
    t_start = time.perf_counter()
    deadline = t_start + args.budget_s
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = dev.type == "cuda"
    report: dict = {"device": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu",
                    "torch": torch.__version__, "args": {k: str(v) for k, v in vars(args).items()}}
    g = SEG_GRIDS["coarse"]
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)

    def save_report():
        report["seconds"] = round(time.perf_counter() - t_start, 1)
        (args.out / "gpu_run.json").write_text(json.dumps(report, indent=2) + "\n")

    # 1. smoke: the environment trains at all (seconds, on four studies)
    if not args.no_smoke:
        smoke(args, report, work, g, dev)
        save_report()

    # 2. the training studies' dense cache on every core (train_ctseg reads it back from <work>/tower/cache)
    t0 = time.perf_counter()
    tower = work / "tower"
    paths = []
    for seed in args.seeds:
        paths += build_dense_cache(tower / "cache", seed, args.studies, g.spacing_mm, g.shape,
                                   workers=args.workers)
    report["cache_s"] = round(time.perf_counter() - t0, 1)
    save_report()

    # 3. the step count the rest of the budget holds
    data = load_dense(paths[:4])
    torch.manual_seed(0)
    probe = SlotModel()
    warm_start(probe, args.init)
    step_s = _steps(probe, data, dev, args.batch_size, 12)
    left = deadline - time.perf_counter() - args.reserve_s
    steps = max(1, min(args.max_steps, int(left / step_s)))
    report.update(step_s=round(step_s, 4), steps=steps, train_budget_s=round(left, 1))
    print(f"{step_s * 1000:.0f} ms per step of {args.batch_size}; {left:.0f} s left: {steps} steps", flush=True)
    save_report()
    del data, probe

    # 4. train the tower (the --init model's later stages ride along, marked image_only)
    seg = SegConfig(steps=steps, batch_size=args.batch_size, lr=args.lr, warmup=min(100, steps // 10 + 1),
                    seed=0, eval_every=max(1, steps // 10), checkpoint_every=max(1, steps // 5))
    summary = train_ctseg(tower, args.seeds, args.studies, cfg=SlotTrainConfig(seg=seg, image_only=True),
                          workers=args.workers, init=args.init)
    report["image"] = summary["image"]
    for name in ("model.pt", "config.json"):
        shutil.copyfile(tower / name, args.out / name)
    save_report()
    hist = summary["image"].get("history") or []
    print("\nstep   loss    val slot F1   exact")
    for h in hist:
        print(f"{h['step']:>5}  {h['loss']:.4f}  {h['slot_f1']:.4f}       {h['exact']:.4f}")
    print(f"\n{steps} steps of {args.batch_size} in {summary['image']['seconds']} s on {report['device']}; "
          f"cache {report['cache_s']} s; whole run {report['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

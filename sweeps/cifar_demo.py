"""``make cifar-demo``: the CIFAR-10 chain at CPU scale, end to end, in a few minutes.

1. data: ``--cifar-root`` (a folder holding ``cifar-10-batches-py/``), or a small set this
   script writes once in the official format (``dataroom.synthetic_sets``: photograph-like
   32×32 images whose class is an object's shape and colour) under ``<out>/data``;
2. ``make sweep``'s path: ``sweeps/specs/cifar10.yaml`` for ``--method`` through the local
   launcher, with the recipe narrowed to a CPU (ResNet-18 CIFAR variant at ``--width``,
   smaller heads, ``--epochs``, ``--batch``) and the ``cifar10`` eval suite chained (its
   linear protocol shortened to ``--linear-epochs``), records in ``<out>/records``;
3. ``results.tables --reported``: the run's row beside solo-learn's published CIFAR-10 rows.

The numbers of a few CPU minutes on a small set say that the chain works, not how good a
method is: the reported rows are 1000 GPU epochs on the real CIFAR-10.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

SPEC = Path(__file__).resolve().parent / "specs" / "cifar10.yaml"
# Narrowed heads (the recipe's are 2048–8192 wide); each keeps its method's shape contract.
HEADS = {
    "vicreg": ["method.projector=512-512-512"],
    "barlow_twins": ["method.projector=512-512-512"],
    "simclr": ["method.projector=512-128"],
    "byol": ["method.projector=512-128", "method.predictor=512-128"],
    "simsiam": ["method.projector=512-512-512", "method.predictor=128-512"],
}


def ensure_data(folder: Path, train: int, test: int, seed: int = 0) -> Path:
    """Write the small CIFAR-10-format set into ``folder`` unless it is already there."""
    from dataroom.synthetic_sets import write_tiny_cifar

    stamp = folder / "demo-data.json"
    want = {"train": train, "test": test, "seed": seed, "version": 1}
    if stamp.is_file() and json.loads(stamp.read_text()) == want:
        return folder
    t0 = time.perf_counter()
    write_tiny_cifar(folder, "cifar10", train=train, test=test, seed=seed)
    stamp.write_text(json.dumps(want))
    print(f"[cifar-demo] wrote {train} + {test} CIFAR-10-format images to {folder} "
          f"({time.perf_counter() - t0:.0f} s)")
    return folder


def main(method: str = "vicreg", cifar_root: str = "", out: str = "runs/cifar-demo",
         train: int = 2000, test: int = 500, epochs: int = 10, width: int = 8, batch: int = 128,
         linear_epochs: int = 10, overrides: list[str] | None = None) -> int:
    """Data → pretraining + chained eval (local launcher) → tables; returns an exit code."""
    from results import tables
    from sweeps.launch import launch, plan
    from sweeps.spec import SpecError

    if method not in HEADS:
        print(f"error: --method must be one of {', '.join(HEADS)}", file=sys.stderr)
        return 2
    out_dir = Path(out)
    data = Path(cifar_root) if cifar_root else ensure_data(out_dir / "data", train, test)
    records = out_dir / "records"
    milestones = ",".join(str(max(1, round(linear_epochs * f))) for f in (0.6, 0.8))
    extra = [f"cifar10_linear.epochs={linear_epochs}", f"cifar10_linear.milestones={milestones}"]
    items = [f"data.root={data}", f"backbone.width={width}", f"train.epochs={epochs}",
             f"train.batch_size={batch}", "train.tensorboard=false", *HEADS[method],
             f"eval.out={records.resolve()}", f"eval.extra_args={json.dumps(extra)}",
             f"slurm.cpus_per_task={os.cpu_count() or 1}", *(overrides or [])]
    t0 = time.perf_counter()
    try:
        sweep = plan(method, SPEC, "local", items, name=f"cifar-demo-{method}", root=out_dir)
    except SpecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    run = sweep.runs[0]
    print(f"[cifar-demo] {method} on {data}: pretraining then `eval/run_all.py --suite cifar10` "
          f"(logs: {sweep.logs})")
    code = launch(sweep, wait=True)
    if code != 0 or not (run.folder / "backbone.pth").exists():
        print(f"[cifar-demo] failed (exit {code}); see `make sweep-status SWEEP={sweep.folder}` "
              f"and {sweep.logs}", file=sys.stderr)
        return code or 1
    tables.main(records=records, runs=sweep.folder, out=out_dir / "tables", reported=True)
    table = out_dir / "tables" / "cifar10_paper.md"
    if table.exists():
        print(table.read_text())
    print(f"[cifar-demo] done in {(time.perf_counter() - t0) / 60:.1f} min: run {run.folder}, "
          f"records {records}, tables {out_dir / 'tables'}")
    return 0


def cli(argv: list[str] | None = None) -> int:
    """Command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", default="vicreg", choices=sorted(HEADS))
    p.add_argument("--cifar-root", default="", help="folder holding cifar-10-batches-py/ "
                   "(default: write a small set under <out>/data)")
    p.add_argument("--out", default="runs/cifar-demo")
    p.add_argument("--train", type=int, default=2000, help="images written for training")
    p.add_argument("--test", type=int, default=500, help="images written for testing")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--width", type=int, default=8, help="ResNet-18 base width (64 = full)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--linear-epochs", type=int, default=10)
    p.add_argument("overrides", nargs="*", help="key=value: run config keys, slurm.*, eval.*")
    args = p.parse_args(argv)
    return main(args.method, args.cifar_root, args.out, args.train, args.test, args.epochs,
                args.width, args.batch, args.linear_epochs, args.overrides)


if __name__ == "__main__":
    sys.exit(cli())

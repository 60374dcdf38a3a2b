"""``make demo``: the whole chain on Fashion-MNIST on a CPU (10.6-11.8 min measured on 2 cores).

1. ``make sweep`` of ``sweeps/specs/demo.yaml`` (SimCLR, local processes; a re-run
   resumes or skips the finished run);
2. frozen-feature probes on the same 10k labelled training images and the 10k test
   images:

- the pretrained backbone (frozen, eval mode): a linear probe and kNN (k=20, T=0.07);
- the same backbone at its random initialisation: the same probes;
- a logistic regression on raw pixels;

3. ``eval/run_all.py --suite mini`` on the backbone (result records);
4. ``results.tables`` and ``results.plots`` on those records and the run folder.

The linear probe is the battery's fast protocol (``sweeps.probe.linear_probe``): a
softmax head on standardised features, a grid of learning rates and weight decays
trained in one pass, chosen on a held-out 10 % of the labelled images (never on test).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from backbones import BACKBONES
from eval.checkpoint import load_backbone
from sweeps.probe import labelled_splits, linear_probe, probe_backbone
from trainer.config import load_saved_config
from trainer.io import atomic_write_text

SPEC = Path(__file__).parent / "specs" / "demo.yaml"


def pretrain(overrides: list[str]) -> Path:
    """Launch the demo spec through the sweep launcher (local processes), with progress."""
    import threading

    from sweeps.launch import launch, plan
    from trainer.progress import progress_bar

    # demo.yaml sets no slurm.cpus_per_task: the local run gets all of this machine's cores
    sweep = plan(spec=SPEC, cluster="local", overrides=list(overrides))
    run = sweep.runs[0]
    print(f"[demo] 1/4 pretraining {run.cfg.method.name} ({run.cfg.backbone.name}) on "
          f"{run.cfg.data.name} through the sweep launcher")
    total = None
    result: dict[str, int] = {}
    worker = threading.Thread(target=lambda: result.setdefault("rc", launch(sweep, wait=True)))
    worker.start()
    metrics = run.folder / "metrics.jsonl"
    with progress_bar(desc=f"pretraining {run.folder.name}", unit="step") as bar:
        while worker.is_alive():
            worker.join(timeout=2.0)
            if total is None and (run.folder / "config.yaml").exists():
                total = yaml.safe_load((run.folder / "config.yaml").read_text())["total_steps"]
                bar.total = total
            if metrics.exists():
                steps = [json.loads(line) for line in metrics.read_text().splitlines()[-50:]
                         if line.endswith("}")]
                steps = [r for r in steps if r.get("kind") == "step"]
                if steps:
                    last = steps[-1]
                    bar.set_postfix(loss=f"{last['loss']:.2f}",
                                    img_s=f"{last.get('img_per_s', 0):.0f}", refresh=False)
                    bar.update(last["step"] - bar.n)  # prints once, at most every interval
    if result.get("rc", 1) != 0 or not (run.folder / "backbone.pth").exists():
        raise SystemExit(f"[demo] pretraining failed; see `make sweep-status SWEEP={sweep.name}` "
                         f"and {sweep.logs}")
    return run.folder


def compare(run_dir: Path, labelled: int) -> dict[str, dict[str, float]]:
    """Issue 2's comparison: pretrained vs the same backbone at random init vs raw pixels."""
    cfg = load_saved_config(run_dir / "config.yaml")
    train_set, test_set, crop = labelled_splits(cfg, labelled)
    backbone, meta = load_backbone(run_dir / "backbone.pth")
    torch.manual_seed(cfg.train.seed)
    random_init = BACKBONES.build(meta["backbone"], **meta.get("backbone_kwargs", {})).eval()
    rows = {
        f"{cfg.method.name} pretrained": probe_backbone(backbone, train_set, test_set, crop),
        "same backbone, random init": probe_backbone(random_init, train_set, test_set, crop),
    }
    flat = lambda s: s.images.reshape(len(s), -1).float() / 255  # noqa: E731
    raw, c = linear_probe(flat(train_set), train_set.labels, flat(test_set), test_set.labels)
    rows["raw pixels"] = {"linear": raw, "knn": float("nan"), "chosen": c}
    print(f"\nFashion-MNIST test accuracy (%): probes fit on {len(train_set)} labelled training "
          f"images, evaluated on {len(test_set)} test images; backbone {meta['backbone']} "
          f"{meta.get('backbone_kwargs', {})}")
    print(f"  {'features':30s} {'linear':>7s} {'kNN k=20':>9s}")
    for name, r in rows.items():
        knn = "—" if np.isnan(r["knn"]) else f"{r['knn']:.1f}"
        print(f"  {name:30s} {r['linear']:7.1f} {knn:>9s}")
    return rows


def main(overrides: list[str], labelled: int = 10_000, suite: str = "mini",
         records: str = "results/records", out: str = "results/demo") -> int:
    """The whole chain: sweep → comparison probes → eval suite → tables and plots."""
    from eval import run_all
    from results import plots, tables

    t0 = time.perf_counter()
    run_dir = pretrain(overrides)
    t_train = time.perf_counter() - t0
    print("[demo] 2/4 frozen-feature probes: pretrained vs random init vs raw pixels")
    rows = compare(run_dir, labelled)
    print(f"[demo] 3/4 evaluation battery, --suite {suite}")
    run_all.main(str(run_dir / "backbone.pth"), suite=suite, out=records)
    print("[demo] 4/4 tables and plots")
    tables.main(records=records, runs=run_dir.parent, out=f"{out}/tables")
    plots.main(runs=run_dir.parent, records=records, out=f"{out}/plots")
    index = Path(out) / "tables" / "index.md"
    if index.exists():
        print(index.read_text())
    total = time.perf_counter() - t0
    summary = {"rows": rows, "pretrain_s": t_train, "total_s": total, "run_dir": str(run_dir),
               "labelled": labelled}
    atomic_write_text(Path(out) / "demo_results.json", json.dumps(summary, indent=2))
    print(f"\n[demo] pretraining {t_train / 60:.1f} min, whole demo {total / 60:.1f} min")
    print(f"[demo] run folder {run_dir}; records {records}/; tables {out}/tables/; "
          f"plots {out}/plots/")
    return 0


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_args(argv)
    return main(args.overrides)


if __name__ == "__main__":
    sys.exit(cli())

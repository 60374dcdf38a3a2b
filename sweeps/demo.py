"""``make demo``: the whole chain on Fashion-MNIST on a CPU, in about 15 minutes.

1. ``make sweep`` of ``sweeps/specs/demo.yaml`` (VICReg, local processes; a re-run
   resumes or skips the finished run);
2. frozen-feature probes on the same 10k labelled training images and the 10k test
   images:

- the pretrained backbone (frozen, eval mode): a linear probe and kNN (k=20, T=0.07);
- the same backbone at its random initialisation: the same probes;
- a logistic regression on raw pixels;

3. ``eval/run_all.py --suite mini`` on the backbone (result records);
4. ``results.tables`` and ``results.plots`` on those records and the run folder.

The linear probe is scikit-learn's multinomial logistic regression on standardised
features, its C chosen on a held-out 10 % of the labelled images (never on test).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from backbones import BACKBONES
from eval.checkpoint import load_backbone
from eval.features import extract_features
from eval.knn import knn_accuracy
from trainer.config import load_saved_config
from trainer.datasets import DATASETS
from trainer.io import atomic_write_text

SPEC = Path(__file__).parent / "specs" / "demo.yaml"


def logistic_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                   test_y: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """Test accuracy (%) of a logistic regression whose C is chosen on a 10 % holdout."""
    scaler = StandardScaler().fit(train_x)
    tr, te = scaler.transform(train_x), scaler.transform(test_x)
    idx = np.random.default_rng(seed).permutation(len(tr))
    hold, fit = idx[: len(tr) // 10], idx[len(tr) // 10:]
    best_c, best = 1.0, -1.0
    for c in (0.01, 0.1, 1.0):
        clf = LogisticRegression(C=c, max_iter=300).fit(tr[fit], train_y[fit])
        acc = clf.score(tr[hold], train_y[hold])
        if acc > best:
            best_c, best = c, acc
    clf = LogisticRegression(C=best_c, max_iter=500).fit(tr, train_y)
    return 100.0 * clf.score(te, test_y), best_c


def probe_backbone(backbone: torch.nn.Module, train, test, crop: int) -> dict[str, float]:
    """Linear-probe and kNN accuracy (%) of a frozen backbone's pooled features."""
    kw = dict(mean=train.mean, std=train.std, resize=crop, crop=crop)
    f_tr = extract_features(backbone, train.images, **kw)
    f_te = extract_features(backbone, test.images, **kw)
    linear, c = logistic_probe(f_tr.numpy(), train.labels.numpy(), f_te.numpy(),
                               test.labels.numpy())
    knn = knn_accuracy(f_tr, train.labels, f_te, test.labels, k=20, temperature=0.07,
                       num_classes=len(train.classes))
    return {"linear": linear, "knn": knn, "C": c}


def pretrain(overrides: list[str]) -> Path:
    """Launch the demo spec through the sweep launcher (local processes), with progress."""
    import threading

    from tqdm import tqdm

    from sweeps.launch import launch, plan

    cpus = f"slurm.cpus_per_task={os.cpu_count() or 1}"
    sweep = plan(spec=SPEC, cluster="local", overrides=[cpus, *overrides])
    run = sweep.runs[0]
    total = None
    result: dict[str, int] = {}
    worker = threading.Thread(target=lambda: result.setdefault("rc", launch(sweep, wait=True)))
    worker.start()
    metrics = run.folder / "metrics.jsonl"
    with tqdm(desc=f"pretraining {run.folder.name}", unit="step") as bar:
        while worker.is_alive():
            worker.join(timeout=2.0)
            if total is None and (run.folder / "config.yaml").exists():
                total = yaml.safe_load((run.folder / "config.yaml").read_text())["total_steps"]
                bar.total = total
            if metrics.exists():
                steps = [json.loads(line) for line in metrics.read_text().splitlines()[-50:]
                         if line.endswith("}")]
                if steps:
                    last = steps[-1]
                    bar.n = last["step"]
                    bar.set_postfix(loss=f"{last['loss']:.2f}",
                                    img_s=f"{last.get('img_per_s', 0):.0f}")
                    bar.refresh()
    if result.get("rc", 1) != 0 or not (run.folder / "backbone.pth").exists():
        raise SystemExit(f"[demo] pretraining failed; see `make sweep-status SWEEP={sweep.name}` "
                         f"and {sweep.logs}")
    return run.folder


def compare(run_dir: Path, labelled: int) -> dict[str, dict[str, float]]:
    """Issue 2's comparison: pretrained vs the same backbone at random init vs raw pixels."""
    cfg = load_saved_config(run_dir / "config.yaml")
    full = DATASETS.build(cfg.data.name, root=cfg.data.root, split="train")
    train_set = full.subset(min(labelled, len(full)))
    test_set = DATASETS.build(cfg.data.name, root=cfg.data.root, split="test")
    crop = cfg.aug.views[0].crop_size if cfg.aug.views else cfg.aug.crop_size
    backbone, meta = load_backbone(run_dir / "backbone.pth")
    torch.manual_seed(cfg.train.seed)
    random_init = BACKBONES.build(meta["backbone"], **meta.get("backbone_kwargs", {})).eval()
    rows = {
        f"{cfg.method.name} pretrained": probe_backbone(backbone, train_set, test_set, crop),
        "same backbone, random init": probe_backbone(random_init, train_set, test_set, crop),
    }
    flat = lambda s: s.images.reshape(len(s), -1).float().numpy() / 255  # noqa: E731
    raw, c = logistic_probe(flat(train_set), train_set.labels.numpy(), flat(test_set),
                            test_set.labels.numpy())
    rows["raw pixels"] = {"linear": raw, "knn": float("nan"), "C": c}
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
    print("[demo] 1/4 pretraining VICReg on Fashion-MNIST through the sweep launcher")
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

"""Frozen-feature probes of a sweep's finished runs, beside their collapse diagnostics.

    python -m sweeps.probe collapse                       # runs/collapse: every finished run
    python -m sweeps.probe runs/collapse --random-init --labelled 10000
    python -m sweeps.probe demo_search --holdout 10000    # validation, not test


For each run with a ``backbone.pth``: the battery's fast linear protocol and kNN (k = 20,
T = 0.07) on the frozen, pooled features of the first ``labelled`` training images of the
run's own dataset, tested on its test split. The result goes to ``<run>/probe.json``
(atomically) and is reused while the backbone file and ``labelled`` are unchanged, unless
``--force``. The table (Markdown) sets it beside the last epoch's diagnostics from
``metrics.jsonl``: mean per-dimension std of the embeddings, the same of the l2-normalised
embeddings, effective rank (uncentred and centred), and the online probe. ``--random-init``
adds a row per architecture: the same backbone at its initialisation, the baseline that a
collapsed run falls to (or below).

``--holdout N`` tests on the last ``N`` training images instead of the test split: a
validation split for choosing a recipe without looking at test. The run must not have
pretrained on them (``data.num_samples`` at most the training set minus ``N``), and the
probes still fit on the first ``labelled`` images.

The linear protocol: a softmax head on standardised features, a grid of learning rates and
weight decays trained in one pass, the cell chosen on a held-out 10 % of the labelled
images, never on test.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from backbones import BACKBONES
from eval.checkpoint import file_sha256, load_backbone
from eval.features import extract_features
from eval.knn import knn_accuracy
from eval.linear import evaluate, fit_linear_grid
from results.runs import load_run
from sweeps import manifest
from sweeps.status import find_sweeps
from trainer.config import ConfigError, RunConfig, load_saved_config
from trainer.datasets import DATASETS, ImageSet
from trainer.io import atomic_write_text

PROBE_FILE = "probe.json"


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                 test_y: torch.Tensor) -> tuple[float, str]:
    """Test top-1 (%) of the battery's fast linear protocol (grid chosen on a holdout)."""
    result = fit_linear_grid(train_x, train_y, lrs=(0.01, 0.03, 0.1), wds=(0.0, 1e-4, 1e-3),
                             epochs=20, holdout_fraction=0.1)
    return evaluate(result, test_x, test_y)["top1"], f"lr={result.lr:g},wd={result.wd:g}"


def probe_backbone(backbone: torch.nn.Module, train: ImageSet, test: ImageSet,
                   crop: int) -> dict[str, Any]:
    """Linear-probe and kNN accuracy (%) of a frozen backbone's pooled features."""
    kw = dict(mean=train.mean, std=train.std, resize=crop, crop=crop)
    f_tr = extract_features(backbone, train.images, **kw)
    f_te = extract_features(backbone, test.images, **kw)
    linear, chosen = linear_probe(f_tr, train.labels, f_te, test.labels)
    knn = knn_accuracy(f_tr, train.labels, f_te, test.labels, k=20, temperature=0.07,
                       num_classes=len(train.classes))
    return {"linear": linear, "knn": knn, "chosen": chosen}


def labelled_splits(cfg: RunConfig, labelled: int,
                    holdout: int = 0) -> tuple[ImageSet, ImageSet, int]:
    """The first ``labelled`` labelled training images, the test split and the crop of a run
    (a set that pretrains on unlabeled images too, label -1, e.g. STL-10's, skips them).

    ``holdout`` > 0: the last ``holdout`` training images replace the test split (a
    validation split); a :class:`ConfigError` if the run pretrained on any of them or the
    fit images would overlap them.
    """
    full = DATASETS.build(cfg.data.name, root=cfg.data.root, split="train")
    crop = cfg.aug.views[0].crop_size if cfg.aug.views else cfg.aug.crop_size
    if holdout:
        return (*_holdout_splits(cfg, full, labelled, holdout), crop)
    test = DATASETS.build(cfg.data.name, root=cfg.data.root, split="test")
    if bool((full.labels < 0).any()):
        keep = (full.labels >= 0).nonzero().flatten()[:labelled]
        return (ImageSet(full.images[keep], full.labels[keep], full.classes, full.mean,
                         full.std), test, crop)
    return full.subset(min(labelled, len(full))), test, crop


def _holdout_splits(cfg: RunConfig, full: ImageSet, labelled: int,
                    holdout: int) -> tuple[ImageSet, ImageSet]:
    n = len(full)
    if bool((full.labels < 0).any()):
        raise ConfigError(f"--holdout: {cfg.data.name}'s training split has unlabeled images; "
                          "hold out a labelled split instead")
    if not 0 < holdout < n or labelled > n - holdout:
        raise ConfigError(f"--holdout {holdout} with --labelled {labelled}: {cfg.data.name} has "
                          f"{n} training images; the fit and held-out images must not overlap")
    seen = cfg.data.num_samples or n
    if seen > n - holdout:
        raise ConfigError(
            f"--holdout {holdout}: the run pretrained on the first {seen} of {n} training "
            f"images, which includes held-out ones; pretrain with data.num_samples<={n - holdout}")
    rest = ImageSet(full.images[n - holdout:], full.labels[n - holdout:], full.classes,
                    full.mean, full.std)
    return full.subset(labelled), rest


def last_epoch(run_dir: Path) -> dict[str, Any]:
    """The last ``kind: epoch`` record of a run's ``metrics.jsonl`` ({} if none)."""
    run = load_run(run_dir)
    return (run.last_epoch() if run else None) or {}


def probe_run(run_dir: Path, labelled: int, force: bool = False,
              holdout: int = 0) -> dict[str, Any]:
    """Probe ``run_dir/backbone.pth``, or reuse its probe file when still current."""
    ckpt = run_dir / "backbone.pth"
    key = {"labelled": labelled, "backbone_sha256": file_sha256(ckpt)}
    if holdout:
        key["holdout"] = holdout
    saved = run_dir / (f"probe_holdout{holdout}.json" if holdout else PROBE_FILE)
    if saved.exists() and not force:
        try:
            body = json.loads(saved.read_text())
        except ValueError:  # torn or foreign: probe again
            body = {}
        if isinstance(body, dict) and all(body.get(k) == v for k, v in key.items()):
            return body
    cfg = load_saved_config(run_dir / "config.yaml")
    train, test, crop = labelled_splits(cfg, labelled, holdout)
    backbone, _ = load_backbone(ckpt)
    body = {**key, **probe_backbone(backbone, train, test, crop), "num_test": len(test)}
    atomic_write_text(saved, json.dumps(body, indent=1) + "\n")
    return body


def random_init_probe(cfg: RunConfig, labelled: int, holdout: int = 0) -> dict[str, Any]:
    """The probes of ``cfg``'s backbone at its initialisation (seeded by the run's seed)."""
    train, test, crop = labelled_splits(cfg, labelled, holdout)
    torch.manual_seed(cfg.train.seed)
    backbone = BACKBONES.build(cfg.backbone.name, **cfg.backbone.cfg).eval()
    return probe_backbone(backbone, train, test, crop)


def _cell(value: Any, digits: int) -> str:
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return "—"
    return f"{value:.{digits}f}"


def format_table(rows: list[tuple[str, dict[str, Any], dict[str, Any]]], labelled: int,
                 holdout: int = 0) -> str:
    """Markdown: one row per (label, last-epoch diagnostics, probe result)."""
    lines = ["| run | std | std-l2 | rank (centred) | online probe | linear | kNN |",
             "|---|--:|--:|--:|--:|--:|--:|"]
    for label, diag, probe in rows:
        rank = (f"{_cell(diag.get('effective_rank'), 1)} "
                f"({_cell(diag.get('effective_rank_centered'), 1)})" if diag else "—")
        online = diag.get("probe_val_acc")
        lines.append(
            f"| {label} | {_cell(diag.get('std_mean'), 4)} | {_cell(diag.get('std_l2'), 4)} "
            f"| {rank} | {_cell(online * 100 if online is not None else None, 1)} "
            f"| {_cell(probe.get('linear'), 1)} | {_cell(probe.get('knn'), 1)} |")
    split = (f"the last {holdout} training images (held out from pretraining)" if holdout
             else "the test split")
    lines.append(f"\n(linear, kNN: frozen backbone, top-1 % on {split}, fit on "
                 f"{labelled} labelled training images; the rest: the last epoch's "
                 f"diagnostics of the embeddings and the online probe)")
    return "\n".join(lines)


def probe_sweep(sweep_dir: Path, labelled: int, random_init: bool = False,
                force: bool = False,
                holdout: int = 0) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """Probe every finished run of ``sweep_dir``; rows for :func:`format_table`."""
    runs = manifest.load(sweep_dir).get("runs", {})
    rows, baselines = [], {}
    for key, entry in tqdm(sorted(runs.items(), key=lambda kv: kv[1].get("label", kv[0])),
                           desc=f"probing {sweep_dir.name}", unit="run"):
        run_dir = sweep_dir / key
        if not (run_dir / "backbone.pth").exists():
            continue  # not finished (sweep-status says why)
        label = entry.get("label", key)
        rows.append((label, last_epoch(run_dir), probe_run(run_dir, labelled, force, holdout)))
        if random_init:
            cfg = load_saved_config(run_dir / "config.yaml")
            arch = json.dumps([cfg.backbone.name, cfg.backbone.cfg, cfg.data.name,
                               cfg.train.seed], sort_keys=True)
            if arch not in baselines:
                baselines[arch] = (f"random init: {cfg.backbone.name} {cfg.backbone.cfg} "
                                   f"seed={cfg.train.seed}",
                                   random_init_probe(cfg, labelled, holdout))
    return rows + [(label, {}, probe) for label, probe in baselines.values()]


def main(sweeps: list[str], root: str = "runs", labelled: int = 10_000,
         random_init: bool = False, force: bool = False, holdout: int = 0) -> int:
    """Probe and print the named sweeps (all sweeps under ``root`` if none)."""
    try:
        dirs = find_sweeps(sweeps, Path(root))
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    code = 0
    for d in dirs:
        try:
            rows = probe_sweep(d, labelled, random_init, force, holdout)
        except (manifest.ManifestError, ConfigError) as e:
            print(f"error: {e}", file=sys.stderr)
            code = 2
            continue
        if not rows:
            print(f"sweep {d}: no finished run (make sweep-status SWEEP={d})")
            continue
        print(f"\nsweep {d}\n{format_table(rows, labelled, holdout)}")
    return code


def cli(argv: list[str] | None = None) -> int:
    """Parse the command line and run :func:`main`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweeps", nargs="*", help="sweep names under --root, or folders")
    parser.add_argument("--root", default="runs")
    parser.add_argument("--labelled", type=int, default=10_000,
                        help="training images the probes are fit on")
    parser.add_argument("--random-init", action="store_true",
                        help="add each architecture at its initialisation as a baseline")
    parser.add_argument("--force", action="store_true", help="probe again, ignore probe.json")
    parser.add_argument("--holdout", type=int, default=0, metavar="N",
                        help="test on the last N training images (a validation split the run "
                             "did not pretrain on) instead of the test split")
    args = parser.parse_args(argv)
    return main(**vars(args))


if __name__ == "__main__":
    sys.exit(cli())

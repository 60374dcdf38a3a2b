"""``make demo``: VICReg on Fashion-MNIST on a CPU, then frozen-feature probes.

Pretrains with ``sweeps/specs/demo.yaml`` (resumes if interrupted), then compares, on
the same 10k labelled training images and the 10k test images:

- the pretrained backbone (frozen, eval mode): a linear probe and kNN (k=20, T=0.07);
- the same backbone at its random initialisation: the same probes;
- a logistic regression on raw pixels.

The linear probe is scikit-learn's multinomial logistic regression on standardised
features, its C chosen on a held-out 10 % of the labelled images (never on test).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from backbones import BACKBONES
from eval.checkpoint import load_backbone
from eval.features import extract_features
from eval.knn import knn_accuracy
from trainer.config import load_config
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


def main(overrides: list[str], labelled: int = 10_000) -> int:
    from trainer.loop import train

    t0 = time.perf_counter()
    cfg = load_config([SPEC], overrides)
    print(f"[demo] pretraining {cfg.method.name} on {cfg.data.name} with {cfg.backbone.name} "
          f"{cfg.backbone.cfg} for {cfg.train.epochs} epochs (2 CPU cores: ~10 min)")
    run_dir = train(cfg)
    t_train = time.perf_counter() - t0
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    full = DATASETS.build(cfg.data.name, root=cfg.data.root, split="train")
    train_set = full.subset(min(labelled, len(full)))
    test_set = DATASETS.build(cfg.data.name, root=cfg.data.root, split="test")
    crop = cfg.aug.views[0].crop_size if cfg.aug.views else cfg.aug.crop_size
    backbone, meta = load_backbone(run_dir / "backbone.pth")
    torch.manual_seed(cfg.train.seed)
    random_init = BACKBONES.build(meta["backbone"], **meta.get("backbone_kwargs", {})).eval()
    rows = {
        f"{cfg.method.name} (pretrained)": probe_backbone(backbone, train_set, test_set, crop),
        "same backbone, random init": probe_backbone(random_init, train_set, test_set, crop),
    }
    flat = lambda s: s.images.reshape(len(s), -1).float().numpy() / 255  # noqa: E731
    raw, c = logistic_probe(flat(train_set), train_set.labels.numpy(), flat(test_set),
                            test_set.labels.numpy())
    rows["raw pixels"] = {"linear": raw, "knn": float("nan"), "C": c}
    total = time.perf_counter() - t0
    print(f"\nFashion-MNIST test accuracy (%), probes fit on {len(train_set)} labelled "
          f"training images; {cfg.backbone.name} {meta.get('backbone_kwargs', {})}")
    print(f"{'features':34s} {'linear':>8s} {'kNN k=20':>9s}")
    for name, r in rows.items():
        knn = "—" if np.isnan(r["knn"]) else f"{r['knn']:.1f}"
        print(f"{name:34s} {r['linear']:8.1f} {knn:>9s}")
    print(f"\npretraining {t_train / 60:.1f} min, whole demo {total / 60:.1f} min; "
          f"run folder: {run_dir}")
    summary = {"rows": rows, "pretrain_s": t_train, "total_s": total, "run_dir": str(run_dir),
               "labelled": len(train_set), "test": len(test_set)}
    atomic_write_text(run_dir / "demo_results.json", json.dumps(summary, indent=2))
    return 0


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_args(argv)
    return main(args.overrides)


if __name__ == "__main__":
    sys.exit(cli())

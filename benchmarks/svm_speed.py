"""Batched SVM solver vs the per-class / per-cost ``LinearSVC`` loop, in one run.

Both run the full VOC07 SVM protocol of fssb/VISSL on the same features: for every class
and every cost of VISSL's 11-value grid, 3-fold CV average precision, then the chosen
cost's model on all training rows, then test AP. The reference is the loop VISSL runs
(``cross_val_score(LinearSVC(...), cv=3)`` + ``fit``, ``max_iter=2000``, ``tol=1e-4``).

Usage::

    python benchmarks/svm_speed.py [--n-train 1500] [--n-test 1500] [--dim 256]
        [--classes 20] [--latent 48] [--threads 1] [--device auto] [--features F.pt]

Synthetic features mimic pooled CNN features: multi-label latent codes mapped through a
random linear layer, ReLU, then the protocol's L2 normalisation. ``--features`` takes a
``torch.save``d dict with ``train``/``test`` (N, D) features and ``train_labels``/
``test_labels`` (N, K) in {1, 0, -1} instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from eval.svm import VISSL_COSTS, SolverOptions, l2_normalize  # noqa: E402
from eval.voc_svm import evaluate_aps, svm_cv, svm_cv_liblinear, train_targets  # noqa: E402


def synthetic(n: int, dim: int, classes: int, latent: int,
              seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """ReLU features of multi-label latent codes, ~15 % positives per class, 3 % ignore."""
    rng = np.random.default_rng(seed)
    base = np.random.default_rng(1234)
    centers, mixing = base.normal(size=(classes, latent)), base.normal(size=(latent, dim))
    labels = (rng.random((n, classes)) < 0.15).astype(np.int64)
    codes = labels @ centers * 0.6 + rng.normal(size=(n, latent))
    feats = np.maximum(codes @ mixing / np.sqrt(latent) + 0.3 * rng.normal(size=(n, dim)), 0)
    labels[rng.random(labels.shape) < 0.03] = -1
    return l2_normalize(feats), labels


def _timed(fn: object) -> tuple[object, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()  # type: ignore[operator]
    return out, time.perf_counter() - wall, time.process_time() - cpu


def main(argv: list[str] | None = None) -> dict:
    """Run both solvers and print/return the comparison."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-train", type=int, default=1500)
    p.add_argument("--n-test", type=int, default=1500)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--classes", type=int, default=20)
    p.add_argument("--latent", type=int, default=48)
    p.add_argument("--threads", type=int, default=1, help="torch threads for the batched solver")
    p.add_argument("--device", default="auto")
    p.add_argument("--features", default=None)
    p.add_argument("--json", default=None, help="also write the numbers here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.features:
        data = torch.load(args.features, weights_only=True)
        x, y = l2_normalize(data["train"]), np.asarray(data["train_labels"])
        xt, yt = l2_normalize(data["test"]), np.asarray(data["test_labels"])
    else:
        x, y = synthetic(args.n_train, args.dim, args.classes, args.latent, seed=0)
        xt, yt = synthetic(args.n_test, args.dim, args.classes, args.latent, seed=1)
    targets = train_targets(y)
    opts = SolverOptions(device=args.device)
    print(f"VOC07 SVM protocol: {x.shape[0]} train × {x.shape[1]} dims, {y.shape[1]} classes, "
          f"{len(VISSL_COSTS)} costs, 3-fold CV; {len(xt)} test", flush=True)
    svm_cv(x[:64], targets[:64], VISSL_COSTS[:2], opts=opts)  # warm-up (allocators, CUDA init)
    ours, wall_b, cpu_b = _timed(lambda: svm_cv(x, targets, VISSL_COSTS, opts=opts))
    print(f"batched   : {wall_b:8.1f} s wall {cpu_b:8.1f} s CPU ({opts.device or 'auto'}, "
          f"{args.threads} thread(s))", flush=True)
    ref, wall_l, cpu_l = _timed(lambda: svm_cv_liblinear(x, targets, VISSL_COSTS))
    print(f"LinearSVC : {wall_l:8.1f} s wall {cpu_l:8.1f} s CPU "
          f"({y.shape[1] * len(VISSL_COSTS) * 4} fits)", flush=True)
    ap_b, ap_l = np.array(evaluate_aps(ours, xt, yt)), np.array(evaluate_aps(ref, xt, yt))
    result = {
        "n_train": int(x.shape[0]), "dim": int(x.shape[1]), "classes": int(y.shape[1]),
        "batched_wall_s": wall_b, "batched_cpu_s": cpu_b, "linearsvc_wall_s": wall_l,
        "linearsvc_cpu_s": cpu_l, "speedup_wall": wall_l / wall_b, "speedup_cpu": cpu_l / cpu_b,
        "map_batched": 100 * float(np.nanmean(ap_b)),
        "map_linearsvc": 100 * float(np.nanmean(ap_l)),
        "max_class_ap_diff": 100 * float(np.nanmax(np.abs(ap_b - ap_l))),
        "same_costs": int(sum(a == b for a, b in zip(ours.chosen, ref.chosen))),
    }
    print(f"speed-up  : {result['speedup_wall']:.1f}× wall, {result['speedup_cpu']:.1f}× CPU")
    print(f"test mAP  : batched {result['map_batched']:.3f}, "
          f"LinearSVC {result['map_linearsvc']:.3f}"
          f" (max per-class AP difference {result['max_class_ap_diff']:.3f} points; same cost for "
          f"{result['same_costs']}/{y.shape[1]} classes)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()

"""VOC07 linear SVM (full trainval, 3-fold CV) and low-shot SVM benchmarks."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from eval.images import EvalTransform
from eval.registry import BENCHMARKS, Context, Metric
from eval.svm import VISSL_COSTS, SolverOptions, class_weights, fit_svms, l2_normalize
from eval.voc_svm import (
    SVMResult,
    evaluate_aps,
    lowshot_rows,
    svm_cv,
    svm_cv_liblinear,
    train_targets,
)


@dataclass(frozen=True)
class VOCSVMConfig:
    """Per-class linear SVMs on frozen features (fssb/VISSL), test mAP on VOC07 test."""

    train_split: str = "trainval"
    test_split: str = "test"
    # NOTE: fssb/VISSL resize the shorter side to 256 then squash to 224×224 (no crop);
    # the VICReg paper says "center cropped" (eval-protocols §9.5). We follow the code.
    resize: int = 256
    crop: int = 224
    mode: str = "squash"
    taps: tuple[str, ...] = ("avgpool",)  # VISSL's default VOC07 taps are res4/res5 (+conv1..res3)
    costs: tuple[float, ...] = VISSL_COSTS
    folds: int = 3
    solver: str = "batched"  # batched (eval.svm) | liblinear (sklearn LinearSVC loop, reference)
    dtype: str = "float64"


def _tap_name(tap: str) -> str:
    return "mAP" if tap == "avgpool" else f"mAP_{tap}"


def _fit(x: torch.Tensor, targets: np.ndarray, costs: tuple[float, ...], folds: int,
         rows: np.ndarray | None, cfg_solver: str, opts: SolverOptions) -> SVMResult:
    if cfg_solver == "liblinear":
        return svm_cv_liblinear(x, targets, costs, num_folds=folds, rows=rows)
    if cfg_solver != "batched":
        raise ValueError(f"unknown solver '{cfg_solver}'; use batched or liblinear")
    return svm_cv(x, targets, costs, num_folds=folds, rows=rows, opts=opts)


def _split_features(ctx: Context, cfg: VOCSVMConfig | LowShotConfig
                    ) -> tuple[list[str], dict, np.ndarray, dict, np.ndarray]:
    train = ctx.load("voc07", cfg.train_split)
    test = ctx.load("voc07", cfg.test_split)
    if train.classes != test.classes:
        raise ValueError(f"voc07: {cfg.train_split} and {cfg.test_split} have different classes")
    tf = EvalTransform(cfg.resize, cfg.crop, cfg.mode)
    taps = ctx.usable_taps(cfg.taps)
    xtr, ytr = ctx.features(train, tf, taps)
    xte, yte = ctx.features(test, tf, taps)
    return train.classes, xtr, ytr.numpy(), xte, yte.numpy()


@BENCHMARKS.register("voc07_svm", VOCSVMConfig)
def voc07_svm(ctx: Context, cfg: VOCSVMConfig) -> list[Metric]:
    """VOC07 SVM: cost per class by 3-fold CV AP on trainval, mean test AP over classes."""
    classes, xtr, ytr, xte, yte = _split_features(ctx, cfg)
    opts = SolverOptions(dtype=cfg.dtype, device=ctx.run.device)
    metrics = []
    for tap in xtr:
        res = _fit(l2_normalize(xtr[tap]), train_targets(ytr), cfg.costs, cfg.folds, None,
                   cfg.solver, opts)
        aps = evaluate_aps(res, l2_normalize(xte[tap]), yte)
        extra = {"tap": tap, "solver": cfg.solver,
                 "chosen_cost": dict(zip(classes, res.chosen)),
                 "ap": {c: round(100 * a, 4) for c, a in zip(classes, aps)}}
        metrics.append(Metric(_tap_name(tap), 100.0 * float(np.nanmean(aps)), extra))
    return metrics


@dataclass(frozen=True)
class LowShotConfig:
    """VOC07 low-shot SVMs: k positives + 19k negatives per class, 5 seeded samples."""

    ks: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 96)
    num_samples: int = 5
    train_split: str = "trainval"
    test_split: str = "test"
    resize: int = 0  # VISSL low-shot: Resize [224, 224] only (0 = no shorter-side resize)
    crop: int = 224
    mode: str = "squash"
    taps: tuple[str, ...] = ("avgpool",)  # VISSL's low-shot config uses res4/res5
    costs: tuple[float, ...] = VISSL_COSTS
    folds: int = 3
    # NOTE: fssb/VISSL choose the cost on the *test* set (eval-protocols §9.3). We choose
    # it by stratified CV on the training sample itself (min(folds, k) folds). With k = 1
    # a class has one positive and CV is impossible, so k = 1 uses this fixed cost.
    k1_cost: float = 1.0
    solver: str = "batched"
    dtype: str = "float64"


def _lowshot_once(x: torch.Tensor, ytr: np.ndarray, k: int, rows: np.ndarray,
                  cfg: LowShotConfig, opts: SolverOptions) -> SVMResult:
    targets = np.where(ytr == 1, 1.0, -1.0)
    if k >= 2:
        return _fit(x, targets, cfg.costs, min(cfg.folds, k), rows, cfg.solver, opts)
    weight = class_weights(torch.as_tensor(targets)) * torch.as_tensor(rows)
    coef, intercept = fit_svms(x, torch.as_tensor(targets), weight, [cfg.k1_cost], opts=opts)
    return SVMResult(coef[:, :, 0], intercept[:, 0], [cfg.k1_cost], [cfg.k1_cost] * ytr.shape[1])


@BENCHMARKS.register("voc07_lowshot", LowShotConfig)
def voc07_lowshot(ctx: Context, cfg: LowShotConfig) -> list[Metric]:
    """Low-shot VOC07: mean test mAP over the samples, one metric per (tap, k)."""
    classes, xtr, ytr, xte, yte = _split_features(ctx, cfg)
    opts = SolverOptions(dtype=cfg.dtype, device=ctx.run.device)
    metrics = []
    for tap in xtr:
        x, xt = l2_normalize(xtr[tap]), l2_normalize(xte[tap])
        for k in cfg.ks:
            maps, chosen = [], []
            for s in range(cfg.num_samples):
                rows = lowshot_rows(ytr, k, np.random.default_rng([ctx.run.seed, k, s]))
                # Labels outside the sample are never seen: pass only the sampled rows' labels.
                res = _lowshot_once(x, np.where(rows, ytr, 0), k, rows, cfg, opts)
                maps.append(100.0 * float(np.nanmean(evaluate_aps(res, xt, yte))))
                chosen.append(res.chosen)
            extra = {"tap": tap, "k": k, "samples": cfg.num_samples, "per_sample": maps,
                     "std": float(np.std(maps)), "min": float(np.min(maps)),
                     "max": float(np.max(maps)), "chosen_cost": chosen,
                     "cost_selection": "cv_on_sample" if k >= 2 else "fixed_k1_cost"}
            name = f"{_tap_name(tap)}_k{k}"
            metrics.append(Metric(name, float(np.mean(maps)), extra))
    return metrics

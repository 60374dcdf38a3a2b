"""VOC07 linear-SVM protocols (Goyal et al. 2019; VISSL ``svm_trainer``): full and low-shot.

Labels are the benchmark's remapped N×K matrix: 1 present, 0 absent, -1 ignore (an image
whose only instances of the class are "difficult"). Features are L2-normalised in float64
(``x / (‖x‖ + 1e-5)``) before training and testing (eval-protocols §5.2).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold

from eval.metrics import sklearn_ap, voc_ap
from eval.svm import NEG_WEIGHT, POS_WEIGHT, SolverOptions, class_weights, decision, fit_svms


@dataclass
class SVMResult:
    """Per-class SVMs and how their cost was chosen.

    Attributes:
        coef: ``(D, K)`` float64.
        intercept: ``(K,)``.
        costs: The grid searched.
        chosen: ``(K,)`` chosen cost per class.
        cv_ap: ``(K, J)`` mean held-out AP (fraction) per class and cost.
    """

    coef: torch.Tensor
    intercept: torch.Tensor
    costs: list[float]
    chosen: list[float] = field(default_factory=list)
    cv_ap: np.ndarray | None = None


def train_targets(labels: np.ndarray) -> np.ndarray:
    """±1 training targets: present → +1; absent *and ignore* → −1.

    NOTE: as in fssb ``train_svm_kfold.py`` and VISSL ``SVMTrainer.train_cls``, rows marked
    "ignore" (-1) are kept as negatives when training the full-data SVM (eval-protocols §9.1).
    """
    return np.where(labels == 1, 1.0, -1.0)


def _folds(y: np.ndarray, num_folds: int) -> list[np.ndarray]:
    """Held-out index sets of sklearn's ``StratifiedKFold(num_folds)`` (no shuffle)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # fewer members than folds: still split
        return [test for _, test in StratifiedKFold(num_folds).split(np.zeros(len(y)), y)]


def svm_cv(
    x: torch.Tensor, targets: np.ndarray, costs: Sequence[float], *, num_folds: int = 3,
    rows: np.ndarray | None = None, opts: SolverOptions | None = None, cv_tol: float = 1e-6,
) -> SVMResult:
    """Choose each class's cost by k-fold CV AP, then refit on all its rows (batched solver).

    Args:
        x: ``(N, D)`` normalised features.
        targets: ``(N, K)`` ±1 training targets.
        costs: Cost grid.
        num_folds: CV folds (``cross_val_score(cv=3)`` = ``StratifiedKFold(3)`` per class).
        rows: Optional ``(N, K)`` bool: which rows each class trains on (low-shot samples);
            default all.
        opts: Solver settings (their ``tol`` applies to the final refit).
        cv_tol: Solver tolerance of the CV fits, which only rank held-out scores.

    Returns:
        The refit SVMs with the chosen costs.
    """
    opts = opts or SolverOptions()
    n, k = targets.shape
    rows = np.ones((n, k), dtype=bool) if rows is None else rows
    cw = class_weights(torch.as_tensor(targets)).numpy()  # (N, K)
    weights, held = [], []
    for c in range(k):
        idx = np.nonzero(rows[:, c])[0]
        for test in _folds(targets[idx, c], num_folds):
            w = np.zeros(n)
            w[idx] = cw[idx, c]
            w[idx[test]] = 0.0
            weights.append(w)
            held.append(idx[test])
    # Phase 1: every (class, fold, cost) problem in one batch; the CV AP picks the cost.
    coef, intercept = fit_svms(x, torch.as_tensor(np.repeat(targets, num_folds, axis=1)),
                               torch.as_tensor(np.stack(weights, 1)), costs,
                               opts=replace(opts, tol=max(opts.tol, cv_tol)))
    cv_ap = np.zeros((k, len(costs)))
    for c in range(k):
        for j in range(len(costs)):
            cols = range(c * num_folds, (c + 1) * num_folds)
            fold_aps = [sklearn_ap(targets[held[q], c] > 0,
                                   decision(x[held[q]], coef[:, q, j], intercept[q, j]))
                        for q in cols]
            cv_ap[c, j] = np.nan if np.all(np.isnan(fold_aps)) else np.nanmean(fold_aps)
    best = _best(cv_ap)
    # Phase 2: refit each class on all its rows at its chosen cost only, warm-started
    # from the mean of its fold solutions at that cost.
    chosen = np.array([costs[b] for b in best])
    fold_cols = [[c * num_folds + f for f in range(num_folds)] for c in range(k)]
    init = (torch.stack([coef[:, fold_cols[c], best[c]].mean(1) for c in range(k)], 1),
            torch.stack([intercept[fold_cols[c], best[c]].mean() for c in range(k)]))
    refit_w = torch.as_tensor(np.where(rows, cw, 0.0) * chosen[None, :])
    coef2, intercept2 = fit_svms(x, torch.as_tensor(targets), refit_w, [1.0], opts=opts, init=init)
    return SVMResult(coef2[:, :, 0], intercept2[:, 0], list(costs),
                     [float(c) for c in chosen], cv_ap)


def _best(cv_ap: np.ndarray) -> list[int]:
    """First maximum in grid order per class (``np.argmax``, as VISSL's get_best_cost_value)."""
    return [int(np.argmax(np.nan_to_num(row, nan=-1.0))) for row in cv_ap]


def _choose(coef: torch.Tensor, intercept: torch.Tensor, cv_ap: np.ndarray,
            costs: Sequence[float]) -> SVMResult:
    """Per class, the refit model ``coef[:, c, j]`` at the chosen cost j."""
    best = _best(cv_ap)
    return SVMResult(
        coef=torch.stack([coef[:, c, b] for c, b in enumerate(best)], 1),
        intercept=torch.stack([intercept[c, b] for c, b in enumerate(best)]),
        costs=list(costs), chosen=[float(costs[b]) for b in best], cv_ap=cv_ap,
    )


def svm_cv_liblinear(
    x: torch.Tensor, targets: np.ndarray, costs: Sequence[float], *, num_folds: int = 3,
    rows: np.ndarray | None = None, max_iter: int = 2000, tol: float = 1e-4,
) -> SVMResult:
    """The reference: one ``LinearSVC`` per (class, cost, fold), as fssb/VISSL run it.

    ``max_iter=2000, tol=1e-4`` are VISSL's settings; liblinear may stop short of the optimum
    at large costs with them (a ConvergenceWarning, silenced here as VISSL does not act on it).
    """
    from sklearn.model_selection import cross_val_score
    from sklearn.svm import LinearSVC

    n, k = targets.shape
    rows = np.ones((n, k), dtype=bool) if rows is None else rows
    xn = np.asarray(x, dtype=np.float64)
    coef = torch.zeros(xn.shape[1], k, len(costs), dtype=torch.float64)
    intercept = torch.zeros(k, len(costs), dtype=torch.float64)
    cv_ap = np.zeros((k, len(costs)))
    for c in range(k):
        idx = np.nonzero(rows[:, c])[0]
        for j, cost in enumerate(costs):
            clf = LinearSVC(C=cost, class_weight={1: POS_WEIGHT, -1: NEG_WEIGHT},
                            intercept_scaling=1.0, penalty="l2", loss="squared_hinge",
                            dual=True, tol=tol, max_iter=max_iter)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cv_ap[c, j] = np.mean(cross_val_score(clf, xn[idx], targets[idx, c], cv=num_folds,
                                                      scoring="average_precision"))
                clf.fit(xn[idx], targets[idx, c])
            coef[:, c, j] = torch.as_tensor(clf.coef_[0])
            intercept[c, j] = float(clf.intercept_[0])
    return _choose(coef, intercept, cv_ap, costs)


def evaluate_aps(result: SVMResult, x: torch.Tensor, labels: np.ndarray) -> list[float]:
    """Per-class VOC test AP (fractions) with ignore (-1) rows excluded."""
    scores = decision(x, result.coef, result.intercept)
    return [voc_ap(labels[:, c], scores[:, c]) for c in range(labels.shape[1])]


def lowshot_rows(labels: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """One low-shot sample: per class, k positives and 19·k negatives; the rest unused.

    NOTE: fssb/VISSL draw with Python's unseeded ``random.sample``; we draw from a seeded
    generator so the 5 samples are reproducible (eval-protocols §9.16). Ignore (-1) rows
    are never drawn, as in ``generate_voc07_low_shot_samples``.
    """
    rows = np.zeros(labels.shape, dtype=bool)
    for c in range(labels.shape[1]):
        pos, neg = np.nonzero(labels[:, c] == 1)[0], np.nonzero(labels[:, c] == 0)[0]
        rows[rng.choice(pos, min(k, len(pos)), replace=False), c] = True
        rows[rng.choice(neg, min(19 * k, len(neg)), replace=False), c] = True
    return rows

"""Average-precision definitions used by the VOC07 SVM benchmarks (eval-protocols §5.3, §9.2).

Two definitions are in play and both are kept on purpose:

- :func:`voc_ap` is the benchmark's *test* metric (fssb ``svm_helper.get_precision_recall``
  + ``calculate_ap``; identical in VISSL): rows labelled -1 ("ignore") are dropped,
  scores sorted in descending order, precision made monotone from the right, and the
  area summed over the points where recall changes: the all-point interpolated AP of
  VOC2010+, *not* the VOC07 11-point AP.
- :func:`sklearn_ap` is the *cost-selection* metric: scikit-learn's non-interpolated
  ``average_precision_score`` (Σ (Rₙ − Rₙ₋₁) Pₙ, tied scores grouped), as
  ``cross_val_score(..., scoring="average_precision")`` computes it.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score


def precision_recall(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall after each ranked item (targets > 0 are positives).

    Args:
        labels: ``(N,)`` targets; > 0 positive, otherwise negative (drop ignores first).
        scores: ``(N,)`` classifier scores.

    Returns:
        ``(precision, recall)``, each ``(N,)``.
    """
    pos = (np.asarray(labels) > 0).astype(np.float64)
    # NOTE: fssb/VISSL use np.argsort (quicksort, not stable) reversed, so the order of
    # tied scores is unspecified there; we sort stably by descending score (ties keep
    # file order). Real SVM scores practically never tie.
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    tp = np.cumsum(pos[order])
    fp = np.cumsum(1.0 - pos[order])
    num_pos = pos.sum()
    recall = tp / num_pos if num_pos > 0 else np.zeros_like(tp)
    return tp / (tp + fp), recall


def interpolated_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """All-point interpolated AP: fssb/VISSL ``calculate_ap``."""
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # running max from the right
    idx = np.nonzero(mrec[1:] != mrec[:-1])[0] + 1
    return float(np.sum((mrec[idx] - mrec[idx - 1]) * mpre[idx]))


def voc_ap(labels: np.ndarray, scores: np.ndarray) -> float:
    """VOC07 SVM test AP of one class (fraction in [0, 1]); label -1 rows are ignored.

    Args:
        labels: ``(N,)`` in {1, 0, -1} (present, absent, ignore) after the benchmark's
            remapping, or {1, -1} for a plain binary problem (then -1 are also ignored,
            so pass 0 for negatives).
        scores: ``(N,)`` decision values.

    Returns:
        The AP; NaN if the class has no positive among the kept rows.
    """
    labels, scores = np.asarray(labels), np.asarray(scores)
    keep = labels != -1
    if not (labels[keep] > 0).any():
        return float("nan")
    precision, recall = precision_recall(labels[keep], scores[keep])
    return interpolated_ap(recall, precision)


def voc_mean_ap(labels: np.ndarray, scores: np.ndarray) -> tuple[float, list[float]]:
    """Mean over classes (columns) of :func:`voc_ap`, in percent, and the per-class APs."""
    aps = [voc_ap(labels[:, c], scores[:, c]) for c in range(labels.shape[1])]
    return 100.0 * float(np.nanmean(aps)), aps


def sklearn_ap(positive: np.ndarray, scores: np.ndarray) -> float:
    """scikit-learn's non-interpolated AP (the cross-validation score)."""
    positive = np.asarray(positive) > 0
    if not positive.any():
        return float("nan")
    return float(average_precision_score(positive, scores))

"""The columns of the method tables (the VICReg paper's layouts), built from records.

Four families, each rendered once per protocol (a column never mixes protocols):

- ``imagenet``: linear top-1/top-5 and semi-supervised 1 %/10 % top-1/top-5 (Table 1);
- ``transfer``: Places205, VOC07, iNat18, VOC07+12 AP50, COCO det AP, COCO seg AP
  (Table 2), one detection column per backend (a column never mixes backends);
- ``knn_lowshot``: kNN accuracies and the VOC07 low-shot mAP for each k;
- ``other``: every record no other family shows (e.g. extra detection metrics, and records
  made with settings other than their suite's: one column per ``variant``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from results.aggregate import Column
from results.protocols import BACKENDS
from results.records import Record

IMAGENET = (("imagenet_linear", "Linear"), ("imagenet_semi_1pct", "Semi-sup. 1%"),
            ("imagenet_semi_10pct", "Semi-sup. 10%"))
TRANSFER_LINEAR = (("places205_linear", "top1", "Places205"), ("voc07_svm", "mAP", "VOC07"),
                   ("inat18_linear", "top1", "iNat18"))
TRANSFER_DET = (("voc07+12_det", "AP50", "VOC07+12"), ("coco_det", "AP", "COCO det"),
                ("coco_seg", "AP", "COCO seg"))
KNN_DEFAULT = ("top1_k20", "top1_k200")  # VICReg Table 11


def metric_label(metric: str) -> str:
    """``top1`` -> ``top-1``; ``top1_k20`` -> ``top-1 k=20``; others unchanged."""
    m = re.fullmatch(r"top(\d+)(?:_k(\d+))?", metric)
    if not m:
        return metric
    return f"top-{m.group(1)}" + (f" k={m.group(2)}" if m.group(2) else "")


def split_k(metric: str, k: Any) -> str:
    """The metric without its ``_k<k>`` suffix (``mAP_k4`` with k = 4 -> ``mAP``)."""
    suffix = f"_k{k}"
    return metric[: -len(suffix)] if k is not None and metric.endswith(suffix) else metric


def column_label(metric: str, k: Any, backend: str | None = None) -> str:
    """``top-1 k=20`` for (``top1_k20``, 20) or (``top1``, 20); ``AP [tv]`` for a backend."""
    label = metric_label(split_k(metric, k)) + (f" k={k}" if k is not None else "")
    return label + (f" [{BACKENDS.get(backend, backend)}]" if backend else "")


def _k_sort(k: Any) -> tuple[int, float, str]:
    return (0, float(k), "") if isinstance(k, (int, float)) else (1, 0.0, str(k))


def imagenet_columns(records: list[Record]) -> list[Column]:
    """Table 1: linear, 1 % and 10 % top-1/top-5."""
    return [Column(f"{bench}/{metric}", metric_label(metric), group, bench, metric)
            for bench, group in IMAGENET for metric in ("top1", "top5")]


def transfer_columns(records: list[Record]) -> list[Column]:
    """Table 2; detection columns per backend found (one column when there is none)."""
    cols = [Column(f"{b}/{m}", f"{name} {metric_label(m)}", "Linear classification", b, m)
            for b, m, name in TRANSFER_LINEAR]
    for bench, metric, name in TRANSFER_DET:
        backends = sorted({r.backend for r in records if r.benchmark == bench
                           and r.metric == metric and r.k is None}, key=lambda b: b or "")
        for backend in backends or [None]:
            tag = f" [{BACKENDS.get(backend, backend)}]" if backend else ""
            key = f"{bench}/{metric}" + (f"/{backend}" if backend else "")
            cols.append(Column(key, f"{name} {metric}{tag}", "Object detection", bench, metric,
                               backend=backend))
    return cols


def knn_lowshot_columns(records: list[Record]) -> list[Column]:
    """kNN metrics (each k its own column) and VOC07 low-shot mAP for each k.

    The eval battery names these metrics with their k (``top1_k20``, ``mAP_k4``) and also
    puts k in ``extra``; the low-shot columns share one group per metric without the k.
    """
    knn = {(r.metric, r.k) for r in records if r.benchmark == "knn" and r.backend is None}
    if not knn and not any(r.benchmark == "voc07_lowshot" for r in records):
        knn = {(m, None) for m in KNN_DEFAULT}
    cols = []
    for metric, k in sorted(knn, key=lambda mk: (split_k(*mk), _k_sort(mk[1]), mk[0])):
        key = f"knn/{metric}" + (f"/k{k}" if k is not None else "")
        cols.append(Column(key, column_label(metric, k), "kNN", "knn", metric, k=k))
    low = {(r.metric, r.k) for r in records if r.benchmark == "voc07_lowshot"
           and r.backend is None}
    for metric, k in sorted(low, key=lambda mk: (split_k(*mk), _k_sort(mk[1]), mk[0])):
        group = f"VOC07 low-shot {metric_label(split_k(metric, k))}"
        cols.append(Column(f"voc07_lowshot/{metric}/k{k}", f"k={k}", group, "voc07_lowshot",
                           metric, k=k))
    return cols


def other_columns(records: list[Record]) -> list[Column]:
    """One column per (benchmark, metric, k, backend, variant) among ``records``; a record
    made with other settings than its suite's (``variant``) is its own column, labelled
    with those settings."""
    keys = {(r.benchmark, r.metric, r.k, r.backend, r.variant) for r in records}
    cols = []
    for bench, metric, k, backend, var in sorted(
            keys, key=lambda t: (t[0], split_k(t[1], t[2]), _k_sort(t[2]), t[1], t[3] or "",
                                 t[4] or "")):
        key = "/".join(str(p) for p in (bench, metric, k, backend, var) if p is not None)
        label = column_label(metric, k, backend) + (f" [{var}]" if var else "")
        cols.append(Column(key, label, bench, bench, metric, k=k, backend=backend,
                           variant=var))
    return cols


@dataclass(frozen=True)
class Family:
    """A kind of method table: its name, caption and column builder."""

    name: str
    title: str
    columns: Callable[[list[Record]], list[Column]]


FAMILIES = (
    Family("imagenet", "ImageNet linear evaluation and semi-supervised fine-tuning "
           "(top-1/top-5 accuracy, %)", imagenet_columns),
    Family("transfer", "Transfer: linear classification (top-1 / mAP, %) and object "
           "detection / instance segmentation (AP, %)", transfer_columns),
    Family("knn_lowshot", "kNN accuracy (%) and VOC07 low-shot SVM mAP (%) against k "
           "positives per class", knn_lowshot_columns),
)
OTHER = Family("other", "Other benchmarks and metrics (%)", other_columns)


# ----------------------------------------------------------------------------- standard benchmarks
# One family per small SSL benchmark (solo-learn's tables): linear top-1/top-5 and the kNN
# accuracies of ``<dataset>_linear`` / ``<dataset>_knn`` (eval.bench_standard). Two decimals,
# as solo-learn publishes them. Records made with other settings than the suite's (a
# shortened protocol, ``variant``) get their own columns, labelled with those settings.
STANDARD = (("cifar10", "CIFAR-10"), ("cifar100", "CIFAR-100"), ("stl10", "STL-10"),
            ("imagenet100", "ImageNet-100"))


def standard_columns(dataset: str) -> Callable[[list[Record]], list[Column]]:
    """The column builder of one dataset's table."""

    def columns(records: list[Record]) -> list[Column]:
        linear, bench = f"{dataset}_linear", f"{dataset}_knn"
        cols = []
        for var in _variants(records, linear):  # other settings: their own columns
            tag = f" [{var}]" if var else ""
            cols += [Column(f"{linear}/{m}" + (f"/{var}" if var else ""), metric_label(m) + tag,
                            "Linear", linear, m, digits=2, variant=var)
                     for m in ("top1", "top5")]
        knn = {(r.metric, r.k) for r in records if r.benchmark == bench and r.backend is None}
        for var in _variants(records, bench):
            for metric, k in sorted(knn or {(m, None) for m in KNN_DEFAULT},
                                    key=lambda mk: (split_k(*mk), _k_sort(mk[1]), mk[0])):
                key = f"{bench}/{metric}" + (f"/k{k}" if k is not None else "")
                cols.append(Column(key + (f"/{var}" if var else ""),
                                   column_label(metric, k) + (f" [{var}]" if var else ""),
                                   "kNN", bench, metric, k=k, digits=2, variant=var))
        return cols

    return columns


def _variants(records: list[Record], benchmark: str) -> list[str | None]:
    """None (the suite's settings) and every other settings ``variant`` of ``benchmark``."""
    return [None, *sorted({r.variant for r in records if r.benchmark == benchmark
                           and r.variant})]


FAMILIES = FAMILIES + tuple(
    Family(dataset, f"{title}: linear evaluation and kNN on the test split (accuracy, %)",
           standard_columns(dataset)) for dataset, title in STANDARD)

"""Names and footnote text: methods, protocols and benchmarks (eval-protocols.md).

Kept apart from the table code so that footnotes read the same in every table.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from results.records import Record

METHOD_NAMES = {"vicreg": "VICReg", "barlow_twins": "Barlow Twins", "byol": "BYOL",
                "simclr": "SimCLR", "simsiam": "SimSiam", "supervised": "Supervised"}
METHOD_ORDER = tuple(METHOD_NAMES)

PROTOCOLS = {
    "paper": "the papers' protocols (eval-protocols.md): e.g. ImageNet linear = a linear "
             "head on frozen res5avg features, 100 epochs (VICReg evaluate.py)",
    "fast": "the fast protocol: linear heads of an (lr, wd) grid trained in one pass over "
            "cached frozen features, chosen on held-out training data (not the best "
            "epoch on the evaluation set as in VICReg/Barlow Twins evaluate.py)",
    "mini": "the mini protocol: a small-scale smoke version of the suite; its numbers are "
            "not comparable to published ones",
}

BENCHMARKS = {
    "imagenet_linear": "ImageNet linear: frozen backbone, linear head, top-1/top-5 on the 50k val",
    "imagenet_semi_1pct": "ImageNet 1 %: fine-tuned on SimCLR's 1 % subset",
    "imagenet_semi_10pct": "ImageNet 10 %: fine-tuned on SimCLR's 10 % subset",
    "knn": "kNN: weighted vote exp(s/T) over cosine similarity of L2-normalised backbone "
           "features (DINO; T = 0.07)",
    "places205_linear": "Places205: linear head on frozen features",
    "inat18_linear": "iNat18: linear head on frozen features, top-1 on val",
    "voc07_svm": "VOC07: per-class linear SVMs (VISSL cost grid, 3-fold CV), all-point mAP",
    "voc07_lowshot": "VOC07 low-shot: SVMs on k positives per class, mean over samples",
    "voc07+12_det": "VOC07+12 detection: Faster R-CNN (model in the settings), AP50 on VOC07 "
                    "test (11-point AP)",
    "coco_det": "COCO detection: Mask R-CNN (model in the settings), box AP",
    "coco_seg": "COCO instance segmentation: Mask R-CNN (model in the settings), mask AP",
    **{f"{d}_linear": f"{name} linear: solo-learn's offline protocol (frozen eval-mode backbone, "
                      "linear head on RandomResizedCrop + flip views, SGD 100 epochs, batch "
                      "256, wd 0, lr ×0.1 at 60/80, lr per method), top-1/top-5 on the "
                      f"{test} split"
       for d, name, test in (("cifar10", "CIFAR-10", "test"), ("cifar100", "CIFAR-100", "test"),
                             ("stl10", "STL-10", "test"), ("imagenet100", "ImageNet-100", "val"))},
    **{f"{d}_knn": f"{name} kNN: DINO's weighted vote (T = 0.07) on frozen avgpool features, "
                   "train split as memory"
       for d, name in (("cifar10", "CIFAR-10"), ("cifar100", "CIFAR-100"), ("stl10", "STL-10"),
                       ("imagenet100", "ImageNet-100"))},
}

BACKENDS = {"detectron2": "d2", "torchvision": "tv"}
# Scalar ``extra`` keys that are results, not settings (left out of footnotes).
RESULT_KEYS = {"best_top1_on_val", "std", "min", "max", "train_images", "wall_time_s"}


def method_name(method: str) -> str:
    """Display name of a method key (unknown keys unchanged)."""
    return METHOD_NAMES.get(method, method)


def model_row(r: Record) -> tuple[str, str, str]:
    """Row labels of a record in the method tables: (method, backbone, epochs)."""
    return (method_name(r.model_label), r.backbone, "" if r.epochs is None else str(r.epochs))


def model_order(labels: tuple[str, ...]) -> tuple[Any, ...]:
    """Sort key of (method, backbone, epochs) rows: the paper's method order first."""
    names = [METHOD_NAMES[m] for m in METHOD_ORDER]
    method, backbone, epochs = labels
    rank = names.index(method) if method in names else len(names)
    return (rank, method, backbone, int(epochs) if epochs.isdigit() else -1)


def protocol_note(protocol: str | None, records: Iterable[Record]) -> str:
    """``Protocol: mini (suite mini): the mini protocol: ...``."""
    records = list(records)
    suites = sorted({r.suite for r in records if r.suite})
    suite = f" (suite {', '.join(suites)})" if suites else ""
    text = PROTOCOLS.get(protocol or "", "protocol as recorded")
    return f"Protocol: {protocol}{suite}: {text}."


def benchmark_notes(records: Iterable[Record]) -> list[str]:
    """One line per benchmark present, plus the settings recorded in ``extra``.

    Only scalar settings are summarised (per-class APs, chosen costs and other result
    details stay in the records): one value as ``key=v``, a few as ``key ∈ {a, b}``, so
    a deviation from the protocol is visible (e.g. a torchvision detection backend).
    """
    by_bench: dict[str, list[Record]] = {}
    for r in records:
        by_bench.setdefault(r.benchmark, []).append(r)
    lines = []
    for bench in sorted(by_bench):
        text = BENCHMARKS.get(bench, bench)
        backends = sorted({r.backend for r in by_bench[bench] if r.backend})
        if backends:
            text += f"; backend: {', '.join(backends)} (never mixed in one column)"
        settings = settings_summary(by_bench[bench])
        if settings:
            text += f"; settings: {settings}"
        lines.append(text + ".")
    return lines


def settings_summary(records: list[Record], max_values: int = 3) -> str:
    """``tap=avgpool, temperature=0.07, lr ∈ {0.1, 0.3}`` over the records' ``extra``."""
    values: dict[str, set[str]] = {}
    for r in records:
        for key, v in r.settings.items():
            if key in RESULT_KEYS or not isinstance(v, (str, int, float, bool)):
                continue
            values.setdefault(key, set()).add(v if isinstance(v, str) else json.dumps(v))
    parts = []
    for key in sorted(values):
        vals = sorted(values[key])
        if len(vals) == 1:
            parts.append(f"{key}={vals[0]}")
        elif len(vals) <= max_values:
            parts.append(f"{key} ∈ {{{', '.join(vals)}}}")
        else:
            parts.append(f"{key}: {len(vals)} values")
    return ", ".join(parts)

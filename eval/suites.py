"""Suites: which benchmarks run, with which protocol settings.

- ``paper``: the published protocols (VICReg linear + semi-supervised recipes, DINO kNN,
  VISSL Places205/iNat18 linear, fssb/VISSL VOC07 SVMs) on the full datasets.
- ``fast``: the same datasets on cached center-crop features: an (lr, wd) grid chosen on
  held-out train for every linear benchmark, kNN, the SVMs. No fine-tuning (it cannot run
  on cached features).
- ``mini``: every benchmark of ``paper`` on small Fashion-MNIST-derived datasets written
  in each benchmark's real on-disk format (``eval.mini``), sized for CI on 2 CPU cores.
- ``cifar10``, ``cifar100``, ``stl10``, ``imagenet100``: kNN and solo-learn's linear
  evaluation on that dataset's test split (``eval.bench_standard``), protocol ``paper``,
  normalised as pretraining on it normalises.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

from dataroom.cifar import NORMALIZATION as CIFAR_NORMALIZATION
from dataroom.stl10 import NORMALIZATION as STL10_NORMALIZATION
from eval import bench_standard
from eval.bench_classification import (
    INAT_PAPER,
    PLACES_PAPER,
    SEMI_10PCT,
    KNNConfig,
    LinearConfig,
    SemiConfig,
)
from eval.bench_voc import LowShotConfig, VOCSVMConfig
from eval.config import DEFAULT_MINI_ROOT, RunSettings
from eval.detection.bench import suite_benchmarks

FASHION_MEAN = (0.2860,) * 3  # Fashion-MNIST train statistics, replicated to RGB
FASHION_STD = (0.3530,) * 3


@dataclass(frozen=True)
class Suite:
    """A named list of benchmarks with their settings.

    Attributes:
        name: Suite name (recorded).
        protocol: ``"paper"``, ``"fast"`` or ``"mini"`` (recorded).
        benchmarks: Ordered ``{benchmark: config instance}``.
        run: Default shared settings.
        data_root: Default ``--data-root``.
    """

    name: str
    protocol: str
    benchmarks: dict[str, Any]
    run: RunSettings = field(default_factory=RunSettings)
    data_root: str = "datasets"


def paper_suite() -> Suite:
    """The published protocols."""
    return Suite("paper", "paper", {
        "imagenet_linear": LinearConfig(),
        "imagenet_semi_1pct": SemiConfig(),
        "imagenet_semi_10pct": SEMI_10PCT,
        "knn": KNNConfig(),
        "places205_linear": PLACES_PAPER,
        "inat18_linear": INAT_PAPER,
        "voc07_svm": VOCSVMConfig(taps=("avgpool", "res4", "res5")),
        "voc07_lowshot": LowShotConfig(taps=("avgpool", "res5")),
        **suite_benchmarks("paper"),
    })


def fast_suite() -> Suite:
    """Cached-feature protocols on the full datasets."""
    feats = LinearConfig(mode="features")
    return Suite("fast", "fast", {
        "imagenet_linear": feats,
        "knn": KNNConfig(),
        "places205_linear": feats,
        "inat18_linear": feats,
        "voc07_svm": VOCSVMConfig(),
        "voc07_lowshot": LowShotConfig(),
    })


def mini_suite() -> Suite:
    """Every benchmark on the generated Fashion-MNIST datasets (32 px; VOC mosaics 64 px)."""
    small = {"resize": 32, "crop": 32}
    return Suite("mini", "mini", {
        "imagenet_linear": LinearConfig(**small, epochs=4, batch_size=64, lr=0.1),
        "imagenet_semi_1pct": SemiConfig(**small, epochs=4, batch_size=16),
        "imagenet_semi_10pct": replace(SEMI_10PCT, **small, epochs=3, batch_size=32),
        "knn": KNNConfig(**small),
        "places205_linear": LinearConfig(mode="features", **small, lrs=(0.01, 0.1, 1.0),
                                         wds=(0.0, 1e-4), grid_epochs=20, grid_batch_size=128),
        "inat18_linear": replace(INAT_PAPER, **small, epochs=3, milestones=(2,), batch_size=64),
        "voc07_svm": VOCSVMConfig(resize=64, crop=64),
        "voc07_lowshot": LowShotConfig(ks=(1, 2, 4, 8), crop=64),
        **suite_benchmarks("mini"),
    }, run=RunSettings(batch_size=256, num_workers=0, threads=1, mean=FASHION_MEAN,
                        std=FASHION_STD),
        data_root=DEFAULT_MINI_ROOT)


def standard_suite(dataset: str) -> Suite:
    """kNN then linear evaluation on ``dataset`` (cifar10, cifar100, stl10, imagenet100)."""
    linear, knn = bench_standard.defaults(dataset)
    norm = {**CIFAR_NORMALIZATION, "stl10": STL10_NORMALIZATION}.get(dataset)
    run = RunSettings(mean=norm[0], std=norm[1]) if norm else RunSettings()  # else ImageNet's
    return Suite(dataset, "paper", {f"{dataset}_knn": knn, f"{dataset}_linear": linear}, run=run)


SUITES: dict[str, Callable[[], Suite]] = {
    "paper": paper_suite, "fast": fast_suite, "mini": mini_suite,
    **{d: partial(standard_suite, d) for d, *_ in bench_standard.DATASETS}}

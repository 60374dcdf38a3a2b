"""The benchmark registry and what a benchmark receives and returns.

A benchmark is a function ``run(ctx, cfg) -> list[Metric]`` registered with its config
dataclass: ``@BENCHMARKS.register("knn", KNNConfig)``. It reads data through
``ctx.load(...)``, features through ``ctx.features(...)`` (cached on disk and shared
between benchmarks), and raises :class:`eval.datasets.DatasetError` when its data is
missing, which the runner records as ``skipped``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from backbones.registry import Registry
from dataroom.arrays import ImageArrays
from dataroom.imagenet100 import imagenet100
from eval import datasets
from eval.arrays import ARRAY_DATASETS, Split, eval_batches, find_arrays, run_data_root
from eval.config import DataPaths, RunSettings
from eval.features import POOLED_TAP, FeatureCache, extract_batches, extract_files, resolve_device
from eval.images import EvalTransform

ARRAY_ENV = {"cifar10": "SSLBENCH_CIFAR10", "cifar100": "SSLBENCH_CIFAR100",
             "stl10": "SSLBENCH_STL10"}


@dataclass
class Metric:
    """One number a benchmark reports (percent), with its details."""

    name: str
    value: float
    extra: dict[str, Any] = field(default_factory=dict)


BENCHMARKS: Registry[Callable[..., list[Metric]]] = Registry("benchmark")


@dataclass
class Context:
    """Everything a benchmark may use; built once per checkpoint by the runner.

    Attributes:
        backbone: The frozen backbone (eval mode, on the CPU until used).
        meta: ``load_backbone`` metadata.
        checkpoint_sha256: Identifies the weights in cache keys and records.
        run: Shared settings (device, batch size, workers, seed).
        data: Resolved dataset paths.
        cache: The feature cache.
        fingerprints: ``{"<dataset>/<split>": fingerprint}`` of the splits read so far.
    """

    backbone: nn.Module
    meta: dict[str, Any]
    checkpoint_sha256: str
    run: RunSettings
    data: DataPaths
    cache: FeatureCache
    fingerprints: dict[str, str] = field(default_factory=dict)

    @property
    def mean(self) -> tuple[float, ...]:
        """Normalisation mean (RGB, [0, 1] units)."""
        return tuple(self.run.mean)

    @property
    def std(self) -> tuple[float, ...]:
        """Normalisation std."""
        return tuple(self.run.std)

    @property
    def device(self) -> torch.device:
        """The resolved compute device."""
        return resolve_device(self.run.device)

    def load(self, dataset: str, split: str) -> Split:
        """Read one split with the real reader (``imagenet``, ``places205``, ``voc07``, ``inat18``,
        ``imagenet_1pct`` / ``imagenet_10pct`` for the SimCLR subsets, ``imagenet100``), or the
        pixel arrays of ``cifar10``, ``cifar100``, ``stl10``.

        An array dataset is read from the first folder that holds it: ``data.<dataset>``
        (default ``<data-root>/<dataset>``), the ``data.root`` of the run that made the
        checkpoint (when it pretrained on that dataset), ``$SSLBENCH_<DATASET>``.
        """
        if dataset in ARRAY_DATASETS:
            fs: Split = find_arrays(dataset, split, [
                (f"data.{dataset}", getattr(self.data, dataset)),
                ("the run's data.root", run_data_root(self.meta, dataset)),
                (f"${ARRAY_ENV[dataset]}", os.environ.get(ARRAY_ENV[dataset], ""))])
        elif dataset == "imagenet100":
            fs = imagenet100(self.data.imagenet100, split)
        elif dataset.startswith("imagenet_") and dataset.endswith("pct"):
            percent = dataset.removeprefix("imagenet_").removesuffix("pct")
            fs = datasets.imagenet_subset(self.data.imagenet,
                                          f"{self.data.imagenet_subsets}/{percent}percent.txt",
                                          f"train_{percent}pct")
        else:
            reader = {"imagenet": datasets.imagenet, "places205": datasets.places205,
                      "voc07": datasets.voc07, "inat18": datasets.inat18}[dataset]
            fs = reader(getattr(self.data, dataset), split)
        self.fingerprints[f"{fs.name}/{fs.split}"] = fs.fingerprint
        return fs

    def usable_taps(self, taps: Sequence[str]) -> tuple[str, ...]:
        """``taps`` minus stage taps this backbone cannot produce (then only ``avgpool``)."""
        if hasattr(self.backbone, "forward_taps"):
            return tuple(taps)
        return tuple(t for t in taps if t == POOLED_TAP) or (POOLED_TAP,)

    def features(self, fs: Split, transform: EvalTransform,
                 taps: Sequence[str]) -> tuple[dict[str, Tensor], Tensor]:
        """Cached features ``{tap: (M, F)}`` of a split and the labels of the decoded rows."""
        base = {"checkpoint_sha256": self.checkpoint_sha256, "dataset": fs.name,
                "split": fs.split, "fingerprint": fs.fingerprint,
                "transform": transform.describe(), "mean": list(self.mean), "std": list(self.std)}
        out: dict[str, Tensor] = {}
        missing = []
        for tap in (*taps, "index"):
            entry = self.cache.lookup({**base, "tap": tap})
            if entry is None:
                missing.append(tap)
            else:
                out[tap] = entry
        if missing and isinstance(fs, ImageArrays):
            batches = (x for x, _, _ in eval_batches(fs, transform, batch_size=self.run.batch_size,
                                                     num_workers=0))
            feats = extract_batches(self.backbone, batches, mean=self.mean, std=self.std,
                                    resize=transform.crop, crop=transform.crop, taps=list(taps),
                                    device=self.run.device)
            feats["index"] = torch.arange(len(fs))
        elif missing:
            feats = extract_files(
                self.backbone, fs.paths, transform, mean=self.mean, std=self.std,
                taps=[t for t in taps], batch_size=self.run.batch_size,
                num_workers=self.run.num_workers, device=self.run.device,
                name=f"{fs.name}/{fs.split}")
        if missing:
            for tap in (*taps, "index"):
                self.cache.store({**base, "tap": tap}, feats[tap])
                out[tap] = feats[tap]
        index = out.pop("index")
        return out, torch.as_tensor(fs.labels)[index]

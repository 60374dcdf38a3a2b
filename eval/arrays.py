"""Batches of uint8 images from either kind of split: image files or pixel arrays.

A benchmark's split is a :class:`~dataroom.readers.FileSet` (decoded by loader workers,
``eval.images``) or a :class:`~dataroom.arrays.ImageArrays` (CIFAR, STL-10: already pixels,
gathered by row). Both give ``(uint8 images, row indices, ok mask)`` batches, so feature
extraction and the image-level linear probe run unchanged on either:

- :func:`eval_batches`: in order, Resize(shorter side) → CenterCrop, as
  :class:`eval.images.EvalTransform` (for arrays: torchvision's antialiased bilinear resize
  of the uint8 batch; nothing to do when the images already have the size);
- :func:`train_batches`: shuffled (seeded), RandomResizedCrop + horizontal flip, as
  :class:`eval.images.TrainTransform` (for arrays: torchvision's v2 ops per image, drawn
  from torch's global generator, which the caller seeds).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as TF

from dataroom.arrays import DatasetNotFound, ImageArrays
from dataroom.cifar import read_cifar
from dataroom.readers import DatasetError, FileSet
from dataroom.stl10 import read_stl10
from eval.images import EvalTransform, TrainTransform, iterate_images

Split = FileSet | ImageArrays
Batches = Iterator[tuple[Tensor, Tensor, Tensor]]
ARRAY_DATASETS = ("cifar10", "cifar100", "stl10")


def read_arrays(dataset: str, root: str, split: str) -> ImageArrays:
    """A split of an array dataset (``cifar10``, ``cifar100``, ``stl10``) from ``root``."""
    if dataset == "stl10":
        return read_stl10(root, split)
    return read_cifar(dataset, root, split)


def find_arrays(dataset: str, split: str, roots: list[tuple[str, str]]) -> ImageArrays:
    """The split from the first of ``roots`` that holds the dataset.

    Args:
        dataset: ``cifar10``, ``cifar100`` or ``stl10``.
        split: The split.
        roots: ``(where it comes from, folder)`` candidates in order; ``""`` folders are
            skipped. Malformed files in a folder that has the layout are an error at once.

    Raises:
        DatasetError: No candidate holds the dataset (every one is named), or its files
            are malformed.
    """
    tried = []
    for origin, root in roots:
        if not root:
            continue
        try:
            return read_arrays(dataset, root, split)
        except DatasetNotFound:  # malformed files in a folder that has the layout: raised
            tried.append(f"{origin} {root}")
    env = {"cifar10": "SSLBENCH_CIFAR10", "cifar100": "SSLBENCH_CIFAR100",
           "stl10": "SSLBENCH_STL10"}[dataset]
    layout = _layout(dataset)
    raise DatasetError(f"{dataset}/{split}: not found in {'; '.join(tried) or 'no folder'} "
                       f"(set data.{dataset}=<folder> or ${env}). Expected {layout}")


def _layout(dataset: str) -> str:
    """The expected layout of an array dataset, for messages."""
    from dataroom.cifar import CIFAR10_LAYOUT, CIFAR100_LAYOUT
    from dataroom.stl10 import STL10_LAYOUT

    return {"cifar10": CIFAR10_LAYOUT, "cifar100": CIFAR100_LAYOUT,
            "stl10": STL10_LAYOUT}[dataset]


def run_data_root(meta: dict[str, Any], dataset: str) -> str:
    """``data.root`` of the run that made the checkpoint, if it pretrained on ``dataset``."""
    from eval.checkpoint import read_run_config

    run_dir = meta.get("run_dir")
    if not run_dir:
        return ""
    cfg = read_run_config(Path(run_dir)) or {}
    data = cfg.get("data") or {}
    return str(data.get("root") or "") if data.get("name") == dataset else ""


def _resized(x: Tensor, transform: EvalTransform) -> Tensor:
    """Resize (shorter side) + center crop of a uint8 batch, as EvalTransform on PIL."""
    if transform.mode != "center_crop":
        raise ValueError(f"array splits support center_crop only, not '{transform.mode}'")
    if transform.resize and min(x.shape[-2:]) != transform.resize:
        x = TF.resize(x, [transform.resize], InterpolationMode.BILINEAR, antialias=True)
    if x.shape[-2:] != (transform.crop, transform.crop):
        if min(x.shape[-2:]) < transform.crop:
            raise ValueError(f"crop {transform.crop} is larger than the images "
                             f"{tuple(x.shape[-2:])}")
        x = TF.center_crop(x, [transform.crop])
    return x


def eval_batches(split: Split, transform: EvalTransform, *, batch_size: int,
                 num_workers: int) -> Batches:
    """In-order evaluation batches ``(uint8 (B, C, crop, crop), indices, ok)``."""
    if isinstance(split, FileSet):
        yield from iterate_images(split.paths, transform, transform.crop, batch_size=batch_size,
                                  num_workers=num_workers)
        return
    for x, idx in split.batches(batch_size):
        yield _resized(x, transform), idx, torch.ones(len(idx), dtype=torch.bool)


def train_batches(split: Split, transform: TrainTransform, *, batch_size: int, num_workers: int,
                  seed: int) -> Batches:
    """One shuffled epoch of augmented batches ``(uint8 (B, C, crop, crop), indices, ok)``."""
    if isinstance(split, FileSet):
        yield from iterate_images(split.paths, transform, transform.crop, batch_size=batch_size,
                                  num_workers=num_workers, shuffle=True, seed=seed)
        return
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed)).numpy()
    ops = v2.Compose([v2.RandomResizedCrop(transform.crop, scale=transform.scale,
                                           antialias=True), v2.RandomHorizontalFlip()])
    for lo in range(0, len(order), batch_size):
        rows = order[lo:lo + batch_size]
        x = split.images.take(rows)
        out = torch.stack([ops(img) for img in x])
        yield out, torch.from_numpy(rows), torch.ones(len(rows), dtype=torch.bool)

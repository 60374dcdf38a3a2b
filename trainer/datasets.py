"""In-memory image datasets, registered by name.

The pretraining loop slices batches straight out of a uint8 tensor (no DataLoader
workers), so a dataset is an :class:`ImageSet`: all images, labels, class names and
the per-channel statistics used to normalise after augmentation. The IDX reader/writer
and the Fashion-MNIST file search live in ``dataroom.idx`` (re-exported here).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from backbones.registry import Registry
from dataroom.idx import FASHION_FILES as _FASHION_FILES
from dataroom.idx import fashion_dir as _fashion_dir
from dataroom.idx import find_file as _find
from dataroom.idx import read_idx, write_idx

__all__ = ["DATASETS", "FASHION_MNIST_CLASSES", "ImageSet", "channel_stats", "fashion_mnist",
           "read_idx", "write_idx"]

DATASETS: Registry[Callable[..., ImageSet]] = Registry("dataset")

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip


@dataclass
class ImageSet:
    """A labelled image dataset held in memory.

    Attributes:
        images: uint8 ``(N, C, H, W)``; C = 1 for grayscale.
        labels: int64 ``(N,)`` class indices into ``classes``.
        classes: Class names.
        mean: Per-channel mean in [0, 1] pixel units, for normalisation after augmentation.
        std: Per-channel standard deviation in [0, 1] pixel units.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(
                f"images must be uint8 (N, C, H, W), got {self.images.dtype} "
                f"{tuple(self.images.shape)}"
            )
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"labels must have shape ({self.images.shape[0]},), got {tuple(self.labels.shape)}"
            )
        self.labels = self.labels.long()
        channels = self.images.shape[1]
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(f"mean/std need {channels} value(s), got {self.mean} / {self.std}")

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, n: int) -> ImageSet:
        """The first ``n`` samples (a view, no copy); mean/std stay those of the full set."""
        if not 0 <= n <= len(self):
            raise ValueError(f"subset size {n} is outside [0, {len(self)}]")
        return ImageSet(self.images[:n], self.labels[:n], list(self.classes), self.mean, self.std)


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and (population) std of uint8 ``(N, C, H, W)`` images, in [0, 1].

    Args:
        images: uint8 images.

    Returns:
        ``(mean, std)``, one value per channel.
    """
    levels = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for c in range(images.shape[1]):
        # A 256-bin histogram is exact and avoids a float copy of the whole set.
        counts = torch.bincount(images[:, c].reshape(-1).cpu(), minlength=256).double()
        counts /= counts.sum()
        mean = float((counts * levels).sum())
        means.append(mean)
        stds.append(float((counts * (levels - mean) ** 2).sum()) ** 0.5)
    return tuple(means), tuple(stds)


# ----------------------------------------------------------------------------- Fashion-MNIST


def _read_fashion_images(path: Path) -> np.ndarray:
    images = read_idx(path)
    if images.dtype != np.uint8 or images.shape[1:] != (28, 28):
        raise ValueError(
            f"{path}: expected uint8 images N×28×28 (magic 0x00000803), "
            f"got {images.dtype} {images.shape}"
        )
    return images


@DATASETS.register("fashion_mnist")
def fashion_mnist(root: str = "", split: str = "train") -> ImageSet:
    """Fashion-MNIST (Xiao, Rasul, Vollgraf 2017, https://arxiv.org/abs/1708.07747).

    60,000 train / 10,000 test grayscale 28×28 images of 10 clothing classes.

    Args:
        root: A folder holding the IDX files (raw or ``.gz``), or torchvision's layout
            (``<root>/FashionMNIST/raw``). ``""`` searches ``$SSLBENCH_FASHION_MNIST``,
            ``/usr/share/datasets/fashion-mnist``, ``~/.cache/sslbench/fashion-mnist``, and
            finally tries torchvision's download into that cache.
        split: ``"train"`` or ``"test"``.

    Returns:
        The split. mean/std are the exact statistics of the *train* images of the same
        folder, so that both splits are normalised alike (a folder without train images
        falls back to the split's own statistics).

    Raises:
        FileNotFoundError: No folder holds the split's files.
        ValueError: A file is not the IDX data it should be.
    """
    if split not in _FASHION_FILES:
        raise ValueError(f"unknown Fashion-MNIST split '{split}'; use 'train' or 'test'")
    image_name, label_name = _FASHION_FILES[split]
    directory = _fashion_dir(root, (image_name, label_name))
    image_path, label_path = _find(directory, image_name), _find(directory, label_name)
    assert image_path is not None and label_path is not None  # _fashion_dir checked
    images = _read_fashion_images(image_path)
    labels = read_idx(label_path)
    if labels.dtype != np.uint8 or labels.shape != images.shape[:1]:
        raise ValueError(
            f"{label_path}: expected {images.shape[0]} uint8 labels (magic 0x00000801), "
            f"got {labels.dtype} {labels.shape}"
        )
    if labels.size and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise ValueError(f"{label_path}: label {labels.max()} is not a class index 0..9")
    images_t = torch.from_numpy(images).unsqueeze(1)  # (N, 1, 28, 28)
    stats_source = images_t
    train_path = _find(directory, _FASHION_FILES["train"][0])
    if split != "train" and train_path is not None:
        stats_source = torch.from_numpy(_read_fashion_images(train_path)).unsqueeze(1)
    mean, std = channel_stats(stats_source)
    return ImageSet(
        images_t, torch.from_numpy(labels).long(), list(FASHION_MNIST_CLASSES), mean, std
    )


# The standard SSL benchmarks (CIFAR-10/100, STL-10, ImageNet-100) register themselves.
from trainer import standard_datasets as _standard  # noqa: E402,F401

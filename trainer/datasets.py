"""Pretraining datasets, registered by name: in memory (:class:`ImageSet`) or read while
training (:class:`StreamSet`, registered with :func:`register_streamed`; the image-file
sets are in ``trainer.file_datasets``).

The pretraining loop slices batches straight out of a uint8 tensor (no DataLoader
workers), so a dataset is an :class:`ImageSet`: all images, labels, class names and
the per-channel statistics used to normalise after augmentation. The IDX reader/writer
and the Fashion-MNIST file search live in ``dataroom.idx`` (re-exported here).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from backbones.registry import Registry
from dataroom.idx import FASHION_FILES as _FASHION_FILES
from dataroom.idx import fashion_dir as _fashion_dir
from dataroom.idx import find_file as _find
from dataroom.idx import read_idx, write_idx

__all__ = ["DATASETS", "FASHION_MNIST_CLASSES", "ImageSet", "StreamSet", "channel_stats",
           "fashion_mnist", "is_streamed", "read_idx", "register_streamed", "write_idx"]

# name → factory(root="", split="train", ...) returning an ImageSet (held in memory) or, for
# the names registered with ``register_streamed``, a StreamSet (read while training).
DATASETS: Registry[Callable[..., Any]] = Registry("dataset")

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


@dataclass
class StreamSet:
    """A training set read while training, as a stream of ``dataroom.Batch`` (image files;
    anything that yields batches of pre-cropped uint8 views).

    Attributes:
        name: Dataset name.
        num_images: Images of the training split (an epoch draws ``num_images // G`` steps).
        classes: Class names; empty for an unlabeled set (labels -1).
        mean: Per-channel mean in [0, 1] for normalisation after the colour augmentation.
        std: Per-channel std in [0, 1].
        open: ``open(views=, seed=, global_batch=, rank=, world_size=, start_step=,
            stop_step=, num_workers=, decode=, device=, local_world_size=)`` → an iterable of
            this rank's ``dataroom.Batch`` for steps ``start_step..stop_step - 1``, in order,
            each a function of (seed, step) only (``dataroom.PretrainLoader``'s arguments).
        val: ``val(crop_size, max_images)`` → labelled held-out images for the online probe,
            uint8 ``(N, 3, crop, crop)`` (resized and centre-cropped), labels indexing
            ``val_classes``; ``None`` = no held-out set (the probe is off).
        val_classes: Class names of ``val``'s labels (= ``classes`` for a labelled set).
        note: Where the held-out images come from, or why there are none (logged once and
            recorded in ``config.yaml``).
        root: The folder read.
    """

    name: str
    num_images: int
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    open: Callable[..., Any]
    val: Callable[[int, int], ImageSet] | None = None
    val_classes: list[str] = field(default_factory=list)
    note: str = ""
    root: str = ""

    def __len__(self) -> int:
        return self.num_images


def register_streamed(name: str) -> Callable[[Callable[..., StreamSet]], Callable[..., StreamSet]]:
    """Register a factory returning a :class:`StreamSet` under ``name`` in ``DATASETS``.

    The factory takes ``root``, ``split`` and optionally ``class_list`` / ``val_root``
    keywords (given only when set in the config); it should find and index its files (so
    ``--dry-run`` validates the root) but decode nothing.
    """

    def wrap(factory: Callable[..., StreamSet]) -> Callable[..., StreamSet]:
        factory.streamed = True  # type: ignore[attr-defined]
        return DATASETS.register(name)(factory)

    return wrap


def is_streamed(name: str) -> bool:
    """Whether the dataset ``name`` is read while training (a :class:`StreamSet`)."""
    return name in DATASETS and bool(getattr(DATASETS.get(name).factory, "streamed", False))


def build_train_set(data: Any, split: str = "train") -> ImageSet | StreamSet:
    """The dataset ``data.name`` (a ``DataConfig``): its ``split`` as an :class:`ImageSet`,
    or, for a streamed set, a :class:`StreamSet` of its training files.

    ``data.class_list`` and ``data.val_root`` go to the factories that take them.

    Raises:
        ConfigError: ``data.class_list`` / ``data.val_root`` given for a dataset without
            them.
        dataroom.DatasetError: The files are missing or malformed (the expected layout named).
    """
    return DATASETS.get(data.name).factory(**dataset_kwargs(data, split))


def dataset_kwargs(data: Any, split: str = "train") -> dict[str, Any]:
    """The factory keywords of ``data`` (a ``DataConfig``); raises ``ConfigError`` when
    ``data.class_list`` / ``data.val_root`` is given for a dataset that has neither."""
    from trainer.schema import ConfigError

    params = inspect.signature(DATASETS.get(data.name).factory).parameters
    kwargs: dict[str, Any] = {"root": data.root, "split": split}
    for key in ("class_list", "val_root"):
        value = getattr(data, key, "")
        if value:
            if key not in params:
                raise ConfigError(f"data.{key} does not apply to data.name={data.name} (only "
                                  "to image-file datasets)")
            kwargs[key] = value
    return kwargs


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
# The image-file datasets (ImageNet, image folders), read while training.
from trainer import file_datasets as _files  # noqa: E402,F401
from trainer import shard_datasets as _shards  # noqa: E402,F401  (data.name=shards)
from trainer import standard_datasets as _standard  # noqa: E402,F401

"""The standard SSL benchmarks' datasets for the in-memory pretraining path.

``cifar10``, ``cifar100`` and ``stl10`` are read by the data room's readers (the same ones
the eval battery uses) and handed to the trainer as an :class:`ImageSet`: the loop slices
batches out of the uint8 images and crops on the device. STL-10's ``train`` is
``train+unlabeled`` (105,000 images, labels -1 for the unlabeled ones, as solo-learn
pretrains); its 100,000 unlabeled images stay memory-mapped (a
:class:`dataroom.arrays.RowStack`: each step gathers its rows and swaps H/W). ``test`` is
the held-out split of the online probe.

``imagenet100`` is registered so that configs naming it validate; its images are files,
read by the data room's file loader (``dataroom.open_files("imagenet100", ...)``), not by
this in-memory path.

Roots: ``data.root``, else ``$SSLBENCH_CIFAR10`` / ``$SSLBENCH_CIFAR100`` /
``$SSLBENCH_STL10`` (``$SSLBENCH_IMAGENET`` for ImageNet-100), else ``datasets/<name>``
and ``~/.cache/sslbench/<name>``; a missing or malformed set is a one-line error naming
the expected layout.
"""

from __future__ import annotations

import numpy as np
import torch

from dataroom.arrays import ImageArrays, RowStack
from dataroom.cifar import read_cifar
from dataroom.imagenet100 import IMAGENET100_LAYOUT
from dataroom.readers import DatasetError
from dataroom.stl10 import read_stl10
from trainer.datasets import DATASETS, ImageSet, channel_stats


def _images(arrays: ImageArrays) -> torch.Tensor | RowStack:
    """A tensor view of in-memory images; memory-mapped or swapped rows stay a RowStack."""
    stack = arrays.images
    if len(stack.parts) == 1:
        array, swapped = stack.parts[0]
        if not swapped and not isinstance(array, np.memmap):
            return torch.from_numpy(array)[stack.start:stack.stop]
    return stack


def _image_set(arrays: ImageArrays, stats_from: ImageArrays) -> ImageSet:
    images = _images(arrays)
    source = _images(stats_from)
    if not isinstance(source, torch.Tensor):
        source = source.take(np.arange(len(source)))
    mean, std = channel_stats(source)
    return ImageSet(images, torch.from_numpy(arrays.labels), list(arrays.classes), mean, std)


def _cifar(name: str, root: str, split: str) -> ImageSet:
    arrays = read_cifar(name, root, split)
    train = arrays if split == "train" else read_cifar(name, root, "train")
    return _image_set(arrays, train)


@DATASETS.register("cifar10")
def cifar10(root: str = "", split: str = "train") -> ImageSet:
    """CIFAR-10 (Krizhevsky 2009): 50,000 train / 10,000 test 32×32 RGB images, 10 classes.

    mean/std are the exact statistics of the train images (both splits normalised alike).
    """
    return _cifar("cifar10", root, split)


@DATASETS.register("cifar100")
def cifar100(root: str = "", split: str = "train") -> ImageSet:
    """CIFAR-100: 50,000 train / 10,000 test 32×32 RGB images, 100 fine classes."""
    return _cifar("cifar100", root, split)


@DATASETS.register("stl10")
def stl10(root: str = "", split: str = "train") -> ImageSet:
    """STL-10 (Coates et al. 2011) at 96×96: ``train`` = train+unlabeled (105,000 images).

    Other splits (``test``, ``unlabeled``, ``train+unlabeled``, and ``labelled`` for the
    5,000 labelled train images) are read as named.

    NOTE: mean/std are those of the 5,000 labelled train images, not of all 105,000:
    reading the 2.76 GB unlabeled file at every start to count its pixels is not worth
    the third decimal.
    """
    names = {"train": "train+unlabeled", "labelled": "train"}
    arrays = read_stl10(root, names.get(split, split))
    labelled = arrays if arrays.split == "train" else read_stl10(root, "train")
    return _image_set(arrays, labelled)


@DATASETS.register("imagenet100")
def imagenet100(root: str = "", split: str = "train") -> ImageSet:
    """ImageNet-100 is read from image files by the file loader, never held in memory."""
    raise DatasetError(
        "imagenet100 is read from image files by the data room's file loader "
        "(dataroom.open_files('imagenet100', root, split)); the trainer's in-memory path "
        f"cannot hold it. Its layout: {IMAGENET100_LAYOUT}")

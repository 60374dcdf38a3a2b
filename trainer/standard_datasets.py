"""The standard SSL benchmarks' datasets for the in-memory pretraining path.

``cifar10``, ``cifar100`` and ``stl10`` are read by the data room's readers (the same ones
the eval battery uses) and handed to the trainer as an :class:`ImageSet`: the loop slices
batches out of the uint8 images and crops on the device. STL-10's ``train`` is
``train+unlabeled`` (105,000 images, labels -1 for the unlabeled ones, as solo-learn
pretrains); its 100,000 unlabeled images stay memory-mapped (a
:class:`dataroom.arrays.RowStack`: each step gathers its rows and swaps H/W). ``test`` is
the held-out split of the online probe.

``imagenet100`` (image files, read while training) is registered in
``trainer.file_datasets``.

Roots: ``data.root``, else ``$SSLBENCH_CIFAR10`` / ``$SSLBENCH_CIFAR100`` /
``$SSLBENCH_STL10``, else ``datasets/<name>``
and ``~/.cache/sslbench/<name>``; a missing or malformed set is a one-line error naming
the expected layout.
"""

from __future__ import annotations

import numpy as np
import torch

from dataroom.arrays import ImageArrays, RowStack
from dataroom.cifar import NORMALIZATION, read_cifar
from dataroom.stl10 import NORMALIZATION as STL10_NORMALIZATION
from dataroom.stl10 import read_stl10
from trainer.datasets import DATASETS, ImageSet


def _images(arrays: ImageArrays) -> torch.Tensor | RowStack:
    """A tensor view of in-memory images; memory-mapped or swapped rows stay a RowStack."""
    stack = arrays.images
    if len(stack.parts) == 1:
        array, swapped = stack.parts[0]
        if not swapped and not isinstance(array, np.memmap):
            return torch.from_numpy(array)[stack.start:stack.stop]
    return stack


def _image_set(arrays: ImageArrays, norm: tuple[tuple[float, ...], tuple[float, ...]]
               ) -> ImageSet:
    return ImageSet(_images(arrays), torch.from_numpy(arrays.labels), list(arrays.classes),
                    *norm)


@DATASETS.register("cifar10")
def cifar10(root: str = "", split: str = "train") -> ImageSet:
    """CIFAR-10 (Krizhevsky 2009): 50,000 train / 10,000 test 32×32 RGB images, 10 classes.

    mean/std: the train statistics solo-learn uses (``dataroom.cifar.NORMALIZATION``), the
    same the ``cifar10`` eval suite normalises with.
    """
    return _image_set(read_cifar("cifar10", root, split), NORMALIZATION["cifar10"])


@DATASETS.register("cifar100")
def cifar100(root: str = "", split: str = "train") -> ImageSet:
    """CIFAR-100: 50,000 train / 10,000 test 32×32 RGB images, 100 fine classes."""
    return _image_set(read_cifar("cifar100", root, split), NORMALIZATION["cifar100"])


@DATASETS.register("stl10")
def stl10(root: str = "", split: str = "train") -> ImageSet:
    """STL-10 (Coates et al. 2011) at 96×96: ``train`` = train+unlabeled (105,000 images).

    Other splits (``test``, ``unlabeled``, ``train+unlabeled``, and ``labelled`` for the
    5,000 labelled train images) are read as named. mean/std: solo-learn's
    (``dataroom.stl10.NORMALIZATION``), as in the ``stl10`` eval suite.
    """
    names = {"train": "train+unlabeled", "labelled": "train"}
    return _image_set(read_stl10(root, names.get(split, split)), STL10_NORMALIZATION)

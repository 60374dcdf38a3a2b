"""What the trainer calls: the pretraining file sets by name, and the step loader."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from dataroom.device import DeviceDecoder
from dataroom.imagenet100 import imagenet100
from dataroom.loader import (
    Batch,
    StepBatchSampler,
    ViewsDataset,
    ViewSpec,
    _identity,
    default_num_workers,
    worker_init,
)
from dataroom.readers import (
    UNLABELED_LAYOUT,
    DatasetError,
    FileSet,
    image_folder,
    imagenet,
    unlabeled_folder,
)


def _imagenet(root: str, split: str, class_list: str | None) -> FileSet:
    return imagenet(root, split, class_list=class_list or None)


def _imagenet100(root: str, split: str, class_list: str | None) -> FileSet:
    return imagenet100(root, split, class_list=class_list or None)


def _image_folder(root: str, split: str, class_list: str | None) -> FileSet:
    if not root:
        raise DatasetError("image_folder needs a root (data.root): <root>/<split>/<class>/...")
    return image_folder(root, split, class_list=class_list or None)


def _unlabeled(root: str, split: str, class_list: str | None) -> FileSet:
    if not root:
        raise DatasetError("unlabeled_folder needs a root (data.root). "
                           f"Expected {UNLABELED_LAYOUT}")
    if split != "train":
        raise DatasetError(f"unlabeled_folder has no '{split}' split: give a labelled "
                           "image folder for validation (data.val_root)")
    if class_list:
        raise DatasetError("unlabeled_folder has no classes to select (class_list given)")
    return unlabeled_folder(root)


FOLDER_DATASETS: dict[str, Callable[[str, str, str | None], FileSet]] = {
    "imagenet": _imagenet,  # root "" = $SSLBENCH_IMAGENET
    "imagenet100": _imagenet100,  # the CMC / solo-learn 100 classes of an ImageNet root
    "image_folder": _image_folder,
    "unlabeled_folder": _unlabeled,
}


def open_files(name: str, root: str | Path = "", split: str = "train",
               class_list: str | Path | None = None) -> FileSet:
    """The file set ``name`` (``imagenet``, ``imagenet100``, ``image_folder``,
    ``unlabeled_folder``).

    Raises:
        DatasetError: Unknown name (the message lists the valid ones), or a missing,
            empty or malformed folder (the message names the expected layout).
    """
    if name not in FOLDER_DATASETS:
        raise DatasetError(f"unknown image dataset '{name}'; valid: "
                           f"{', '.join(sorted(FOLDER_DATASETS))}")
    return FOLDER_DATASETS[name](str(root), split, str(class_list) if class_list else None)


class PretrainLoader:
    """This rank's :class:`Batch` of every step from ``start_step`` to ``stop_step``.

    Args:
        files: The training images.
        views: One :class:`ViewSpec` per view.
        seed: Run seed (epoch order, crops, flips, substitutes).
        global_batch: Rows per step over all ranks.
        rank: This process's rank.
        world_size: Number of processes.
        start_step: First step (the resume point).
        stop_step: Step to stop before (``None`` = endless).
        num_workers: Loader processes; ``None`` = :func:`default_num_workers`; 0 = decode
            in this process.
        decode: ``"cpu"`` (workers decode and crop) or ``"gpu"`` (workers read bytes and
            draw boxes; JPEGs decoded and cropped on ``device`` in this process).
        device: The training device (pinning, and the decode device for ``"gpu"``).
        prefetch_factor: Batches in flight per worker.
        order: ``order(epoch) -> permutation``; default the trainer's (seed, epoch) order.
        max_attempts: Substitutes tried for an unreadable image before the mean grey.
        local_world_size: Processes on this node (for the default worker count).
    """

    def __init__(self, files: FileSet, views: Sequence[ViewSpec], *, seed: int,
                 global_batch: int, rank: int = 0, world_size: int = 1, start_step: int = 0,
                 stop_step: int | None = None, num_workers: int | None = None,
                 decode: str = "cpu", device: torch.device | str = "cpu",
                 prefetch_factor: int = 2,
                 order: Callable[[int], Tensor | np.ndarray] | None = None,
                 max_attempts: int = 3, local_world_size: int = 1) -> None:
        if decode not in ("cpu", "gpu"):
            raise ValueError(f"decode must be 'cpu' or 'gpu', got {decode!r}")
        self.device = torch.device(device)
        self.sampler = StepBatchSampler(len(files), global_batch, seed=seed, rank=rank,
                                        world_size=world_size, start_step=start_step,
                                        stop_step=stop_step, order=order)
        self.dataset = ViewsDataset(files, views, seed, "device" if decode == "gpu" else "cpu",
                                    max_attempts=max_attempts)
        self.decoder = DeviceDecoder(self.dataset, self.device) if decode == "gpu" else None
        workers = default_num_workers(local_world_size) if num_workers is None else num_workers
        self.num_workers = workers
        self.loader = DataLoader(
            self.dataset, batch_sampler=self.sampler, collate_fn=_identity, num_workers=workers,
            pin_memory=self.device.type == "cuda" and torch.cuda.is_available(),
            worker_init_fn=worker_init if workers else None, persistent_workers=workers > 0,
            prefetch_factor=prefetch_factor if workers else None)

    @property
    def steps_per_epoch(self) -> int:
        """Full global batches per epoch (the last partial one is dropped)."""
        return self.sampler.steps_per_epoch

    @property
    def images_per_epoch(self) -> int:
        """Images drawn per epoch over all ranks."""
        return self.sampler.steps_per_epoch * self.sampler.global_batch

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[Batch]:
        for item in self.loader:
            yield self.decoder(item) if self.decoder is not None else item

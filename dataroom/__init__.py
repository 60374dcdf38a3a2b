"""The data room: on-disk image layouts, the file index, decoding and the pretraining loader.

It sits below ``trainer`` and ``eval`` and imports neither (nor methods, sweeps, results).
One reader per layout serves the whole project (``eval.datasets`` re-exports these).

Modules:
    readers: ``imagenet``, ``image_folder`` (class-list subsets), ``unlabeled_folder``,
        ``imagenet_subset`` (SimCLR 1 %/10 %) → :class:`FileSet`; :class:`DatasetError`.
    index: the cached file index of a tree (``index_tree``), invalidated by folder mtimes.
    paths: :class:`PathTable`, paths as two numpy arrays (no per-worker copy-on-access).
    geometry: crop+flip as a pure function of (seed, epoch, index, view, H, W).
    decode: PIL decoding by content, ``draft`` (DCT-scaled) decode + per-view box resize.
    loader: :class:`StepBatchSampler`, :class:`ViewsDataset`, :class:`Batch`.
    device: :class:`DeviceDecoder`, the batched nvJPEG path (``decode="gpu"``).
    badimages: :class:`BadImageLedger`, the per-epoch count and the stop decision.
    pretrain: ``open_files`` (file sets by name), :class:`PretrainLoader`.
    idx: the IDX (MNIST) reader/writer and the Fashion-MNIST file search.
    arrays: :class:`ImageArrays` / :class:`RowStack`, datasets stored as pixel arrays
        (in memory or memory-mapped), read by row.
    cifar: CIFAR-10/100 python-version batches through a restricted unpickler (``read_cifar``).
    stl10: STL-10 binary files, ``unlabeled`` memory-mapped (``read_stl10``).
    imagenet100: the CMC / solo-learn 100-class list (``lists/imagenet100.txt``) over an
        ImageNet root.
    synthetic: photograph-like images and trees in the exact formats (tests, benchmarks).
    shards: tar shards in the WebDataset layout (``key.jpg`` + ``key.cls``): the writer
        (``python -m dataroom.shards write|verify``), ``manifest.json``, the tar reader.
    stream: :class:`ShardLoader`, the pretraining loader over shards (local or ``pipe:``),
        split over ranks then workers, deterministic and resumable per (seed, step) for a
        given world size and worker count; yields the same :class:`Batch` objects.

The interface the trainer calls (the loop keeps its step counter, schedule and
checkpoints; everything here is a function of (seed, step), so nothing of the loader
needs saving except the bad-image ledger)::

    from dataroom import BadImageLedger, PretrainLoader, ViewSpec, open_files

    train = open_files(cfg.data.name, cfg.data.root, "train", class_list=...)  # DatasetError
    val = open_files("image_folder", cfg.data.val_root, "val")  # or imagenet's "val"
    views = [ViewSpec.of(v) for v in resolve_views(cfg.aug)]   # trainer's ViewAugConfig
    loader = PretrainLoader(
        train, views, seed=cfg.train.seed, global_batch=cfg.train.batch_size,
        rank=info.rank, world_size=info.world_size, start_step=resume_step,
        stop_step=total_steps, num_workers=cfg.data.num_workers,   # None = cores/rank − 1
        decode=cfg.data.decode,                                     # "cpu" | "gpu"
        device=info.device, local_world_size=info.local_world_size)
    steps_per_epoch = loader.steps_per_epoch            # = len(train) // global batch
    ledger = BadImageLedger(loader.images_per_epoch, cfg.data.max_bad_fraction)
    ledger.load_state_dict(ckpt.get("bad_images", {}))  # on resume
    for batch in loader:                                # batch.step == step, in order
        batch = batch.to(info.device, non_blocking=True)     # views uint8 NCHW
        views = run.augment.colour(batch.views, seed=cfg.train.seed * 1_000_000_007 + batch.step,
                                   global_batch=G, offset=info.rank * G // info.world_size)
        ... forward/backward with batch.labels (int64; -1 only for an unlabeled set) ...
        num_bad = all_reduce_sum(batch.num_bad)          # over ranks
        ledger.add(batch.epoch, num_bad, batch.bad)      # per-epoch count for metrics.jsonl
        ledger.check(batch.epoch)                        # TooManyBadImages, paths listed
    # checkpoint: {"bad_images": ledger.state_dict(), ...}

``Batch``: ``step``, ``epoch``, ``views`` (one uint8 (B, 3, S, S) per view, NCHW — call
``.contiguous(memory_format=torch.channels_last)`` on the device when wanted;
on ``device`` already with ``decode="gpu"``), ``labels`` int64 (B,), ``indices`` (asked),
``sources`` (decoded: a substitute's index, -1 = mean grey), ``bad`` [(path, reason)],
``num_bad``. ``MultiViewAugment.colour`` (trainer/augment.py) applies jitter, grayscale,
blur, solarize and normalisation to such pre-cropped views, drawing the same colour
parameters as ``MultiViewAugment.forward``.
"""

from __future__ import annotations

from dataroom.arrays import ImageArrays, RowStack
from dataroom.badimages import BadImageLedger, TooManyBadImages, bad_fraction_error
from dataroom.cifar import read_cifar
from dataroom.decode import DECODE_ERRORS, DecodeError, load_rgb
from dataroom.imagenet100 import IMAGENET100_LIST, imagenet100
from dataroom.index import IMAGE_EXTENSIONS, index_tree
from dataroom.loader import Batch, StepBatchSampler, ViewsDataset, ViewSpec, epoch_order
from dataroom.paths import PathTable
from dataroom.pretrain import FOLDER_DATASETS, PretrainLoader, open_files
from dataroom.readers import (
    DatasetError,
    FileSet,
    image_folder,
    imagenet,
    imagenet_root,
    imagenet_subset,
    unlabeled_folder,
)
from dataroom.stl10 import read_stl10

_LAZY = {"ShardError": "dataroom.shards", "load_manifest": "dataroom.shards",
         "ShardLoader": "dataroom.stream"}


def __getattr__(name: str) -> object:
    # Imported on first use, so that `python -m dataroom.shards` runs a module not yet
    # imported by the package (runpy warns otherwise).
    if name in _LAZY:
        import importlib  # noqa: PLC0415

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dataroom' has no attribute {name!r}")


__all__ = [
    "DECODE_ERRORS", "FOLDER_DATASETS", "IMAGE_EXTENSIONS", "IMAGENET100_LIST",
    "BadImageLedger", "Batch", "DatasetError", "DecodeError", "FileSet", "ImageArrays",
    "PathTable", "PretrainLoader", "RowStack", "ShardError", "ShardLoader",
    "StepBatchSampler", "TooManyBadImages",
    "ViewSpec", "ViewsDataset", "bad_fraction_error", "epoch_order", "image_folder",
    "imagenet", "imagenet100", "imagenet_root", "imagenet_subset", "index_tree",
    "load_manifest", "load_rgb",
    "open_files", "read_cifar", "read_stl10", "unlabeled_folder",
]

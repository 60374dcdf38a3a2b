"""The ``shards`` pretraining dataset: tar shards written by ``python -m dataroom.shards``,
streamed while training by :class:`dataroom.ShardLoader`.

``data.root`` is the shard folder, its ``manifest.json``, or a ``pipe:`` URL template naming
the whole set (``pipe:aws s3 cp s3://bucket/in100/{name} -``: the manifest and every shard
fetched by that command). The manifest is read and checked when the run is planned
(``--dry-run`` and the launcher too): names, presence and sizes of local shards.

Normalisation follows the set the shards were written from (the manifest's ``dataset``):
CIFAR's and STL-10's own statistics (as their in-memory datasets), ImageNet's otherwise.
The online probe uses ``data.val_root`` (a labelled ``<val_root>/<class>/<images>`` folder,
classes named as the shards' classes); without it the probe is off (the collapse
diagnostics still run). ``data.num_workers`` sets the loader workers and so the stream's
slots: see ``dataroom.stream`` for what a different worker count or world size changes.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from dataroom import DatasetError, FileSet, ShardLoader
from dataroom.cifar import NORMALIZATION as CIFAR_NORMALIZATION
from dataroom.stl10 import NORMALIZATION as STL10_NORMALIZATION
from dataroom.stream import open_manifest
from trainer.datasets import ImageSet, StreamSet, register_streamed
from trainer.file_datasets import IMAGENET_MEAN, IMAGENET_STD, _val_root_files, eval_images

SHARDS_LAYOUT = ("a shard set written by `python -m dataroom.shards write SOURCE OUT`: the "
                 "folder OUT, its manifest.json, or a pipe: URL template with {name}")


def _normalization(dataset: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if dataset in CIFAR_NORMALIZATION:
        return CIFAR_NORMALIZATION[dataset]
    if dataset == "stl10":
        return STL10_NORMALIZATION
    return IMAGENET_MEAN, IMAGENET_STD


def _open(root: str, **kwargs: Any) -> ShardLoader:
    if kwargs.get("num_workers") is not None and kwargs["num_workers"] < 0:
        kwargs["num_workers"] = None  # -1 = the default share of the cores
    return ShardLoader(root, **kwargs)


def _val_set(files: FileSet, classes: list[str], mean: tuple[float, ...],
             std: tuple[float, ...], crop: int, max_images: int) -> ImageSet:
    images, labels = eval_images(files, crop, max_images)
    return ImageSet(images, labels, list(classes), mean, std)


@register_streamed("shards")
def shards(root: str = "", split: str = "train", val_root: str = "") -> StreamSet:
    """Tar shards (see the module doc) as a :class:`StreamSet`."""
    if split != "train":
        raise DatasetError(f"shards: the trainer reads the 'train' split, got '{split}'")
    if not root:
        raise DatasetError(f"shards needs data.root: {SHARDS_LAYOUT}")
    manifest, _ = open_manifest(root)
    mean, std = _normalization(str(manifest.meta.get("dataset", "")))
    val, val_classes = None, list(manifest.classes)
    if val_root:
        files, val_classes = _val_root_files(val_root, manifest.classes)
        val = partial(_val_set, files, val_classes, mean, std)
        note = f"online probe on data.val_root={val_root} ({len(files)} images)"
    else:
        note = ("online probe off: shards hold no held-out split; give data.val_root "
                "(collapse diagnostics still run)")
    return StreamSet("shards", manifest.num_samples, list(manifest.classes), mean, std,
                     partial(_open, str(root)), val, val_classes, note, str(root))

"""The image-file datasets of pretraining: ``imagenet``, ``imagenet100``, ``image_folder``,
``unlabeled_folder``, read while training by the data room's loader.

Each factory finds and indexes the training files (``dataroom.open_files``: a missing, empty
or malformed folder is a :class:`dataroom.DatasetError` naming the expected layout), picks
the held-out images of the online probe, and returns a :class:`trainer.datasets.StreamSet`
whose ``open`` is :class:`dataroom.PretrainLoader`. Nothing is decoded here.

Held-out images of the online probe, in this order:

- ``data.val_root``: a labelled ``<val_root>/<class>/<images>`` folder. With a labelled
  training set its class folders must be training classes (labelled by the training
  set's index); with ``unlabeled_folder`` it brings its own classes.
- the set's own ``val`` split (``<root>/val/<class>/...``: ImageNet's val, an image
  folder's), when the folder exists;
- none: the probe is off (said once in the log and recorded in ``config.yaml``); the
  collapse diagnostics still run.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from dataroom import DatasetError, FileSet, PretrainLoader, image_folder, open_files
from dataroom.decode import DecodeError, load_rgb
from trainer.datasets import ImageSet, StreamSet, register_streamed

# torchvision's ImageNet statistics (every peer normalises ImageNet-like photographs so)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def eval_images(files: FileSet, crop: int, max_images: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to ``max_images`` images spread evenly over ``files`` (so over its classes),
    resized (shorter side → ``crop``, bicubic, antialiased) and centre-cropped, as the
    trainer's ``EvalTransform`` does; unreadable files are left out.

    Returns:
        uint8 ``(N, 3, crop, crop)`` images and int64 ``(N,)`` labels.
    """
    n = min(len(files), max_images)
    picks = np.unique(np.linspace(0, len(files) - 1, n).round().astype(np.int64))
    images, labels = [], []
    for i in picks.tolist():
        try:
            img = load_rgb(files.paths[i])
        except DecodeError:
            continue
        w, h = img.size
        short, long = min(h, w), max(h, w)
        new_long = int(crop * long / short)
        size = (crop, new_long) if h <= w else (new_long, crop)  # (h, w)
        if size != (h, w):
            img = img.resize((size[1], size[0]), Image.Resampling.BICUBIC)
        top, left = (int(round((s - crop) / 2)) for s in size)
        pixels = np.asarray(img)[top:top + crop, left:left + crop]
        images.append(torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))))
        labels.append(int(files.labels[i]))
    if not images:
        return torch.zeros(0, 3, crop, crop, dtype=torch.uint8), torch.zeros(0, dtype=torch.long)
    return torch.stack(images), torch.as_tensor(labels, dtype=torch.long)


def _val_set(files: FileSet, classes: list[str], crop: int, max_images: int) -> ImageSet:
    images, labels = eval_images(files, crop, max_images)
    return ImageSet(images, labels, list(classes), IMAGENET_MEAN, IMAGENET_STD)


def _val_root_files(val_root: str, train_classes: list[str]) -> tuple[FileSet, list[str]]:
    """``<val_root>/<class>/<images>``, labelled by the training classes when there are."""
    path = Path(val_root).expanduser().resolve()
    files = image_folder(path.parent, path.name, name="val_root", classes_from=path.name,
                         layout="a labelled image folder: <val_root>/<class>/<images>")
    if not train_classes:
        return files, files.classes
    index = {c: i for i, c in enumerate(train_classes)}
    foreign = [c for c in files.classes if c not in index]
    if foreign:
        raise DatasetError(f"data.val_root={val_root}: class folder(s) {', '.join(foreign[:3])} "
                           "are not training classes (the probe's classes come from the "
                           "training set)")
    remap = np.asarray([index[c] for c in files.classes], dtype=np.int64)
    return FileSet(files.name, files.split, files.paths, remap[files.labels], train_classes,
                   files.fingerprint, files.root), train_classes


def _open(files: FileSet, **kwargs: Any) -> PretrainLoader:
    if kwargs.get("num_workers") is not None and kwargs["num_workers"] < 0:
        kwargs["num_workers"] = None  # -1 = the default share of the cores
    return PretrainLoader(files, **kwargs)


def _stream(name: str, root: str, class_list: str, val_root: str) -> StreamSet:
    train = open_files(name, root, "train", class_list or None)
    val_files: FileSet | None = None
    val_classes = list(train.classes)
    if val_root:
        val_files, val_classes = _val_root_files(val_root, train.classes)
        note = f"online probe on data.val_root={val_root} ({len(val_files)} images)"
    elif name != "unlabeled_folder" and (Path(train.root) / "val").is_dir():
        val_files = open_files(name, root, "val", class_list or None)
        note = f"online probe on {Path(train.root) / 'val'} ({len(val_files)} images)"
    elif name == "unlabeled_folder":
        note = ("online probe off: unlabeled_folder has no labels and no data.val_root was "
                "given (collapse diagnostics still run)")
    else:
        note = (f"online probe off: no {Path(train.root) / 'val'} and no data.val_root "
                "(collapse diagnostics still run)")
    val = (partial(_val_set, val_files, val_classes) if val_files is not None else None)
    return StreamSet(name, len(train), list(train.classes), IMAGENET_MEAN, IMAGENET_STD,
                     partial(_open, train), val, val_classes, note, train.root)


def _register(name: str) -> None:
    @register_streamed(name)
    def factory(root: str = "", split: str = "train", class_list: str = "",
                val_root: str = "") -> StreamSet:
        if split != "train":
            raise DatasetError(f"{name}: the trainer reads the 'train' split, got '{split}'")
        return _stream(name, root, class_list, val_root)

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = f"The ``{name}`` image files as a :class:`StreamSet` (see module doc)."


for _name in ("imagenet", "imagenet100", "image_folder", "unlabeled_folder"):
    _register(_name)

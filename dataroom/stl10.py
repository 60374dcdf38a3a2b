"""STL-10 in its official binary layout (``stl10_binary``), the unlabeled split memory-mapped.

Coates, Lee, Ng 2011 (https://cs.stanford.edu/~acoates/stl10/): ``*_X.bin`` are raw uint8
96×96 RGB images stored column-major: read as ``(N, 3, 96, 96)`` the last two axes are
(W, H), so they are swapped (torchvision ``datasets/stl10.py``: reshape, then transpose
H/W). ``*_y.bin`` are uint8 labels 1..10 (0..9 here); ``class_names.txt`` names them.
5,000 train, 8,000 test and 100,000 unlabeled images; ``unlabeled_X.bin`` is 2.76 GB and is
never loaded: it is an ``np.memmap`` inside a :class:`~dataroom.arrays.RowStack`, whose
batches gather their rows and swap H/W per batch. ``train+unlabeled`` (labels -1 for the
unlabeled images) is what solo-learn and the papers pretrain on.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from dataroom.arrays import DatasetNotFound, ImageArrays, RowStack
from dataroom.readers import DatasetError

STL10_DIR = "stl10_binary"
SIDE = 96
IMAGE_BYTES = 3 * SIDE * SIDE  # 27,648
STL10_LAYOUT = (
    f"STL-10, binary version (stl10_binary.tar.gz): <root>/{STL10_DIR}/{{train_X.bin, "
    "train_y.bin, test_X.bin, test_y.bin, unlabeled_X.bin, class_names.txt}: *_X.bin raw "
    "uint8 96×96 RGB images, column-major (27,648 bytes each), *_y.bin uint8 labels 1..10, "
    "class_names.txt one name per line"
)
SPLITS = ("train", "test", "unlabeled", "train+unlabeled")
ENV = "SSLBENCH_STL10"
# NOTE: solo-learn normalises STL-10 with (nearly) CIFAR-10's statistics (MEANS_N_STD in
# solo/data/pretrain_dataloader.py and classification_dataloader.py); we follow it, in
# pretraining and the eval suite alike.
NORMALIZATION = ((0.4914, 0.4823, 0.4466), (0.247, 0.243, 0.261))
SEARCH = ("datasets/stl10", "~/.cache/sslbench/stl10")  # after $SSLBENCH_STL10


def stl10_dir(root: str | Path = "") -> Path:
    """The ``stl10_binary`` folder: under ``root`` (or ``root`` itself); ``""`` searches
    ``$SSLBENCH_STL10``, ``datasets/stl10`` and ``~/.cache/sslbench/stl10``.

    Raises:
        DatasetNotFound: Not found; the message names the places searched and the layout.
    """
    if root:
        candidates = [Path(root).expanduser()]
    else:
        env = os.environ.get(ENV, "")
        candidates = ([Path(env).expanduser()] if env else []) + [Path(s).expanduser()
                                                                   for s in SEARCH]
    for c in candidates:
        if c.name == STL10_DIR and c.is_dir():
            return c
        if (c / STL10_DIR).is_dir():
            return c / STL10_DIR
    hint = "" if root else f" (give data.root, or set ${ENV})"
    raise DatasetNotFound(f"stl10: no {STL10_DIR} folder in {', '.join(map(str, candidates))}"
                          f"{hint}. Expected {STL10_LAYOUT}")


def _images(path: Path, mmap: bool) -> np.ndarray:
    """``(N, 3, W, H)`` uint8 as stored (column-major images)."""
    if not path.is_file():
        raise DatasetError(f"{path}: missing. Expected {STL10_LAYOUT}")
    size = path.stat().st_size
    if size == 0 or size % IMAGE_BYTES:
        raise DatasetError(f"{path}: {size} bytes is not a whole number of 96×96×3 images "
                           f"({IMAGE_BYTES} bytes each; truncated?). Expected {STL10_LAYOUT}")
    shape = (size // IMAGE_BYTES, 3, SIDE, SIDE)
    if mmap:  # copy-on-write: writable for torch, never written back
        return np.memmap(path, dtype=np.uint8, mode="c", shape=shape)
    return np.fromfile(path, dtype=np.uint8).reshape(shape)


def _labels(path: Path, n: int, num_classes: int) -> np.ndarray:
    if not path.is_file():
        raise DatasetError(f"{path}: missing. Expected {STL10_LAYOUT}")
    y = np.fromfile(path, dtype=np.uint8).astype(np.int64)
    if len(y) != n:
        raise DatasetError(f"{path}: {len(y)} labels for {n} images in "
                           f"{path.name.replace('_y', '_X')}. Expected {STL10_LAYOUT}")
    if n and (y.min() < 1 or y.max() > num_classes):
        raise DatasetError(f"{path}: labels {y.min()}..{y.max()}, expected 1..{num_classes}. "
                           f"Expected {STL10_LAYOUT}")
    return y - 1


def _classes(base: Path) -> list[str]:
    path = base / "class_names.txt"
    if not path.is_file():
        raise DatasetError(f"{path}: missing. Expected {STL10_LAYOUT}")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise DatasetError(f"{path}: empty. Expected {STL10_LAYOUT}")
    return names


def read_stl10(root: str | Path = "", split: str = "train") -> ImageArrays:
    """An STL-10 split: ``train``, ``test``, ``unlabeled`` or ``train+unlabeled``.

    ``train`` and ``test`` are read into memory (138 / 221 MB); ``unlabeled`` is
    memory-mapped. Images come out as ``(N, 3, 96, 96)`` in (C, H, W) order.

    Raises:
        DatasetError: A missing or truncated file, labels outside 1..10, an unknown split.
    """
    if split not in SPLITS:
        raise DatasetError(f"stl10 has no '{split}' split; valid: {', '.join(SPLITS)}")
    base = stl10_dir(root)
    classes = _classes(base)
    parts: list[tuple[np.ndarray, bool]] = []
    labels, files = [], []
    for part in split.split("+"):
        x_path = base / f"{part}_X.bin"
        x = _images(x_path, mmap=part == "unlabeled")
        files.append(str(x_path))
        if part == "unlabeled":
            parts.append((x, True))  # H/W swapped per gathered batch
            labels.append(np.full(len(x), -1, dtype=np.int64))
        else:
            parts.append((np.ascontiguousarray(x.transpose(0, 1, 3, 2)), False))
            labels.append(_labels(base / f"{part}_y.bin", len(x), len(classes)))
    return ImageArrays("stl10", split, RowStack(parts), np.concatenate(labels), classes,
                       str(base.parent), files)


def write_stl10(root: str | Path, images: dict[str, np.ndarray],
                labels: dict[str, np.ndarray], classes: list[str] | None = None) -> Path:
    """Write an STL-10 set in the official binary layout under ``root/stl10_binary``.

    Args:
        root: Parent folder.
        images: ``{"train"|"test"|"unlabeled": uint8 (N, 3, 96, 96)}`` in (C, H, W) order.
        labels: ``{"train"|"test": (N,) ints 0..9}`` (written as 1..10).
        classes: Class names (default STL-10's ten).

    Returns:
        The ``stl10_binary`` folder.
    """
    out = Path(root) / STL10_DIR
    out.mkdir(parents=True, exist_ok=True)
    for part, x in images.items():
        x = np.asarray(x, dtype=np.uint8)
        np.ascontiguousarray(x.transpose(0, 1, 3, 2)).tofile(out / f"{part}_X.bin")
        if part in labels:
            (np.asarray(labels[part]) + 1).astype(np.uint8).tofile(out / f"{part}_y.bin")
    names = classes or ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey",
                        "ship", "truck"]
    (out / "class_names.txt").write_text("\n".join(names) + "\n")
    return out

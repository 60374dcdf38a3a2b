"""Readers of the on-disk image layouts, one per layout, for pretraining and evaluation.

Each reader returns a :class:`FileSet` (paths, labels, class names, a fingerprint) and
raises :class:`DatasetError`, whose message names the expected layout, when the folder is
missing, empty or malformed. Folder trees are listed through the cached file index
(``dataroom.index``); images are decoded later (``dataroom.decode``).
"""

from __future__ import annotations

import bisect
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dataroom.index import IMAGE_EXTENSIONS, index_tree
from dataroom.paths import PathTable

IMAGENET_ENV = "SSLBENCH_IMAGENET"
IMAGENET_LAYOUT = (
    "ImageNet-1k: <root>/train/<wnid>/*.JPEG and <root>/val/<wnid>/*.JPEG (val also in "
    "class sub-folders; label = index of the wnid in sorted order)"
)
FOLDER_LAYOUT = (
    "an image folder: <root>/<split>/<class>/<images> (any depth below the class folder; "
    "label = index of the class folder in sorted order)"
)
UNLABELED_LAYOUT = (
    "an unlabeled image folder: <root>/**/<images> (any nesting; files ending in "
    + "/".join(IMAGE_EXTENSIONS) + ", case-insensitive; hidden files and folders skipped)"
)
CLASS_LIST_LAYOUT = (
    "a class-list file: class folder names (e.g. ImageNet-100's wnids) separated by "
    "spaces or newlines"
)
SUBSET_LAYOUT = (
    "SimCLR subset list (google-research/simclr imagenet_subsets/{1,10}percent.txt): one "
    "'<wnid>_<n>.JPEG' per line, found at <root>/train/<wnid>/<name>"
)


class DatasetError(FileNotFoundError):
    """A dataset's files are missing or do not follow the expected layout."""


@dataclass
class FileSet:
    """The images of one split.

    Attributes:
        name: Dataset name (``"imagenet"``, ``"voc07"`` …).
        split: Split name as on disk.
        paths: Absolute image paths (a compact :class:`PathTable`, or a list).
        labels: ``(N,)`` int64 class indices (-1 = unlabeled), or ``(N, K)`` int8 in
            {1, 0, -1} (VOC).
        classes: Class names; index = label. Empty for an unlabeled set.
        fingerprint: SHA-1 of the names, paths (relative to ``root``) and labels.
        root: The dataset folder.
    """

    name: str
    split: str
    paths: PathTable
    labels: np.ndarray
    classes: list[str]
    fingerprint: str
    root: str

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, idx: np.ndarray, split: str) -> FileSet:
        """The rows ``idx`` as a new split (fingerprinted again)."""
        return make_fileset(self.name, split, self.paths.take(idx), self.labels[idx],
                            self.classes, Path(self.root))


def _joined_relative_to(paths: PathTable, root: Path) -> bytes:
    """Every path relative to ``root``, joined by ``\\n`` (absolute ones outside stay)."""
    data = paths.joined()
    if Path(paths.root) == root or not len(paths):
        return data
    rel = os.path.relpath(paths.root, root)
    if rel.startswith(".."):
        return "\n".join(paths).encode("utf-8", "surrogateescape")
    prefix = os.fsencode(rel) + os.sep.encode()
    return prefix + data.replace(b"\n", b"\n" + prefix)


def fingerprint(name: str, split: str, paths: PathTable, labels: np.ndarray, root: Path) -> str:
    """SHA-1 of the name, split, paths relative to ``root`` and labels."""
    h = hashlib.sha1(f"{name}|{split}|{len(paths)}|".encode())
    h.update(_joined_relative_to(paths, root))
    h.update(np.ascontiguousarray(labels).tobytes())
    return h.hexdigest()


def make_fileset(name: str, split: str, paths: PathTable | list[str], labels: np.ndarray,
                 classes: list[str], root: Path, layout: str = "") -> FileSet:
    """A :class:`FileSet`; ``paths`` may be a list (stored relative to ``root``)."""
    if not isinstance(paths, PathTable):
        paths = PathTable.from_paths(root, paths)
    if not len(paths):
        raise DatasetError(f"{name}/{split}: no images found under {root}"
                           + (f". Expected {layout}" if layout else ""))
    return FileSet(name, split, paths, labels, classes,
                   fingerprint(name, split, paths, labels, root), str(root))


def require_dir(path: Path, layout: str) -> None:
    """Raise :class:`DatasetError` naming ``layout`` unless ``path`` is a folder."""
    if not path.is_dir():
        raise DatasetError(f"{path} does not exist or is not a folder. Expected {layout}")


def class_dirs(split_dir: Path) -> list[str]:
    """The sorted, non-hidden sub-folders of ``split_dir``."""
    return sorted(e.name for e in os.scandir(split_dir)
                  if e.is_dir() and not e.name.startswith("."))


def read_class_list(path: str | Path) -> list[str]:
    """Class names from a whitespace-separated file, sorted and de-duplicated."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetError(f"class list {path} not found. Expected {CLASS_LIST_LAYOUT}")
    names = sorted(set(path.read_text().split()))
    if not names:
        raise DatasetError(f"class list {path} is empty. Expected {CLASS_LIST_LAYOUT}")
    return names


class _FirstPart:
    """``files[i]``'s first path component as a sort key (root-level files sort first)."""

    def __init__(self, files: PathTable) -> None:
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[int, bytes]:
        head, sep, _ = self.files.entry_bytes(i).partition(os.sep.encode())
        return (1, head) if sep else (0, b"")


def _class_ranges(files: PathTable, names: list[str]) -> list[tuple[int, int]]:
    """``[lo, hi)`` of the files under each class folder (the walk keeps them contiguous)."""
    keys = _FirstPart(files)
    out = []
    for name in names:
        key = (1, os.fsencode(name))
        out.append((bisect.bisect_left(keys, key), bisect.bisect_right(keys, key)))
    return out


def image_folder(root: str | Path, split: str, name: str = "image_folder",
                 layout: str = FOLDER_LAYOUT, classes_from: str = "train",
                 class_list: str | Path | None = None, cache: str | None = None) -> FileSet:
    """An ImageFolder split (torchvision semantics: images at any depth below a class folder).

    Args:
        root: Dataset folder holding ``<split>/<class>/...``.
        split: Split folder name.
        name: Dataset name recorded in the :class:`FileSet`.
        layout: Layout text for error messages.
        classes_from: Split whose class folders define the label indices (so that ``val``
            is labelled as ``train``); the split itself when that folder is absent.
        class_list: A file of class names (ImageNet-100 style subset): only those classes,
            labelled by their sorted order. A listed class absent from the split is an error.
        cache: Index cache folder (see ``dataroom.index.index_tree``).
    """
    root = Path(root).expanduser().resolve()
    split_dir, ref_dir = root / split, root / classes_from
    require_dir(split_dir, layout)
    present = class_dirs(split_dir)
    if class_list is not None:
        classes = read_class_list(class_list)
        missing = [c for c in classes if c not in present]
        if missing:
            raise DatasetError(f"{split_dir}: {len(missing)} classes of {class_list} have no "
                               f"folder (e.g. {', '.join(missing[:3])}). Expected {layout}")
    else:
        classes = class_dirs(ref_dir) if ref_dir.is_dir() and ref_dir != split_dir else present
        stray = [c for c in present if c not in set(classes)]
        if stray:
            raise DatasetError(f"{split_dir / stray[0]}: class folder absent from {ref_dir}. "
                               f"Expected {layout}")
    if not classes:
        raise DatasetError(f"{split_dir}: no class folders. Expected {layout}")
    files = index_tree(split_dir, cache=cache).files
    wanted = [c for c in classes if c in set(present)]
    ranges = _class_ranges(files, wanted)
    label_of = {c: i for i, c in enumerate(classes)}
    labels = np.concatenate([np.full(hi - lo, label_of[c], dtype=np.int64)
                             for c, (lo, hi) in zip(wanted, ranges)] or [np.zeros(0, np.int64)])
    if ranges and ranges[0][0] == 0 and ranges[-1][1] == len(files) and all(
            a[1] == b[0] for a, b in zip(ranges, ranges[1:])):
        paths = files  # every file is in a wanted class folder: no copy
    else:
        paths = files.take(np.concatenate([np.arange(lo, hi) for lo, hi in ranges]
                                          or [np.zeros(0, np.int64)]))
    return make_fileset(name, split, paths, labels, classes, root, layout)


def imagenet_root(root: str | Path = "") -> Path:
    """The ImageNet folder: ``root`` when given, else ``$SSLBENCH_IMAGENET``."""
    value = str(root) or os.environ.get(IMAGENET_ENV, "")
    if not value:
        raise DatasetError(f"no ImageNet folder given: pass a root (data.root) or set "
                           f"${IMAGENET_ENV}. Expected {IMAGENET_LAYOUT}")
    return Path(value).expanduser()


def imagenet(root: str | Path = "", split: str = "train",
             class_list: str | Path | None = None, cache: str | None = None) -> FileSet:
    """ImageNet-1k ``train`` or ``val`` in ImageFolder layout (or a class-list subset of it).

    Args:
        root: The ImageNet folder; ``""`` = ``$SSLBENCH_IMAGENET``.
        split: ``"train"`` or ``"val"``.
        class_list: Optional ImageNet-100-style file of wnids.
        cache: Index cache folder (see ``dataroom.index.index_tree``).
    """
    return image_folder(imagenet_root(root), split, "imagenet", IMAGENET_LAYOUT,
                        class_list=class_list, cache=cache)


def unlabeled_folder(root: str | Path, name: str = "unlabeled_folder",
                     cache: str | None = None) -> FileSet:
    """Every image under ``root`` at any depth, label -1, in the index's deterministic order."""
    root = Path(root).expanduser().resolve()
    require_dir(root, UNLABELED_LAYOUT)
    files = index_tree(root, cache=cache).files
    labels = np.full(len(files), -1, dtype=np.int64)
    return make_fileset(name, "train", files, labels, [], root, UNLABELED_LAYOUT)


def imagenet_subset(root: str | Path, list_file: str | Path, split: str) -> FileSet:
    """A SimCLR 1 % / 10 % subset of ImageNet train, labelled by the full train's classes.

    Args:
        root: The ImageNet folder (with ``train/``).
        list_file: ``1percent.txt`` or ``10percent.txt``.
        split: Name to give the subset (e.g. ``"train_1pct"``).
    """
    root = Path(root).expanduser().resolve()
    list_file = Path(list_file).expanduser()
    require_dir(root / "train", IMAGENET_LAYOUT)
    if not list_file.is_file():
        raise DatasetError(f"{list_file} not found. Expected {SUBSET_LAYOUT}")
    classes = class_dirs(root / "train")
    index = {c: i for i, c in enumerate(classes)}
    entries, labels, missing = [], [], []
    for line in list_file.read_text().split():
        wnid = line.split("_")[0]
        rel = os.path.join("train", wnid, line)
        if wnid not in index or not (root / rel).is_file():
            missing.append(line)
            continue
        entries.append(rel)
        labels.append(index[wnid])
    if missing:
        raise DatasetError(f"{list_file}: {len(missing)} listed images not found in "
                           f"{root / 'train'} (e.g. {', '.join(missing[:3])}). "
                           f"Expected {SUBSET_LAYOUT}")
    return make_fileset("imagenet", split, PathTable.from_entries(root, entries),
                        np.asarray(labels, dtype=np.int64), classes, root, SUBSET_LAYOUT)

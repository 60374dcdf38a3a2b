"""CIFAR-10 and CIFAR-100 in their official "python version" layout, read without trusting pickle.

The files (Krizhevsky 2009, https://www.cs.toronto.edu/~kriz/cifar.html) are Python 2
pickles of dicts: ``data`` a numpy uint8 ``(N, 3072)`` array (1024 red, then 1024 green,
then 1024 blue values of a 32×32 image, rows top to bottom), ``labels`` (CIFAR-10) or
``fine_labels`` / ``coarse_labels`` (CIFAR-100) lists of ints, ``batch_label`` and
``filenames``; the meta files hold ``label_names`` / ``fine_label_names``. Their keys and
strings are Python 2 byte strings, read with ``encoding="latin1"`` (torchvision's
``datasets/cifar.py``); keys may come back as ``str`` or ``bytes``, both are accepted.

Unpickling executes whatever a file names, so :class:`RestrictedUnpickler` admits only the
globals these files contain (numpy's array reconstruction, ``numpy.ndarray`` and
``numpy.dtype``; lists, dicts, ints and strings need no global) and refuses anything else
with an error naming the file and the global. :func:`write_cifar` writes the same byte
format (Python 2 style strings, ``numpy.core.multiarray._reconstruct``) for tests and demos.
"""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dataroom.arrays import DatasetNotFound, ImageArrays, RowStack
from dataroom.readers import DatasetError

CIFAR10_DIR, CIFAR100_DIR = "cifar-10-batches-py", "cifar-100-python"
CIFAR10_LAYOUT = (
    f"CIFAR-10, python version (cifar-10-python.tar.gz): <root>/{CIFAR10_DIR}/"
    "{data_batch_1..5, test_batch, batches.meta}, each a pickled dict with data (uint8 "
    "N×3072: the R, G, B planes of a 32×32 image) and labels (0..9); batches.meta has "
    "label_names"
)
CIFAR100_LAYOUT = (
    f"CIFAR-100, python version (cifar-100-python.tar.gz): <root>/{CIFAR100_DIR}/"
    "{train, test, meta}, each a pickled dict with data (uint8 N×3072: the R, G, B planes "
    "of a 32×32 image), fine_labels (0..99) and coarse_labels (0..19); meta has "
    "fine_label_names"
)
# name -> (folder, {split: files}, meta file, label key, class-names key, classes, layout)
SPECS: dict[str, tuple[str, dict[str, tuple[str, ...]], str, str, str, int, str]] = {
    "cifar10": (CIFAR10_DIR, {"train": tuple(f"data_batch_{i}" for i in range(1, 6)),
                              "test": ("test_batch",)},
                "batches.meta", "labels", "label_names", 10, CIFAR10_LAYOUT),
    "cifar100": (CIFAR100_DIR, {"train": ("train",), "test": ("test",)},
                 "meta", "fine_labels", "fine_label_names", 100, CIFAR100_LAYOUT),
}
ENV = {"cifar10": "SSLBENCH_CIFAR10", "cifar100": "SSLBENCH_CIFAR100"}
# Per-channel (mean, std) in [0, 1] units: the train-set statistics solo-learn normalises with
# (solo/data/pretrain_dataloader.py MEANS_N_STD), used by pretraining and the eval suites alike.
NORMALIZATION = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
SEARCH = ("datasets/{name}", "~/.cache/sslbench/{name}")  # after $SSLBENCH_<NAME>

# (module, name) -> the object, for every global the official files may name. numpy 2
# writes numpy._core; the 2009 files (and numpy 1 pickles) name numpy.core.
_RECONSTRUCT = ("numpy.core.multiarray", "numpy._core.multiarray")


def _allowed(module: str, name: str) -> Any:
    if module in _RECONSTRUCT and name == "_reconstruct":
        from numpy import _core

        return _core.multiarray._reconstruct
    if module == "numpy" and name in ("ndarray", "dtype"):
        return getattr(np, name)
    return None


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds only what the CIFAR files contain.

    Args:
        file: The open binary file.
        path: Its name, for the error message.
    """

    def __init__(self, file: Any, path: str | Path) -> None:
        super().__init__(file, encoding="latin1")
        self.path = str(path)

    def find_class(self, module: str, name: str) -> Any:
        """numpy's array reconstruction, ``numpy.ndarray``, ``numpy.dtype``; else refuse."""
        obj = _allowed(module, name)
        if obj is None:
            raise pickle.UnpicklingError(
                f"{self.path}: refused to load global '{module}.{name}': a CIFAR file holds "
                "only numpy arrays, lists, dicts, ints and strings (numpy's _reconstruct, "
                "ndarray and dtype); this pickle is not one of the official files")
        return obj

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError(f"{self.path}: refused a persistent id: not a CIFAR file")


def load_pickle(path: str | Path) -> Any:
    """Unpickle ``path`` with :class:`RestrictedUnpickler`.

    Raises:
        DatasetError: The file is missing, truncated, not a pickle, or names a global
            outside the allowed set (nothing of it is executed).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DatasetError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        return RestrictedUnpickler(io.BytesIO(data), path).load()
    except pickle.UnpicklingError as e:
        raise DatasetError(str(e) if str(e).startswith(str(path)) else
                           f"{path}: not a readable pickle ({e})") from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            MemoryError) as e:
        raise DatasetError(f"{path}: truncated or malformed pickle "
                           f"({type(e).__name__}: {e})") from None


def _text(value: Any) -> str:
    return value.decode("latin1") if isinstance(value, bytes) else str(value)


def _as_str_keys(obj: Any, path: Path, layout: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise DatasetError(f"{path}: holds a {type(obj).__name__}, not a dict. Expected {layout}")
    return {_text(k): v for k, v in obj.items()}


# ----------------------------------------------------------------------------- reading


def cifar_dir(name: str, root: str | Path = "") -> Path:
    """The folder holding ``cifar-10-batches-py`` (or ``cifar-100-python``) for ``name``.

    ``root`` may be that parent folder or the batches folder itself; ``""`` searches
    ``$SSLBENCH_CIFAR10`` / ``$SSLBENCH_CIFAR100``, then ``datasets/<name>`` and
    ``~/.cache/sslbench/<name>``.

    Raises:
        DatasetNotFound: Nothing found; the message names the places searched, the expected
            layout, and the other CIFAR's folder when that is what is there.
    """
    folder, _, _, _, _, _, layout = SPECS[name]
    other = CIFAR100_DIR if name == "cifar10" else CIFAR10_DIR
    if root:
        candidates = [Path(root).expanduser()]
    else:
        env = os.environ.get(ENV[name], "")
        candidates = ([Path(env).expanduser()] if env else []) + [
            Path(s.format(name=name)).expanduser() for s in SEARCH]
    for c in candidates:
        if c.name == folder and c.is_dir():
            return c.parent
        if (c / folder).is_dir():
            return c
    where = ", ".join(str(c) for c in candidates)
    for c in candidates:
        if c.name == other or (c / other).is_dir():
            raise DatasetNotFound(f"{c}: holds {other} (the other CIFAR), not {folder} for "
                                  f"{name}. Expected {layout}")
    hint = "" if root else f" (give data.root, or set ${ENV[name]})"
    raise DatasetNotFound(f"{name}: no {folder} folder in {where}{hint}. Expected {layout}")


def _read_batch(path: Path, name: str, label_key: str, num_classes: int,
                layout: str) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DatasetError(f"{path}: missing. Expected {layout}")
    d = _as_str_keys(load_pickle(path), path, layout)
    if label_key not in d:
        found = ", ".join(sorted(d))
        kind = (" (a CIFAR-100 file)" if "fine_labels" in d else
                " (a CIFAR-10 file)" if "labels" in d else "")
        raise DatasetError(f"{path}: no '{label_key}' key (has {found}){kind}; {name} expects "
                           f"{layout}")
    data = d.get("data")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3072:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DatasetError(f"{path}: 'data' is {got}, expected uint8 N×3072. Expected {layout}")
    try:
        labels = np.asarray(d[label_key], dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise DatasetError(f"{path}: '{label_key}' is not a list of ints ({e})") from None
    if len(labels) != len(data):
        raise DatasetError(f"{path}: {len(data)} images but {len(labels)} {label_key}. "
                           f"Expected {layout}")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DatasetError(f"{path}: {label_key} outside 0..{num_classes - 1} "
                           f"(found {labels.min()}..{labels.max()}). Expected {layout}")
    return data.reshape(-1, 3, 32, 32), labels


def read_cifar(name: str, root: str | Path = "", split: str = "train") -> ImageArrays:
    """CIFAR-10 (``name="cifar10"``) or CIFAR-100 (``"cifar100"``) ``train`` or ``test``.

    Args:
        name: ``"cifar10"`` or ``"cifar100"``.
        root: See :func:`cifar_dir`.
        split: ``"train"`` (50,000 images in the official files) or ``"test"`` (10,000).

    Returns:
        uint8 ``(N, 3, 32, 32)`` images in memory, labels and class names.

    Raises:
        DatasetError: A missing folder or file, the other CIFAR's files, a foreign or
            malformed pickle; the message names the file and the expected layout.
    """
    if name not in SPECS:
        raise DatasetError(f"unknown CIFAR dataset '{name}'; valid: {', '.join(SPECS)}")
    folder, splits, meta_name, label_key, names_key, num_classes, layout = SPECS[name]
    if split not in splits:
        raise DatasetError(f"{name} has no '{split}' split; valid: {', '.join(splits)}")
    base = cifar_dir(name, root) / folder
    parts = [_read_batch(base / f, name, label_key, num_classes, layout) for f in splits[split]]
    widths = {p[0].shape[1:] for p in parts}
    assert len(widths) == 1  # every batch is (N, 3, 32, 32) by construction
    classes = _class_names(base / meta_name, names_key, num_classes, layout)
    images = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    labels = np.concatenate([p[1] for p in parts])
    return ImageArrays(name, split, RowStack.of(np.ascontiguousarray(images)), labels, classes,
                       str(base.parent), [str(base / f) for f in splits[split]])


def _class_names(path: Path, key: str, num_classes: int, layout: str) -> list[str]:
    if not path.is_file():
        raise DatasetError(f"{path}: missing. Expected {layout}")
    d = _as_str_keys(load_pickle(path), path, layout)
    names = d.get(key)
    if not isinstance(names, (list, tuple)) or len(names) != num_classes:
        got = len(names) if isinstance(names, (list, tuple)) else "no"
        raise DatasetError(f"{path}: {got} '{key}' (expected {num_classes}). Expected {layout}")
    return [_text(n) for n in names]


# ----------------------------------------------------------------------------- writing


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Protocol 2 with Python 2 strings: ``bytes`` and ``str`` as (SHORT_)BINSTRING, and
    numpy's reconstruction named ``numpy.core.multiarray`` as in the 2009 files."""

    dispatch = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def save_py2_string(self, obj: bytes | str) -> None:
        data = obj if isinstance(obj, bytes) else obj.encode("latin1")
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + len(data).to_bytes(4, "little") + data)
        self.memoize(obj)

    dispatch[bytes] = save_py2_string
    dispatch[str] = save_py2_string

    def save_global(self, obj: Any, name: str | None = None) -> None:
        module = "numpy" if obj in (np.ndarray, np.dtype) else getattr(obj, "__module__", "")
        if module in _RECONSTRUCT:
            module = "numpy.core.multiarray"
        name = name or obj.__name__
        if _allowed(module, name) is None:
            raise pickle.PicklingError(f"write_cifar writes numpy arrays only, not {obj!r}")
        self.write(pickle.GLOBAL + f"{module}\n{name}\n".encode())
        self.memoize(obj)

    dispatch[type] = save_global


def dump_py2(obj: Any, path: str | Path) -> None:
    """Pickle ``obj`` (dicts, lists, ints, strings, uint8 arrays) as the official files are."""
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    Path(path).write_bytes(buf.getvalue())


def write_cifar(root: str | Path, name: str, images: dict[str, np.ndarray],
                labels: dict[str, np.ndarray], classes: Sequence[str] | None = None,
                batches: int | None = None) -> Path:
    """Write a CIFAR-10/100 set in the official python-version layout under ``root``.

    Args:
        root: Parent folder; the files go to ``root/cifar-10-batches-py`` (or
            ``root/cifar-100-python``).
        name: ``"cifar10"`` or ``"cifar100"``.
        images: ``{"train": uint8 (N, 3, 32, 32), "test": ...}``.
        labels: ``{"train": (N,) ints, "test": ...}``.
        classes: Class names (default ``class_0`` …).
        batches: CIFAR-10 train batches (default 5, as the official files); the train
            images are split evenly over them.

    Returns:
        The folder written.
    """
    folder, splits, meta_name, label_key, names_key, num_classes, _ = SPECS[name]
    out = Path(root) / folder
    out.mkdir(parents=True, exist_ok=True)
    classes = list(classes or [f"class_{i}" for i in range(num_classes)])
    for split, files in splits.items():
        x = np.ascontiguousarray(images[split], dtype=np.uint8).reshape(len(images[split]), 3072)
        y = [int(v) for v in labels[split]]
        files = files[:batches] if batches and split == "train" else files
        for k, (fname, rows) in enumerate(zip(files, np.array_split(np.arange(len(x)),
                                                                    len(files)))):
            body: dict[bytes, Any] = {
                b"batch_label": (f"training batch {k + 1} of {len(files)}" if split == "train"
                                 else "testing batch 1 of 1").encode(),
                label_key.encode(): [y[i] for i in rows],
                b"data": x[rows],
                b"filenames": [f"{classes[y[i]]}_s_{i:06d}.png".encode() for i in rows]}
            if name == "cifar100":
                body[b"coarse_labels"] = [y[i] // 5 for i in rows]
            dump_py2(body, out / fname)
    meta: dict[bytes, Any] = {names_key.encode(): [c.encode() for c in classes]}
    if name == "cifar10":
        meta.update({b"num_cases_per_batch": 10000, b"num_vis": 3072})
    else:
        meta[b"coarse_label_names"] = [f"superclass_{i}".encode() for i in range(20)]
    dump_py2(meta, out / meta_name)
    return out

"""Datasets stored as pixel arrays (CIFAR's pickled batches, STL-10's binary files).

A reader returns :class:`ImageArrays`: uint8 images ``(N, C, H, W)``, int64 labels (-1 for
an unlabeled image), class names and a content fingerprint. The images are a
:class:`RowStack`: one or more uint8 arrays, each either in memory or memory-mapped
(``np.memmap``: STL-10's 2.76 GB ``unlabeled_X.bin`` is never loaded), read by row.
Indexing with integer rows returns a contiguous torch tensor of just those rows, in
(C, H, W) order whatever the order on disk (STL-10 stores W before H: the swap is done per
batch, after the rows are gathered); a slice returns a lazy :class:`RowStack` (a subset
without a copy).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import torch

from dataroom.readers import DatasetError


class DatasetNotFound(DatasetError):
    """No folder holding the dataset's files was found (as opposed to malformed files)."""


class RowStack:
    """Rows of several uint8 arrays, seen as one ``(N, C, H, W)`` image array.

    Args:
        parts: ``(array, swapped)`` pairs, concatenated along rows; ``array`` is
            ``(N_i, C, H, W)``, or ``(N_i, C, W, H)`` with ``swapped=True`` (column-major
            images, STL-10). Arrays may be ``np.memmap``: only the rows asked are read.
        start: First row of the view.
        stop: One past the last row of the view (``None`` = all).

    Attributes:
        dtype: ``torch.uint8`` (so a :class:`RowStack` passes where a tensor is checked).
        shape: ``(N, C, H, W)`` of the view.
    """

    dtype = torch.uint8

    def __init__(self, parts: Sequence[tuple[np.ndarray, bool]], start: int = 0,
                 stop: int | None = None) -> None:
        self.parts = [(a, bool(s)) for a, s in parts]
        if not self.parts:
            raise ValueError("a RowStack needs at least one array")
        shapes = set()
        for a, swapped in self.parts:
            if a.dtype != np.uint8 or a.ndim != 4:
                raise ValueError(f"expected uint8 (N, C, H, W) arrays, got {a.dtype} {a.shape}")
            c, h, w = a.shape[1:]
            shapes.add((c, w, h) if swapped else (c, h, w))
        if len(shapes) != 1:
            raise ValueError(f"arrays of different image shapes: {sorted(shapes)}")
        self.image_shape: tuple[int, int, int] = shapes.pop()
        self.offsets = np.cumsum([0] + [len(a) for a, _ in self.parts])
        total = int(self.offsets[-1])
        self.start = start
        self.stop = total if stop is None else stop
        if not 0 <= self.start <= self.stop <= total:
            raise ValueError(f"rows [{start}, {stop}) outside [0, {total}]")

    @classmethod
    def of(cls, array: np.ndarray, swapped: bool = False) -> RowStack:
        """A stack of one array."""
        return cls([(array, swapped)])

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(N, C, H, W)``."""
        return (self.stop - self.start, *self.image_shape)

    def dim(self) -> int:
        """4, as a tensor of images."""
        return 4

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, index: Any) -> Any:
        """A slice → a lazy view; integer rows (int, list, array, tensor) → a tensor."""
        if isinstance(index, slice):
            lo, hi, step = index.indices(len(self))
            if step != 1:
                return self.take(np.arange(lo, hi, step))
            return RowStack(self.parts, self.start + lo, self.start + max(hi, lo))
        if isinstance(index, (int, np.integer)) or (isinstance(index, torch.Tensor)
                                                     and index.dim() == 0):
            return self.take(np.asarray([int(index)]))[0]
        return self.take(index)

    def take(self, rows: Any) -> torch.Tensor:
        """uint8 ``(B, C, H, W)`` contiguous tensor of ``rows`` (negative rows count back)."""
        rows = np.asarray(rows.cpu() if isinstance(rows, torch.Tensor) else rows, dtype=np.int64)
        rows = rows.reshape(-1)
        n = len(self)
        if rows.size and (rows.min() < -n or rows.max() >= n):
            raise IndexError(f"row index out of range for {n} rows")
        rows = np.where(rows < 0, rows + n, rows) + self.start
        out = np.empty((rows.size, *self.image_shape), dtype=np.uint8)
        part = np.searchsorted(self.offsets, rows, side="right") - 1
        for p in np.unique(part):
            array, swapped = self.parts[p]
            where = np.nonzero(part == p)[0]
            local = rows[where] - self.offsets[p]
            order = np.argsort(local, kind="stable")  # ascending reads of a memory map
            block = array[local[order]]  # fancy indexing reads only these rows
            if swapped:
                block = block.transpose(0, 1, 3, 2)
            out[where[order]] = block
        return torch.from_numpy(out)

    def numpy(self) -> np.ndarray:
        """Every row of the view as one contiguous array (reads it all)."""
        return self.take(np.arange(len(self))).numpy()


@dataclass
class ImageArrays:
    """The images of one split of an array dataset.

    Attributes:
        name: Dataset name (``"cifar10"`` …).
        split: Split name (``"train"``, ``"test"``, ``"train+unlabeled"`` …).
        images: uint8 ``(N, C, H, W)`` rows.
        labels: ``(N,)`` int64 class indices; -1 for an unlabeled image.
        classes: Class names; index = label.
        root: The folder the files were read from.
        files: The files read (for messages).
    """

    name: str
    split: str
    images: RowStack
    labels: np.ndarray
    classes: list[str]
    root: str
    files: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if self.labels.shape != (len(self.images),):
            raise ValueError(f"{self.name}/{self.split}: {len(self.images)} images but labels "
                             f"of shape {self.labels.shape}")

    def __len__(self) -> int:
        return len(self.images)

    @cached_property
    def fingerprint(self) -> str:
        """SHA-1 of the name, split, shape, pixels and labels (reads every pixel once)."""
        h = hashlib.sha1(f"{self.name}|{self.split}|{self.images.shape}|".encode())
        for lo in range(0, len(self), 4096):
            h.update(self.images.take(np.arange(lo, min(lo + 4096, len(self)))).numpy().data)
        h.update(self.labels.tobytes())
        return h.hexdigest()

    def batches(self, batch_size: int) -> Any:
        """``(uint8 images, row indices)`` of consecutive batches, in order."""
        for lo in range(0, len(self), batch_size):
            rows = np.arange(lo, min(lo + batch_size, len(self)))
            yield self.images.take(rows), torch.from_numpy(rows)

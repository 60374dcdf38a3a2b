"""A compact, read-only table of file paths: one byte buffer and an offset array.

A Python list of 1.28M ``str`` is ~150 MB of small heap objects; every loader worker that
touches them bumps their reference counts and so copies the pages it forked (pytorch
issue #13246). Here the paths are two numpy arrays (the file-system bytes of every path
relative to ``root``, joined by ``\\n``, and their start offsets): touching them copies
nothing, pickling them to a spawned worker is one memcpy, and they save to ``.npz``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from typing import overload

import numpy as np


class PathTable(Sequence[str]):
    """Absolute paths ``root/<entry>``, stored as bytes (``os.fsencode``) in numpy arrays.

    An entry that is itself absolute (e.g. a path list pointing outside ``root``) is kept
    as is. Indexing returns ``str``; ``take`` returns a new table.

    Args:
        root: The folder entries are relative to.
        data: uint8 bytes of all entries joined by ``\\n``.
        starts: int64 ``(N + 1,)``: entry ``i`` is ``data[starts[i]:starts[i + 1] - 1]``
            (the last one has no trailing separator; ``starts[N] = len(data) + 1``).
    """

    def __init__(self, root: str, data: np.ndarray, starts: np.ndarray) -> None:
        self.root = str(root)
        self.data = np.ascontiguousarray(data, dtype=np.uint8)
        self.starts = np.ascontiguousarray(starts, dtype=np.int64)
        if self.starts.ndim != 1 or len(self.starts) == 0:
            raise ValueError("starts must be a non-empty 1-d array")

    @classmethod
    def from_entries(cls, root: str | os.PathLike, entries: Iterable[str | bytes]) -> PathTable:
        """A table of ``entries`` (relative to ``root`` or absolute), in the given order."""
        raw = [e if isinstance(e, bytes) else os.fsencode(e) for e in entries]
        lengths = np.fromiter((len(r) + 1 for r in raw), dtype=np.int64, count=len(raw))
        starts = np.zeros(len(raw) + 1, dtype=np.int64)
        np.cumsum(lengths, out=starts[1:])
        data = np.frombuffer(b"\n".join(raw), dtype=np.uint8)
        return cls(str(root), data, starts)

    @classmethod
    def from_paths(cls, root: str | os.PathLike, paths: Iterable[str]) -> PathTable:
        """A table of absolute ``paths``; those under ``root`` are stored relative to it."""
        prefix = str(root).rstrip(os.sep) + os.sep
        return cls.from_entries(root, (p.removeprefix(prefix) for p in map(str, paths)))

    def __len__(self) -> int:
        return len(self.starts) - 1

    def entry_bytes(self, i: int) -> bytes:
        """Entry ``i`` as stored (relative to ``root`` unless absolute)."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"path index {i} out of range for {n} paths")
        i %= n
        return self.data[self.starts[i]:self.starts[i + 1] - 1].tobytes()

    def entry(self, i: int) -> str:
        """Entry ``i`` as ``str`` (relative to ``root`` unless absolute)."""
        return os.fsdecode(self.entry_bytes(i))

    @overload
    def __getitem__(self, i: int) -> str: ...

    @overload
    def __getitem__(self, i: slice) -> list[str]: ...

    def __getitem__(self, i: int | slice) -> str | list[str]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return os.path.join(self.root, self.entry(int(i)))

    def __iter__(self) -> Iterator[str]:
        for i in range(len(self)):
            yield self[i]

    def joined(self) -> bytes:
        """All entries joined by ``\\n`` (what the fingerprint of a file set hashes)."""
        return self.data.tobytes()

    def entries(self) -> list[str]:
        """All entries as ``str`` (relative to ``root`` unless absolute)."""
        return [self.entry(i) for i in range(len(self))]

    def take(self, idx: Sequence[int] | np.ndarray) -> PathTable:
        """The entries ``idx``, in that order, as a new table with the same root."""
        return PathTable.from_entries(self.root, [self.entry_bytes(int(i)) for i in idx])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PathTable):
            return NotImplemented
        return (self.root == other.root and np.array_equal(self.starts, other.starts)
                and np.array_equal(self.data, other.data))

    __hash__ = None  # type: ignore[assignment]  (mutable arrays inside)

    def __repr__(self) -> str:
        return f"PathTable({len(self)} paths under {self.root!r})"

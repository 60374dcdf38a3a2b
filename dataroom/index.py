"""The file index of an image tree, built once and cached on disk.

Listing ImageNet's 1.28M files takes minutes on a network file system; a requeued job
must not pay it again. :func:`index_tree` walks a tree once (deterministic order: a
folder's files sorted by name, then its sub-folders sorted by name, depth first; hidden
files and folders skipped; extensions compared case-insensitively; symlinked folders
followed once) and saves the result to ``<cache>/<key>.npz`` (key = SHA-1 of the resolved
root, the extensions and the index version), written atomically.

A cached index is reused when every folder it listed still has the modification time
(``st_mtime_ns``) recorded before that folder was listed: adding, removing or renaming an
entry changes its folder's mtime. That costs one ``stat`` per folder (1,001 for ImageNet
train) instead of a ``scandir`` of every folder.

What this does NOT catch: a file whose *content* changes in place (the index holds names
only; the decoder reads the current bytes and counts a broken file as a bad image), a
folder whose mtime was set back by hand (``touch -d``), and a symlinked *file* whose target
disappears (a dangling path, again counted as a bad image when read). A folder modified
within :data:`RACY_SECONDS` before the scan is not trusted (file-system timestamps are
coarser than the clock, and NFS clients cache attributes): such an index is rebuilt on the
next call, as git does with "racily clean" entries.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dataroom.paths import PathTable

log = logging.getLogger("sslbench.dataroom")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
INDEX_VERSION = 1
CACHE_ENV = "SSLBENCH_INDEX_CACHE"  # a folder, or "off" to disable the cache
DEFAULT_CACHE = "~/.cache/sslbench/index"
RACY_SECONDS = 2.0
_scandir = os.scandir  # module attribute, so that tests can count the calls


@dataclass
class TreeIndex:
    """The image files of one tree.

    Attributes:
        root: The resolved folder.
        files: Image files, relative to ``root``, in walk order.
        dirs: Every folder listed (``""`` = ``root``), relative to ``root``.
        dir_mtime_ns: int64 mtime of each of ``dirs``, taken before it was listed.
        scanned_ns: Wall-clock time (ns) when the walk started.
        from_cache: True when read from the cache instead of walking the tree.
    """

    root: str
    files: PathTable
    dirs: PathTable
    dir_mtime_ns: np.ndarray
    scanned_ns: int
    from_cache: bool = False


def cache_dir(override: str | os.PathLike | None = None) -> Path | None:
    """The index cache folder: ``override``, else ``$SSLBENCH_INDEX_CACHE``, else the default.

    ``"off"`` (either way) disables the cache.
    """
    value = str(override) if override is not None else os.environ.get(CACHE_ENV, DEFAULT_CACHE)
    return None if value.strip().lower() == "off" else Path(value).expanduser()


def _key(root: str, extensions: tuple[str, ...]) -> str:
    text = json.dumps([INDEX_VERSION, root, sorted(e.lower() for e in extensions)])
    return hashlib.sha1(text.encode()).hexdigest()[:24]


def _walk(root: str, extensions: tuple[str, ...]) -> TreeIndex:
    """Walk ``root``: files of a folder by name, then its sub-folders by name, depth first."""
    scanned_ns = time.time_ns()
    lowered = tuple(e.lower() for e in extensions)
    files: list[bytes] = []
    dirs: list[bytes] = []
    mtimes: list[int] = []
    seen: set[tuple[int, int]] = set()
    stack: list[bytes] = [b""]
    broot = os.fsencode(root)
    while stack:
        rel = stack.pop()
        path = os.path.join(broot, rel) if rel else broot
        try:
            st = os.stat(path)
        except OSError:
            continue  # vanished or unreadable during the walk
        if (st.st_dev, st.st_ino) in seen:
            continue  # a symlink loop, or the same folder linked twice
        seen.add((st.st_dev, st.st_ino))
        dirs.append(rel)
        mtimes.append(st.st_mtime_ns)
        try:
            with _scandir(path) as it:
                entries = sorted(((e.name, e) for e in it if not e.name.startswith(b".")),
                                 key=lambda t: t[0])
        except OSError as e:
            log.warning("cannot list %s (%s); skipped", os.fsdecode(path), e)
            continue
        subdirs = []
        for name, entry in entries:
            child = os.path.join(rel, name) if rel else name
            try:
                if entry.is_dir():
                    subdirs.append(child)
                elif entry.is_file() and os.fsdecode(name).lower().endswith(lowered):
                    files.append(child)
            except OSError:
                continue
        stack.extend(reversed(subdirs))
    return TreeIndex(root, PathTable.from_entries(root, files), PathTable.from_entries(root, dirs),
                     np.asarray(mtimes, dtype=np.int64), scanned_ns)


def _umask() -> int:
    """The process umask, read without changing it (Linux), else 0o022."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def _save(index: TreeIndex, path: Path) -> None:
    meta = json.dumps({"version": INDEX_VERSION, "root": index.root,
                       "scanned_ns": index.scanned_ns}).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # as an ordinary file (mkstemp makes it private)
        with os.fdopen(fd, "wb") as f:
            np.savez(f, files_data=index.files.data, files_starts=index.files.starts,
                     dirs_data=index.dirs.data, dirs_starts=index.dirs.starts,
                     dir_mtime_ns=index.dir_mtime_ns, meta=np.frombuffer(meta, dtype=np.uint8))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load(path: Path, root: str) -> TreeIndex | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes())
            if meta.get("version") != INDEX_VERSION or meta.get("root") != root:
                return None
            return TreeIndex(root, PathTable(root, z["files_data"], z["files_starts"]),
                             PathTable(root, z["dirs_data"], z["dirs_starts"]),
                             z["dir_mtime_ns"].astype(np.int64), int(meta["scanned_ns"]), True)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, json.JSONDecodeError):
        return None


def _still_valid(index: TreeIndex) -> bool:
    """Every listed folder still has its recorded mtime, and none was racy at scan time."""
    racy_after = index.scanned_ns - int(RACY_SECONDS * 1e9)
    if len(index.dir_mtime_ns) != len(index.dirs) or (index.dir_mtime_ns >= racy_after).any():
        return False
    broot = os.fsencode(index.root)
    for i, recorded in enumerate(index.dir_mtime_ns.tolist()):
        rel = index.dirs.entry_bytes(i)
        try:
            if os.stat(os.path.join(broot, rel) if rel else broot).st_mtime_ns != recorded:
                return False
        except OSError:
            return False
    return True


def index_tree(root: str | os.PathLike, extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
               cache: str | os.PathLike | None = None) -> TreeIndex:
    """The image files under ``root``, from the cache when the tree has not changed.

    Args:
        root: An existing folder (resolved; symlinks in it are followed).
        extensions: File-name endings counted as images (case-insensitive).
        cache: Cache folder, or ``"off"``; ``None`` = ``$SSLBENCH_INDEX_CACHE`` or
            ``~/.cache/sslbench/index``. An unwritable cache only costs a log line.

    Returns:
        The index; ``from_cache`` says whether the walk was skipped.
    """
    root = str(Path(root).expanduser().resolve())
    folder = cache_dir(cache)
    path = folder / f"{_key(root, extensions)}.npz" if folder is not None else None
    if path is not None and path.is_file():
        cached = _load(path, root)
        if cached is not None and _still_valid(cached):
            return cached
    start = time.perf_counter()
    index = _walk(root, extensions)
    log.info("indexed %d image files in %d folders under %s in %.1f s", len(index.files),
             len(index.dirs), root, time.perf_counter() - start)
    if path is not None:
        try:
            _save(index, path)
        except OSError as e:
            log.warning("could not cache the file index at %s (%s)", path, e)
    return index

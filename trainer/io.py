"""Atomic file writes, folder locks, checked loads and provenance helpers.

Nothing is ever half-written; a folder that one process works in is locked against a
second one; a damaged file is one line naming it. Importing this module does not import
torch, so the launcher and the eval records share it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

LOCK_FILE = ".lock"


class DamagedFileError(ValueError):
    """A file cannot be read as what it should be; the message names it and the problem."""


class FolderLockedError(RuntimeError):
    """Another process holds the folder's lock; the message names the holder."""


def atomic_write(path: Path, write: Any) -> None:
    """Call ``write(binary_file)`` on a temporary file, then ``os.replace`` it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace``."""
    atomic_write(path, lambda f: f.write(text.encode()))


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path`` atomically (a killed writer leaves the old file)."""
    import torch

    atomic_write(path, lambda f: torch.save(obj, f))


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line (a single write call, flushed)."""
    with open(path, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()


def git_sha(cwd: Path | None = None) -> str:
    """The current commit (with ``-dirty`` when the tree has changes), or ``unknown``."""
    cwd = cwd or Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                             text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=cwd, capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def job_id() -> str:
    """The SLURM or submitit job id of this process ('' outside a job)."""
    e = os.environ
    if e.get("SLURM_ARRAY_JOB_ID"):
        return f"{e['SLURM_ARRAY_JOB_ID']}_{e.get('SLURM_ARRAY_TASK_ID', '')}"
    return e.get("SLURM_JOB_ID") or e.get("SUBMITIT_LOCAL_JOB_ID", "")


def _describe_holder(text: str) -> str:
    try:
        h = json.loads(text)
        job = f", job {h['job_id']}" if h.get("job_id") else ""
        return f"pid {h['pid']} on {h['host']}{job} ({h['what']}, since {h['since']})"
    except (ValueError, KeyError, TypeError):
        return "another process (its details are not written yet)"


_HELD_LOCKS: set[int] = set()  # this process's folder-lock descriptors


def _drop_held_locks_in_child() -> None:
    # A forked child (a DataLoader worker) shares the lock's open file; were it to keep
    # its copy, a SIGKILLed holder's orphaned workers would hold the folder until they
    # noticed. Closing the child's copy leaves the lock to the parent alone.
    for fd in tuple(_HELD_LOCKS):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD_LOCKS.clear()


os.register_at_fork(after_in_child=_drop_held_locks_in_child)


@contextlib.contextmanager
def folder_lock(folder: Path, what: str, enabled: bool = True) -> Iterator[None]:
    """Hold ``<folder>/.lock`` (``fcntl.flock``) for the duration; one holder at a time.

    The kernel drops the lock when the holder exits, however it exits (``SIGKILL``
    included), so a killed run never leaves its folder stuck (forked children, e.g. loader
    workers that outlive a killed holder for a few seconds, close their copy at fork). The
    file keeps the last holder's pid, host, job id and start time, which a refused process
    prints.

    Args:
        folder: The folder (created if missing).
        what: What the holder does there (``trainer``, ``sweep launcher``), for messages.
        enabled: False makes this a no-op (DDP ranks other than 0).

    Raises:
        FolderLockedError: Another process holds it.
    """
    if not enabled:
        yield
        return
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = _describe_holder(path.read_text(errors="replace"))
            raise FolderLockedError(f"{folder} is in use by {holder}; wait for it to end or "
                                    f"stop it (a stopped process releases {path})") from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "job_id": job_id(),
                "what": what, "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        _HELD_LOCKS.add(fd)
        yield
    finally:
        _HELD_LOCKS.discard(fd)
        os.close(fd)  # releases the lock


def load_torch_file(path: str | Path, what: str = "checkpoint", map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``; a file that cannot be read raises one line.

    Raises:
        DamagedFileError: ``path`` is missing, a folder, empty, or not a readable torch
            file (text, truncated, corrupt); the message names it and what was wrong.
    """
    import torch

    path = Path(path)
    if path.is_dir():
        raise DamagedFileError(f"{path}: is a folder, not a {what} file")
    if not path.exists():
        raise DamagedFileError(f"{path}: no such {what} file")
    size = path.stat().st_size
    if size == 0:
        raise DamagedFileError(f"{path}: the {what} file is empty (0 bytes)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 (torch raises EOFError, RuntimeError, UnpicklingError...)
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DamagedFileError(f"{path}: not a readable {what} ({size} bytes; "
                               f"{type(e).__name__}: {detail[:200]}): truncated, damaged or "
                               "not a PyTorch file") from None

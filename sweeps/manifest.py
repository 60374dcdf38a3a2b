"""``sweep.json``: the sweep folder's record of its runs, job ids and cluster.

Written atomically (temporary file + ``os.replace``) under an advisory lock, so a
reader never sees half a file and two launchers of one sweep do not lose updates.
Run folders stay the source of truth for progress; the manifest says which job
last ran each run and where its logs are.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MANIFEST = "sweep.json"
FORMAT = "sslbench.sweep/1"


def atomic_write_text(path: Path, text: str) -> None:
    """Write through a temporary file and ``os.replace`` (no torch import, unlike trainer.io)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def now() -> str:
    """Local time, ISO format to the second."""
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def load(sweep_dir: Path) -> dict[str, Any]:
    """The manifest of ``sweep_dir`` ({} when there is none yet)."""
    path = Path(sweep_dir) / MANIFEST
    if not path.exists():
        return {}
    return json.loads(path.read_text())


@contextlib.contextmanager
def update(sweep_dir: Path) -> Iterator[dict[str, Any]]:
    """Read-modify-write the manifest under a lock; written atomically on exit."""
    sweep_dir = Path(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with open(sweep_dir / f".{MANIFEST}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = load(sweep_dir) or {"format": FORMAT, "created": now(), "runs": {},
                                   "submissions": []}
        yield data
        data["updated"] = now()
        atomic_write_text(sweep_dir / MANIFEST, json.dumps(data, indent=1, sort_keys=True) + "\n")

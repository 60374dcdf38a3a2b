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
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from trainer.io import atomic_write_text

MANIFEST = "sweep.json"
FORMAT = "sslbench.sweep/1"


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

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


class ManifestError(ValueError):
    """``sweep.json`` cannot be read; the message names it and says what to do."""


def now() -> str:
    """Local time, ISO format to the second."""
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def load(sweep_dir: Path) -> dict[str, Any]:
    """The manifest of ``sweep_dir`` ({} when there is none yet).

    Raises:
        ManifestError: The file is not valid JSON or not a manifest.
    """
    path = Path(sweep_dir) / MANIFEST
    if not path.exists():
        return {}
    hint = ("it only records job ids and labels (the run folders hold the runs): move it "
            "aside and launch again to rebuild it")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ManifestError(f"{path}: unreadable ({e}); {hint}") from None
    if not isinstance(data, dict) or not isinstance(data.get("runs", {}), dict):
        raise ManifestError(f"{path}: not a sweep manifest (expected an object with 'runs'); "
                            f"{hint}")
    return data


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

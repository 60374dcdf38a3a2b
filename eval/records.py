"""Result records: one JSON file per (checkpoint, benchmark, protocol, metric, suite
[, detection backend] [, variant]).

Schema (read by ``results/`` to build the tables; keep it stable)::

    {"id": sha1(checkpoint_sha256 + benchmark + protocol + metric + suite
                [+ "|backend=" + extra["backend"], detection records only]
                [+ "|variant=" + variant, records made with non-default settings only]),
     "checkpoint": str, "checkpoint_sha256": str, "method": str, "backbone": str,
     "run_dir": str | null, "config_hash": str | null, "seed": int | null,
     "epochs": int | null, "benchmark": str, "protocol": "paper" | "fast" | "mini",
     "suite": str, "metric": str, "value": float (percent) | null, "extra": {...},
     "status": "ok" | "skipped" | "failed", "reason": str | null,
     "variant": str | null,          # settings that differ from the suite's, e.g.
                                     # "temperature=0.5" (eval.config.variant); null = none
     "partial_load": bool,           # weights loaded with --allow-partial (keys missing,
                                     # unknown or dropped); "key_report" has the counts
     "key_report": {"matched": int, "missing": int, "unexpected": int} | null,
     "group": [id, ...],             # every record the same benchmark run wrote
     "config": {"suite", "benchmark": {...}, "run": {...}, ...},  # the settings used
     "dataset_fingerprint": {"<dataset>/<split>": sha1, ...} | null,
     "git_sha": str, "date": ISO 8601, "wall_time_s": float}

Records written before ``variant``/``partial_load``/``key_report``/``group`` existed lack
them (read as null/false/null/[]). A benchmark counts as recorded for a checkpoint when an
``ok`` record's stored settings (:func:`eval.config.identity`) equal the requested ones and
every record of its ``group`` is readable and ``ok``; anything else is measured again.

Each record is written to ``<records_dir>/<id>.json`` through a temporary file and
``os.replace``, so readers never see a partial file and re-runs overwrite in place.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

from trainer.io import atomic_write_text, git_sha  # noqa: F401  (git_sha re-exported)

STATUSES = ("ok", "skipped", "failed")


def record_id(checkpoint_sha256: str, benchmark: str, protocol: str, metric: str,
              suite: str, backend: str | None = None, variant: str | None = None) -> str:
    """SHA-1 of the concatenated identifying fields.

    Args:
        backend: The detection backend (``extra["backend"]``: ``detectron2`` or
            ``torchvision``). Its numbers are a different implementation's, reported in
            their own column, so a Detectron2 and a torchvision record of one cell must not
            overwrite each other. None (every non-detection record) leaves the id as it was.
        variant: The settings that differ from the suite's (``"temperature=0.5"``), so a
            record made with them sits beside the default one. None/"" leaves the id as it
            was.
    """
    key = f"{checkpoint_sha256}{benchmark}{protocol}{metric}{suite}"
    if backend:
        key += f"|backend={backend}"
    if variant:
        key += f"|variant={variant}"
    return hashlib.sha1(key.encode()).hexdigest()


def _clean(obj: Any) -> Any:
    """JSON-safe copy: NaN/inf → None (records are strict JSON), tuples → lists."""
    if isinstance(obj, float):
        return obj if obj == obj and abs(obj) != float("inf") else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def find_records(records_dir: str | Path, problems: list[str] | None = None,
                 **match: Any) -> list[dict[str, Any]]:
    """All readable records whose fields equal ``match``.

    Args:
        problems: If given, one line is appended per file that cannot be read.
    """
    out = []
    for path in sorted(Path(records_dir).glob("*.json")):
        try:
            rec = json.loads(path.read_text())
        except (ValueError, OSError) as e:
            if problems is not None:
                problems.append(f"{path}: unreadable ({e})")
            continue
        if isinstance(rec, dict) and all(rec.get(k) == v for k, v in match.items()):
            out.append(rec)
    return out


def make_record(*, checkpoint: str, meta: dict[str, Any], checkpoint_sha256: str, benchmark: str,
                protocol: str, suite: str, metric: str, value: float | None, extra: dict[str, Any],
                status: str, reason: str | None, config: dict[str, Any],
                dataset_fingerprint: dict[str, str] | None, git: str,
                wall_time_s: float, variant: str | None = None, partial_load: bool = False,
                key_report: dict[str, int] | None = None,
                group: list[str] | None = None) -> dict[str, Any]:
    """Assemble one record in the schema above (``extra["backend"]`` and ``variant`` join
    the id)."""
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
    backend = extra.get("backend")
    return {
        "id": record_id(checkpoint_sha256, benchmark, protocol, metric, suite,
                        str(backend) if backend else None, variant or None),
        "checkpoint": checkpoint,
        "checkpoint_sha256": checkpoint_sha256,
        "method": meta.get("method") or "external",
        "backbone": meta.get("backbone"),
        "run_dir": meta.get("run_dir"),
        "config_hash": meta.get("config_hash"),
        "seed": meta.get("seed"),
        "epochs": meta.get("epochs"),
        "benchmark": benchmark,
        "protocol": protocol,
        "suite": suite,
        "metric": metric,
        "value": _clean(None if value is None else float(value)),
        "extra": _clean(extra),
        "status": status,
        "reason": reason,
        "variant": variant or None,
        "partial_load": bool(partial_load),
        "key_report": key_report,
        "group": list(group or []),
        "config": _clean(config),
        "dataset_fingerprint": dataset_fingerprint or None,
        "git_sha": git,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "wall_time_s": round(float(wall_time_s), 3),
    }


def write_record(records_dir: str | Path, record: dict[str, Any]) -> Path:
    """Atomically write ``<records_dir>/<id>.json``."""
    directory = Path(records_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{record['id']}.json"
    text = json.dumps(record, indent=1, sort_keys=False, allow_nan=False, default=str)
    atomic_write_text(path, text)
    return path


def read_record(records_dir: str | Path, rid: str) -> dict[str, Any] | None:
    """The record with id ``rid``, or None."""
    path = Path(records_dir) / f"{rid}.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, OSError):
        return None

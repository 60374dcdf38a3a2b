"""Result records: load the eval JSON files and resolve duplicates.

One record is one number (or one skipped/failed attempt at it) written by the eval
battery as ``results/records/<id>.json``. This module reads them, never torch.

Two records are duplicates when they measure the same cell: the same checkpoint
(``checkpoint_sha256``), benchmark, protocol and metric, the same ``k`` and
detection ``backend`` in ``extra`` (a low-shot ``k`` is its own cell), and the same
``variant`` (settings that differ from the suite's, e.g. ``temperature=0.5``: a record
made with them is its own column, never pooled with the suite's). Duplicates are
resolved in favour of an ``ok`` record over a skipped/failed one, then of the newest
``date``; the others are reported, never silently dropped.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

DEFAULT_RECORDS = Path("results/records")
# ``extra`` keys that tell cells apart; all other ``extra`` keys are settings (footnotes).
IDENTITY_EXTRA = ("k", "backend")
REQUIRED = ("id", "benchmark", "metric")
_OLDEST = datetime.min.replace(tzinfo=timezone.utc)


@dataclass(frozen=True, eq=False)
class Record:
    """One result record (the fields the tables use; the raw dict is kept in ``raw``)."""

    id: str
    benchmark: str
    metric: str
    value: float | None
    protocol: str = "unknown"
    suite: str = ""
    status: str = "ok"
    reason: str | None = None
    method: str = "unknown"
    backbone: str = "unknown"
    epochs: int | None = None
    seed: int | None = None
    date: str = ""
    checkpoint: str = ""
    checkpoint_sha256: str = ""
    run_dir: str | None = None
    config_hash: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    variant: str | None = None  # settings that differ from the suite's ("" / None: none)
    partial_load: bool = False  # weights loaded with --allow-partial
    path: str = ""
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any], path: str | Path = "") -> Record:
        """Build a record from its JSON object, tolerating missing optional fields."""
        value = d.get("value")
        extra = d.get("extra") if isinstance(d.get("extra"), dict) else {}
        return cls(
            id=str(d["id"]), benchmark=str(d["benchmark"]), metric=str(d["metric"]),
            value=float(value) if isinstance(value, (int, float)) else None,
            protocol=str(d.get("protocol") or "unknown"), suite=str(d.get("suite") or ""),
            status=str(d.get("status") or "ok"), reason=d.get("reason"),
            method=str(d.get("method") or "unknown"), backbone=str(d.get("backbone") or "unknown"),
            epochs=_int_or_none(d.get("epochs")), seed=_int_or_none(d.get("seed")),
            date=str(d.get("date") or ""), checkpoint=str(d.get("checkpoint") or ""),
            checkpoint_sha256=str(d.get("checkpoint_sha256") or ""),
            run_dir=d.get("run_dir"), config_hash=str(d.get("config_hash") or ""),
            extra=dict(extra), variant=str(d["variant"]) if d.get("variant") else None,
            partial_load=d.get("partial_load") is True, path=str(path), raw=d)

    @property
    def ok(self) -> bool:
        """Whether the record holds a usable (finite) value."""
        return self.status == "ok" and self.value is not None and math.isfinite(self.value)

    @property
    def k(self) -> Any:
        """``extra["k"]`` (low-shot examples per class, or kNN neighbours), or None."""
        return self.extra.get("k")

    @property
    def backend(self) -> str | None:
        """``extra["backend"]`` (detection: detectron2 or torchvision), or None."""
        return self.extra.get("backend")

    @property
    def settings(self) -> dict[str, Any]:
        """``extra`` without the keys that identify the cell."""
        return {k: v for k, v in self.extra.items() if k not in IDENTITY_EXTRA}

    @property
    def model_label(self) -> str:
        """The method, or for external checkpoints ``external (<file stem>)``."""
        if self.method == "external" and self.checkpoint:
            return f"external ({Path(self.checkpoint).stem})"
        return self.method

    def cell_key(self) -> tuple[Any, ...]:
        """What makes two records duplicates (see the module docstring)."""
        ckpt = self.checkpoint_sha256 or self.checkpoint or f"id:{self.id}"
        return (ckpt, self.benchmark, self.protocol, self.metric, _hashable(self.k),
                self.backend, self.variant)

    def why_missing(self) -> str:
        """A one-line reason for a record without a value, e.g. ``skipped: ...``."""
        if self.status == "ok":
            return "ok but no value" if self.value is None else f"non-finite value {self.value}"
        return f"{self.status}: {self.reason}" if self.reason else self.status


@dataclass(frozen=True)
class Duplicate:
    """Records of one cell: the one kept and those it supersedes."""

    kept: Record
    dropped: tuple[Record, ...]

    def describe(self) -> str:
        """One line for the warning printed by the CLI."""
        k = self.kept
        where = f"{k.method}/{k.backbone} {k.benchmark} {k.metric} ({k.protocol})"
        gone = ", ".join(f"{r.id} ({r.date or 'no date'})" for r in self.dropped)
        return f"duplicate records for {where}: kept {k.id} ({k.date or 'no date'}), dropped {gone}"

    def as_dict(self) -> dict[str, Any]:
        """The provenance entry."""
        k = self.kept
        return {"checkpoint_sha256": k.checkpoint_sha256, "benchmark": k.benchmark,
                "protocol": k.protocol, "metric": k.metric,
                "extra": {key: k.extra[key] for key in IDENTITY_EXTRA if key in k.extra},
                **({"variant": k.variant} if k.variant else {}),
                "kept": k.id, "kept_date": k.date,
                "dropped": [r.id for r in self.dropped],
                "dropped_dates": [r.date for r in self.dropped]}


def _int_or_none(v: Any) -> int | None:
    try:
        return None if v is None or isinstance(v, bool) else int(v)
    except (TypeError, ValueError):
        return None


def _hashable(v: Any) -> Any:
    return json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v


def parse_date(text: str) -> datetime:
    """ISO 8601 to an aware datetime (naive means UTC; unparseable sorts oldest)."""
    try:
        dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        return _OLDEST
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def load_records(directory: str | Path = DEFAULT_RECORDS,
                 problems: list[str] | None = None) -> list[Record]:
    """Every record under ``directory`` (``*.json``, recursively), sorted by id.

    Args:
        directory: The records folder; a missing folder gives no records.
        problems: If given, one line is appended per JSON file that is unreadable or
            not a record (e.g. a ``sweep.json``), instead of failing.
    """
    root = Path(directory)
    if not root.is_dir():
        return []
    out: list[Record] = []
    for path in sorted(root.rglob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            if problems is not None:
                problems.append(f"{path}: unreadable ({e})")
            continue
        if not isinstance(data, dict) or any(key not in data for key in REQUIRED):
            if problems is not None:
                problems.append(f"{path}: not a result record")
            continue
        out.append(Record.from_dict(data, path))
    return sorted(out, key=lambda r: r.id)


def _rank(r: Record) -> tuple[bool, datetime, str]:
    return (r.ok, parse_date(r.date), r.id)


def resolve_duplicates(records: list[Record]) -> tuple[list[Record], list[Duplicate]]:
    """Keep one record per cell (ok first, then newest ``date``); report the rest.

    Returns:
        The kept records (input order) and one :class:`Duplicate` per cell that had
        more than one record.
    """
    by_key: dict[tuple[Any, ...], list[Record]] = {}
    for r in records:
        by_key.setdefault(r.cell_key(), []).append(r)
    kept_ids: set[int] = set()  # object ids: two files may share a record id
    duplicates: list[Duplicate] = []
    for group in by_key.values():
        best = max(group, key=_rank)
        kept_ids.add(id(best))
        if len(group) > 1:
            dropped = tuple(sorted((r for r in group if r is not best), key=_rank, reverse=True))
            duplicates.append(Duplicate(best, dropped))
    kept = [r for r in records if id(r) in kept_ids]
    return kept, duplicates

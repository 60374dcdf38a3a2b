"""The table model: columns, rows and cells (mean ± std over seeds), best-per-column.

A :class:`Table` is format-free; :mod:`results.markdown` and :mod:`results.latex`
render it. Every measured cell keeps the ids of the records (or the metrics.jsonl
epochs) it was computed from, so a provenance file can trace each number.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from results.records import Record

MISSING = "—"
NO_RECORD = "no record"
PARTIAL = "‡"  # a value from a partial checkpoint load (--allow-partial)
PARTIAL_NOTE = (f"{PARTIAL}: at least one value of the cell comes from a partial checkpoint "
                "load (eval --allow-partial: backbone keys missing or unknown); see the "
                "provenance.")
MEASURED, REPORTED = "measured", "reported"


@dataclass(frozen=True)
class Column:
    """One value column: which records fill it and how it is labelled.

    Attributes:
        key: Unique within its table, e.g. ``imagenet_linear/top1``.
        label: Lower header line, e.g. ``top-1``.
        group: Upper header spanning adjacent columns with the same group, e.g. ``Linear``.
        benchmark: Records' ``benchmark``; "" for columns filled another way.
        metric: Records' ``metric``.
        k: Records' ``extra["k"]`` (must be equal, None included).
        backend: Records' ``extra["backend"]`` (must be equal, None included).
        variant: Records' ``variant`` (must be equal; None = the suite's own settings).
        protocol: Records' ``protocol``; None accepts any (tables split by protocol first).
        digits: Decimals shown.
        higher_is_better: Bold the maximum (True), the minimum (False) or nothing (None).
    """

    key: str
    label: str
    group: str = ""
    benchmark: str = ""
    metric: str = ""
    k: Any = None
    backend: str | None = None
    protocol: str | None = None
    digits: int = 1
    higher_is_better: bool | None = True
    variant: str | None = None

    def matches(self, r: Record) -> bool:
        """Whether record ``r`` belongs in this column."""
        return (bool(self.benchmark) and r.benchmark == self.benchmark
                and r.metric == self.metric and r.k == self.k and r.backend == self.backend
                and r.variant == self.variant
                and (self.protocol is None or r.protocol == self.protocol))

    @property
    def title(self) -> str:
        """Group and label in one line, e.g. ``Linear top-1``."""
        return f"{self.group} {self.label}".strip()


@dataclass(frozen=True)
class Obs:
    """One observation behind a cell: a value (or why there is none) and its source."""

    value: float | None
    source: str  # a record id, or "<run>/metrics.jsonl#epoch=N"
    seed: int | None = None
    reason: str | None = None  # why value is None
    superseded: tuple[str, ...] = ()  # duplicate record ids this one won over
    partial: bool = False  # from a partial checkpoint load

    @classmethod
    def of(cls, r: Record, superseded: Iterable[str] = ()) -> Obs:
        """The observation of a record."""
        return cls(r.value if r.ok else None, r.id, r.seed,
                   None if r.ok else r.why_missing(), tuple(superseded), r.partial_load)


@dataclass
class Cell:
    """A table cell: mean ± sample std over its values, or missing with a reason."""

    obs: list[Obs] = field(default_factory=list)
    reported: float | None = None  # a published number (reported rows only)
    note: str = ""  # e.g. "†" on a reported number
    source: str = ""  # citation of a reported number
    bold: bool = False
    marker: str = ""  # footnote letter of the reason a value is missing

    @property
    def values(self) -> list[float]:
        """The usable values."""
        return [o.value for o in self.obs if o.value is not None]

    @property
    def n(self) -> int:
        """Number of values averaged (seeds)."""
        return len(self.values)

    @property
    def mean(self) -> float | None:
        """Mean of the values, or the reported number."""
        if self.reported is not None:
            return self.reported
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        """Sample standard deviation over seeds (None below 2 values)."""
        return statistics.stdev(self.values) if self.n >= 2 else None

    @property
    def missing(self) -> bool:
        """Whether the cell shows "—"."""
        return self.mean is None

    @property
    def partial(self) -> bool:
        """Whether a value of the cell comes from a partial checkpoint load."""
        return any(o.partial for o in self.obs if o.value is not None)

    @property
    def reason(self) -> str | None:
        """Why the cell is missing (distinct reasons of its records joined), else None."""
        if not self.missing:
            return None
        reasons = sorted({o.reason for o in self.obs if o.reason})
        return "; ".join(reasons) if reasons else NO_RECORD

    def text(self, digits: int = 1) -> str:
        """Plain text: ``73.2 ± 0.1 (3)``, ``73.2 (1)``, a reported ``73.2``, or ``—``."""
        if self.mean is None:
            return MISSING
        if self.reported is not None:
            return f"{self.reported:.{digits}f}{self.note}"
        std = f" ± {self.std:.{digits}f}" if self.std is not None else ""
        return f"{self.mean:.{digits}f}{std} ({self.n}){PARTIAL if self.partial else ''}"

    def provenance(self, digits: int = 1) -> dict[str, Any]:
        """The provenance entry: record ids, values, seeds, reason, superseded ids."""
        if self.reported is not None:
            return {"display": self.text(digits), "reported": self.reported,
                    "source": self.source, "record_ids": []}
        out: dict[str, Any] = {
            "display": self.text(digits), "mean": self.mean, "std": self.std, "n": self.n,
            "record_ids": [o.source for o in self.obs if o.value is not None],
            "values": self.values, "seeds": [o.seed for o in self.obs if o.value is not None],
            "bold": self.bold}
        excluded = [{"id": o.source, "reason": o.reason} for o in self.obs if o.value is None]
        if excluded:
            out["excluded"] = excluded
        superseded = [s for o in self.obs for s in o.superseded]
        if superseded:
            out["superseded"] = superseded
        partial = [o.source for o in self.obs if o.partial and o.value is not None]
        if partial:
            out["partial_load"] = partial
        if self.missing:
            out["reason"] = self.reason
        return out


@dataclass
class Row:
    """A table row: its label cells and one value cell per column key."""

    labels: tuple[str, ...]
    cells: dict[str, Cell]
    section: str = MEASURED


@dataclass
class Table:
    """A format-free table with its footnotes and duplicate-resolution report."""

    name: str
    title: str
    label_headers: list[str]
    columns: list[Column]
    rows: list[Row]
    protocol: str | None = None
    notes: list[str] = field(default_factory=list)
    duplicates: list[dict[str, Any]] = field(default_factory=list)

    def section(self, name: str) -> list[Row]:
        """The rows of one section (measured or reported), in order."""
        return [r for r in self.rows if r.section == name]

    def cell(self, labels: tuple[str, ...], key: str, section: str = MEASURED) -> Cell:
        """The cell at a row (by labels) and column (by key)."""
        for row in self.section(section):
            if row.labels == labels:
                return row.cells[key]
        raise KeyError(labels)


RowKey = Callable[[Record], tuple[str, ...]]


def measured_rows(records: Iterable[Record], columns: list[Column], row_of: RowKey,
                  superseded: dict[str, list[str]] | None = None,
                  order: Callable[[tuple[str, ...]], Any] | None = None) -> list[Row]:
    """Group records into rows (``row_of``) and cells (the first matching column).

    Args:
        records: Records already restricted to one protocol (or matched by column).
        columns: The table's columns.
        row_of: A record's row labels, e.g. (method, backbone, epochs).
        superseded: Kept record id -> ids of the duplicates it won over.
        order: Sort key of row labels (default: the labels themselves).
    """
    superseded = superseded or {}
    grouped: dict[tuple[str, ...], dict[str, list[Obs]]] = {}
    for r in records:
        col = next((c for c in columns if c.matches(r)), None)
        if col is None:
            continue
        cells = grouped.setdefault(row_of(r), {})
        cells.setdefault(col.key, []).append(Obs.of(r, superseded.get(r.id, ())))
    rows = [Row(labels, {c.key: Cell(obs=sorted(cells.get(c.key, []), key=_obs_order))
                         for c in columns})
            for labels, cells in grouped.items()]
    return sorted(rows, key=lambda row: (order or (lambda x: x))(row.labels))


def mixed_rows(rows: list[Row]) -> list[tuple[str, ...]]:
    """Rows where some cell holds two values for one seed (e.g. a sweep's configurations
    pooled under one method/backbone/epochs row)."""
    out = []
    for row in rows:
        for cell in row.cells.values():
            seeds = [o.seed for o in cell.obs if o.value is not None and o.seed is not None]
            if len(seeds) != len(set(seeds)):
                out.append(row.labels)
                break
    return out


def _obs_order(o: Obs) -> tuple[int, str]:
    return (o.seed if o.seed is not None else -1, o.source)


def mark_best(table: Table) -> None:
    """Bold the best measured value per column (ties on the shown value all bold).

    A column is only marked when at least two measured rows have a value, and
    reported rows never take part.
    """
    for col in table.columns:
        if col.higher_is_better is None:
            continue
        cells = [r.cells[col.key] for r in table.section(MEASURED) if not r.cells[col.key].missing]
        if len(cells) < 2:
            continue
        shown = [round(c.mean, col.digits) for c in cells]  # type: ignore[arg-type]
        best = max(shown) if col.higher_is_better else min(shown)
        for c, v in zip(cells, shown):
            c.bold = v == best


def mark_missing(table: Table) -> list[str]:
    """Give each distinct missing reason (other than "no record") a footnote letter.

    Returns:
        Footnote lines, e.g. ``(a) skipped: ImageNet not found at /data``.
    """
    letters: dict[str, str] = {}
    for row in table.rows:
        for col in table.columns:
            cell = row.cells[col.key]
            reason = cell.reason
            if reason is None or reason == NO_RECORD:
                continue
            if reason not in letters:
                letters[reason] = _letter(len(letters))
            cell.marker = letters[reason]
    lines = [f"({m}) {MISSING} {reason}." for reason, m in letters.items()]
    if any(r.cells[c.key].reason == NO_RECORD for r in table.rows for c in table.columns):
        lines.append(f"{MISSING} without a letter: no record for that cell.")
    return lines


def _letter(i: int) -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyz"
    return alphabet[i] if i < 26 else alphabet[i // 26 - 1] + alphabet[i % 26]


def provenance(table: Table) -> dict[str, Any]:
    """The ``<table>.provenance.json`` content: record ids (and more) per cell."""
    rows = []
    for row in table.rows:
        rows.append({"section": row.section,
                     "labels": dict(zip(table.label_headers, row.labels)),
                     "cells": {c.key: row.cells[c.key].provenance(c.digits)
                               for c in table.columns}})
    return {"table": table.name, "title": table.title, "protocol": table.protocol,
            "columns": [{"key": c.key, "title": c.title, "benchmark": c.benchmark,
                         "metric": c.metric, "k": c.k, "backend": c.backend,
                         "protocol": c.protocol, "variant": c.variant}
                        for c in table.columns],
            "rows": rows, "duplicates": table.duplicates, "notes": table.notes}

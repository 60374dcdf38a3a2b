"""Figures built from tables: method comparison bars, low-shot curves, sweep heatmaps.

They take the :class:`~results.aggregate.Table` objects of :mod:`results.tables`, so a
figure shows exactly the numbers of its table (measured rows only; mean with error
bars = sample std over seeds).
"""

from __future__ import annotations

import math
import textwrap
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from results.aggregate import MEASURED, Column, Row, Table

MAX_HEATMAPS = 4


def new_figure(rows: int, cols: int, width: float = 4.2, height: float = 3.0
               ) -> tuple[Figure, np.ndarray]:
    """A Figure on the Agg canvas and its ``rows × cols`` axes array."""
    fig = Figure(figsize=(cols * width, rows * height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, cols, squeeze=False)


def row_label(row: Row) -> str:
    """``VICReg · resnet18 · 100 ep`` (empty labels left out)."""
    method, *rest = row.labels
    parts = [method, *rest[:-1], f"{rest[-1]} ep" if rest and rest[-1] else ""]
    return " · ".join(p for p in parts if p)


def _filled(rows: list[Row], columns: list[Column]) -> tuple[list[Row], list[Column]]:
    cols = [c for c in columns if any(not r.cells[c.key].missing for r in rows)]
    return [r for r in rows if any(not r.cells[c.key].missing for c in cols)], cols


def _mean(row: Row, col: Column) -> float:
    mean = row.cells[col.key].mean
    return math.nan if mean is None else mean


def comparison_figure(table: Table) -> Figure | None:
    """Grouped bars: one group per column, one bar per measured row (error bar = std).

    Low-shot columns are left out (see :func:`lowshot_figure`); None when nothing to show.
    """
    columns = [c for c in table.columns if c.benchmark != "voc07_lowshot"]
    rows, cols = _filled(table.section(MEASURED), columns)
    if not rows:
        return None
    fig_width = max(5.5, 1.5 + len(cols) * (0.4 + 0.35 * len(rows)))
    fig, axes = new_figure(1, 1, width=fig_width, height=3.8)
    ax, x, width = axes[0, 0], np.arange(len(cols)), 0.8 / len(rows)
    for i, row in enumerate(rows):
        means = [_mean(row, c) for c in cols]
        stds = [row.cells[c.key].std or 0.0 for c in cols]
        bars = ax.bar(x + (i - (len(rows) - 1) / 2) * width, means, width, yerr=stds, capsize=3,
                      label=row_label(row))
        ns = [f"n={row.cells[c.key].n}" if not math.isnan(m) else "" for c, m in zip(cols, means)]
        ax.bar_label(bars, labels=ns, fontsize=6, padding=2)
    ax.set_xticks(x, [textwrap.fill(c.title, 18) for c in cols], fontsize=8)
    ax.set_xlim(-0.5, len(cols) - 0.5)
    ax.set_ylabel("%")
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(textwrap.fill(table.title, int(fig_width * 11)), fontsize=9)
    ax.legend(fontsize=7)
    return fig


def lowshot_figure(table: Table) -> Figure | None:
    """VOC07 low-shot mAP against k (log2 axis), one line per measured row."""
    columns = [c for c in table.columns if c.benchmark == "voc07_lowshot"
               and isinstance(c.k, (int, float))]
    rows, cols = _filled(table.section(MEASURED), columns)
    if not rows:
        return None
    fig, axes = new_figure(1, 1, width=5.5, height=3.8)
    ax = axes[0, 0]
    for row in rows:
        pts = [(c.k, _mean(row, c), row.cells[c.key].std or 0.0) for c in cols]
        pts = [p for p in pts if not math.isnan(p[1])]
        k, mean, std = (np.asarray(v, dtype=float) for v in zip(*pts))
        ax.errorbar(k, mean, yerr=std, marker="o", capsize=3, label=row_label(row))
    ks = sorted({c.k for c in cols})
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("k (positives per class)")
    ax.set_ylabel("mAP (%)")
    ax.grid(alpha=0.3)
    ax.set_title(f"VOC07 low-shot SVM — {table.protocol} protocol", fontsize=10)
    ax.legend(fontsize=7)
    return fig


def _num_key(x: str) -> tuple[int, float, str]:
    try:
        return (0, float(x), x)
    except ValueError:
        return (1, 0.0, x)


def heatmap_figure(table: Table, max_panels: int = MAX_HEATMAPS) -> Figure | None:
    """One heatmap per metric of a sweep table with exactly two hyperparameter columns.

    Rows are the first hyperparameter's values, columns the second's; each tile is the
    mean over seeds, annotated. None when the table does not have two varying keys.
    """
    rows, cols = _filled(table.section(MEASURED), table.columns)
    if len(table.label_headers) != 2 or not rows:
        return None
    cols = cols[:max_panels]
    ys = sorted({r.labels[0] for r in rows}, key=_num_key)
    xs = sorted({r.labels[1] for r in rows}, key=_num_key)
    fig, axes = new_figure(1, len(cols), width=max(3.6, 0.9 * len(xs) + 2), height=3.4)
    for ax, col in zip(axes[0], cols):
        grid = np.full((len(ys), len(xs)), np.nan)
        for r in rows:
            grid[ys.index(r.labels[0]), xs.index(r.labels[1])] = _mean(r, col)
        image = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", aspect="auto")
        _annotate(ax, grid, col.digits)
        ax.set_xticks(range(len(xs)), xs)
        ax.set_yticks(range(len(ys)), ys)
        ax.set_xlabel(table.label_headers[1])
        ax.set_ylabel(table.label_headers[0])
        ax.set_title(col.title, fontsize=9)
        fig.colorbar(image, ax=ax, shrink=0.8)
    fig.suptitle(table.title, fontsize=10)
    return fig


def _annotate(ax: Any, grid: np.ndarray, digits: int) -> None:
    finite = grid[np.isfinite(grid)]
    middle = (finite.min() + finite.max()) / 2 if finite.size else 0.0
    for (i, j), v in np.ndenumerate(grid):
        text = "—" if math.isnan(v) else f"{v:.{digits}f}"
        color = "white" if math.isnan(v) or v < middle else "black"
        ax.text(j, i, text, ha="center", va="center", fontsize=8, color=color)

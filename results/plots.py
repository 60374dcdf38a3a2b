"""Figures (PNG and PDF): training curves per run and per sweep, method comparisons,
sweep heatmaps and low-shot curves.

Usage::

    python -m results.plots [--runs DIR] [--records DIR] [--out DIR]

Training curves read each run's ``metrics.jsonl`` (the trainer's structured metrics
record); the other figures read the same tables as :mod:`results.tables`. Figures are
plain :class:`matplotlib.figure.Figure` objects on the Agg canvas (no pyplot, no global
backend switch), returned by the ``*_figure`` functions so tests can inspect them.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from results.plot_compare import comparison_figure, heatmap_figure, lowshot_figure, new_figure
from results.records import DEFAULT_RECORDS, load_records, resolve_duplicates
from results.runs import DEFAULT_RUNS, MANIFEST, Run, Sweep, find_runs, find_sweeps
from results.sweep_table import sweep_table
from results.tables import method_tables

DEFAULT_OUT = Path("results/plots")
STEP_KEYS = {"kind", "step", "epoch", "lr", "img_per_s", "probe_train_acc", "probe_val_acc",
             "std_mean", "std_min", "std_l2", "effective_rank"}
PROBE = ("probe_train_acc", "probe_val_acc")
STD = ("std_mean", "std_min", "std_l2")
STD_FLOOR = 1e-6


def save_figure(fig: Figure, out: Path, stem: str) -> list[Path]:
    """Write ``<out>/<stem>.png`` (150 dpi) and ``.pdf``; returns both paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.png", out / f"{stem}.pdf"]
    for path in paths:
        fig.savefig(path, dpi=150)
    return paths


def smooth(y: np.ndarray, span: int) -> np.ndarray:
    """Exponential moving average with the given span (NaNs carried forward)."""
    alpha, out, acc = 2.0 / (span + 1.0), np.empty_like(y, dtype=float), np.nan
    for i, v in enumerate(y):
        acc = v if np.isnan(acc) else (acc if np.isnan(v) else alpha * v + (1 - alpha) * acc)
        out[i] = acc
    return out


def series(records: list[dict[str, Any]], key: str, scale: float = 1.0
           ) -> tuple[np.ndarray, np.ndarray]:
    """``(step, value × scale)`` of the records that hold a number under ``key``."""
    pts = [(r["step"], r[key]) for r in records
           if isinstance(r.get(key), (int, float)) and isinstance(r.get("step"), (int, float))]
    if not pts:
        return np.empty(0), np.empty(0)
    xy = np.asarray(pts, dtype=float)
    return xy[:, 0], xy[:, 1] * scale


def plot_series(ax: Axes, x: np.ndarray, y: np.ndarray, label: str, color: Any = None,
                noisy: bool = True, **kw: Any) -> None:
    """A line; when long and ``noisy``, a faint raw line under its labelled EMA."""
    if not len(x):
        return
    if noisy and len(x) > 30:
        line = ax.plot(x, y, color=color, alpha=0.25, linewidth=0.8, label="_raw " + label)[0]
        ax.plot(x, smooth(y, max(5, len(y) // 25)), color=line.get_color(), label=label, **kw)
    else:
        ax.plot(x, y, color=color, label=label, marker="o" if len(x) < 12 else None,
                markersize=3, **kw)


def _panel(ax: Axes, title: str, ylabel: str = "", legend: bool = True) -> None:
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if not ax.lines:
        ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes,
                color="grey")
    elif legend:
        ax.legend(fontsize=7)


def loss_parts(records: list[dict[str, Any]]) -> list[str]:
    """The logged loss parts (numeric keys other than loss and the known bookkeeping)."""
    keys: dict[str, None] = {}
    for r in records:
        for k, v in r.items():
            if k not in STEP_KEYS and k != "loss" and isinstance(v, (int, float)):
                keys[k] = None
    return list(keys)


def run_figure(run: Run, title: str = "") -> Figure:
    """Training curves of one run: loss, loss parts, online probe, std, rank, lr."""
    metrics = run.metrics()
    steps = [m for m in metrics if m.get("kind") == "step"]
    epochs = [m for m in metrics if m.get("kind") == "epoch"]
    curve = steps or epochs
    fig, axes = new_figure(2, 3)
    plot_series(axes[0, 0], *series(curve, "loss"), label="loss")
    _panel(axes[0, 0], "loss")
    for part in loss_parts(curve):
        plot_series(axes[0, 1], *series(curve, part), label=part)
    _panel(axes[0, 1], "loss parts")
    for key in PROBE:
        plot_series(axes[0, 2], *series(epochs, key, 100.0), label=key)
    _panel(axes[0, 2], "online linear probe", "accuracy (%)")
    _std_panel(axes[1, 0], epochs)
    plot_series(axes[1, 1], *series(epochs, "effective_rank"), label="effective_rank")
    _panel(axes[1, 1], "effective rank of the embeddings")
    plot_series(axes[1, 2], *series(curve, "lr"), label="lr", noisy=False)
    _panel(axes[1, 2], "learning rate")
    cfg = run.flat
    fig.suptitle(title or f"{run.path.name}: {cfg.get('method.name', '?')} / "
                 f"{cfg.get('backbone.name', '?')}, seed {run.seed}", fontsize=11)
    return fig


def _std_panel(ax: Axes, epochs: list[dict[str, Any]]) -> None:
    """std_mean, std_min and std_l2 (≈ 1/√D when healthy) on a log axis, floored at 1e-6
    so that a collapsed (zero) std stays visible at the bottom."""
    for key in STD:
        x, y = series(epochs, key)
        plot_series(ax, x, np.maximum(y, STD_FLOOR), label=key)
    if ax.lines:
        ax.set_yscale("log")
    _panel(ax, "per-dimension std (log; collapse → 0)", "std")


SWEEP_PANELS = (("loss", "loss", 1.0, "step"), ("probe_val_acc", "online probe val (%)", 100.0,
                "epoch"), ("effective_rank", "effective rank", 1.0, "epoch"),
                ("std_mean", "per-dimension std (mean)", 1.0, "epoch"))


def sweep_figure(sweep: Sweep) -> Figure:
    """The sweep's runs overlaid: loss, probe accuracy, effective rank, std (one colour
    per configuration; seeds share it, and only the first seed is in the legend)."""
    fig, axes = new_figure(2, 2, width=5.0, height=3.3)
    varying = sweep.varying()
    names = sorted({sweep.label_of(r, varying) for r in sweep.runs})
    colors = {n: f"C{i % 10}" for i, n in enumerate(names)}
    seen: set[str] = set()
    for run in sorted(sweep.runs, key=lambda r: (sweep.label_of(r, varying), r.seed or 0)):
        name = sweep.label_of(run, varying)
        label = name if name not in seen else "_" + name
        seen.add(name)
        metrics = run.metrics()
        for ax, (key, _, scale, kind) in zip(axes.flat, SWEEP_PANELS):
            recs = [m for m in metrics if m.get("kind") == kind] or metrics
            plot_series(ax, *series(recs, key, scale), label=label, color=colors[name])
    handles: dict[str, Any] = {}
    for ax, (_, title, _, _) in zip(axes.flat, SWEEP_PANELS):
        _panel(ax, title, legend=False)
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="outside lower center",
                   ncols=min(3, len(handles)), fontsize=8)
    fig.suptitle(f"sweep {sweep.name}: {len(sweep.runs)} runs", fontsize=11)
    return fig


def _stem(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "plot"


def main(runs: str | Path = DEFAULT_RUNS, records: str | Path = DEFAULT_RECORDS,
         out: str | Path = DEFAULT_OUT) -> int:
    """Render every figure into ``out``; prints what it wrote."""
    out, runs_root, written = Path(out), Path(runs), []
    problems: list[str] = []
    for run in find_runs(runs_root, problems):
        stem = _stem(str(run.path.relative_to(runs_root)).replace("/", "__"))
        written += save_figure(run_figure(run), out / "curves", stem)
    kept, _ = resolve_duplicates(load_records(records, problems))
    for sweep in find_sweeps(runs_root):
        problems += [f"sweep {sweep.name}: {line}" for line in sweep.left_out
                     if MANIFEST in line]  # its runs' own problems are listed above
        if len(sweep.runs) < 2:
            problems.append(f"sweep {sweep.name} ({sweep.path}): no sweep figures: "
                            f"{len(sweep.runs)} readable run(s), they compare two or more")
            continue
        written += save_figure(sweep_figure(sweep), out, f"sweep_{_stem(sweep.name)}_curves")
        table = sweep_table(sweep, kept)
        fig = heatmap_figure(table) if table is not None else None
        if fig is not None:
            written += save_figure(fig, out, f"sweep_{_stem(sweep.name)}_heatmap")
    for table in method_tables(kept, []):
        for kind, make in (("compare", comparison_figure), ("lowshot", lowshot_figure)):
            fig = make(table)
            if fig is not None:
                written += save_figure(fig, out, f"{kind}_{table.name}")
    for path in written:
        print(f"wrote {path}")
    for line in sorted(set(problems)):
        print(f"note: left out: {line}", file=sys.stderr)
    if not written:
        print(f"no runs under {runs} and no records under {records}: nothing to plot")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The CLI arguments."""
    p = argparse.ArgumentParser(prog="python -m results.plots", description=__doc__.split("\n")[0])
    p.add_argument("--runs", default=str(DEFAULT_RUNS),
                   help=f"folder of run folders / sweeps (default: {DEFAULT_RUNS})")
    p.add_argument("--records", default=str(DEFAULT_RECORDS),
                   help=f"folder of result records (default: {DEFAULT_RECORDS})")
    p.add_argument("--out", default=str(DEFAULT_OUT),
                   help=f"output folder (default: {DEFAULT_OUT})")
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main(**vars(parse_args())))

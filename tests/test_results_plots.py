"""results.plots: figures render from fixture metrics/records with the expected series."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure

from results import plots
from results.plot_compare import comparison_figure, heatmap_figure, lowshot_figure
from results.records import load_records, resolve_duplicates
from results.runs import load_run, load_sweep
from results.sweep_table import sweep_table
from results.tables import method_tables
from tests.test_results_sweeps import make_grid_sweep, write_run
from tests.test_results_tables import write_record


def labels(fig: Figure) -> set[str]:
    """Legend labels of every line, bar group and errorbar in the figure."""
    out = {line.get_label() for ax in fig.axes for line in ax.lines}
    out |= {c.get_label() for ax in fig.axes for c in ax.containers}
    return {x for x in out if not x.startswith("_")}


def assert_saved(fig: Figure, out: Path, stem: str) -> None:
    paths = plots.save_figure(fig, out, stem)
    assert [p.suffix for p in paths] == [".png", ".pdf"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths[1].read_bytes()[:5] == b"%PDF-"


def test__run_curves_have_every_series(tmp_path: Path) -> None:
    write_run(tmp_path / "run", epochs=3, steps_per_epoch=15)  # 45 steps: EMA + raw lines
    fig = plots.run_figure(load_run(tmp_path / "run"))
    assert labels(fig) == {"loss", "invariance", "variance", "covariance", "probe_train_acc",
                           "probe_val_acc", "std_mean", "std_min", "std_l2", "effective_rank",
                           "lr"}
    probe = next(ax for ax in fig.axes if ax.get_title() == "online linear probe")
    val = next(line for line in probe.lines if line.get_label() == "probe_val_acc")
    assert list(val.get_xdata()) == [15, 30, 45]
    np.testing.assert_allclose(val.get_ydata(), [50.0] * 3)  # fraction -> %
    assert_saved(fig, tmp_path / "out", "run")


def test__sweep_curves_and_heatmap(tmp_path: Path) -> None:
    sweep = load_sweep(make_grid_sweep(tmp_path / "runs"))
    fig = plots.sweep_figure(sweep)
    assert labels(fig) == {f"optim.base_lr={lr} train.batch_size={bs}"
                           for lr in (0.1, 0.3) for bs in (128, 256)}
    assert len(fig.legends) == 1
    heat = heatmap_figure(sweep_table(sweep, []))
    assert heat is not None
    ax = next(ax for ax in heat.axes if ax.get_title() == "end of training probe val top-1")
    assert ax.get_ylabel() == "optim.base_lr" and ax.get_xlabel() == "train.batch_size"
    np.testing.assert_allclose(ax.images[0].get_array(), [[10.5, 10.5], [30.5, 30.5]])
    assert_saved(heat, tmp_path / "out", "heat")


@pytest.fixture
def tables_of(tmp_path: Path) -> dict[str, object]:
    d = tmp_path / "records"
    for seed, (v, b) in enumerate([(73.0, 71.0), (73.4, 71.6)]):
        write_record(d, f"v{seed}", "vicreg", seed, "imagenet_linear", "top1", v)
        write_record(d, f"b{seed}", "byol", seed, "imagenet_linear", "top1", b)
        for k, m in ((1, 20.0), (8, 40.0), (2, 30.0)):
            write_record(d, f"v{seed}k{k}", "vicreg", seed, "voc07_lowshot", f"mAP_k{k}",
                         m + seed, extra={"k": k})
    kept, dups = resolve_duplicates(load_records(d))
    return {t.name: t for t in method_tables(kept, dups)}


def test__comparison_bars_with_error_bars(tables_of: dict, tmp_path: Path) -> None:
    fig = comparison_figure(tables_of["imagenet_mini"])
    assert labels(fig) == {"VICReg · resnet18 · 100 ep", "BYOL · resnet18 · 100 ep"}
    bars = {c.get_label(): c for c in fig.axes[0].containers if hasattr(c, "patches")}
    assert bars["VICReg · resnet18 · 100 ep"].patches[0].get_height() == pytest.approx(73.2)
    err = bars["BYOL · resnet18 · 100 ep"].errorbar.lines[2][0].get_segments()[0]
    assert err[1][1] - err[0][1] == pytest.approx(2 * np.std([71.0, 71.6], ddof=1))
    assert_saved(fig, tmp_path / "out", "bars")


def test__lowshot_curve(tables_of: dict) -> None:
    table = tables_of["knn_lowshot_mini"]
    assert comparison_figure(table) is None  # low-shot columns only: no bars
    fig = lowshot_figure(table)
    (ax,) = fig.axes
    assert labels(fig) == {"VICReg · resnet18 · 100 ep"}
    assert list(ax.lines[0].get_xdata()) == [1, 2, 8]
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [20.5, 30.5, 40.5])
    assert ax.get_xscale() == "log"


def test__plots_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_run(tmp_path / "runs" / "demo" / "vicreg-fashion_mnist")
    d = tmp_path / "records"
    write_record(d, "k", "vicreg", 0, "knn", "top1_k20", 80.0, extra={"k": 20})
    write_record(d, "l", "vicreg", 0, "voc07_lowshot", "mAP_k4", 50.0, extra={"k": 4})
    out = tmp_path / "plots"
    assert plots.main(tmp_path / "runs", d, out) == 0
    names = sorted(p.name for p in out.rglob("*.*"))
    assert names == sorted(f"{s}.{ext}" for ext in ("png", "pdf") for s in (
        "demo__vicreg-fashion_mnist", "compare_knn_lowshot_mini", "lowshot_knn_lowshot_mini"))
    assert "wrote" in capsys.readouterr().out

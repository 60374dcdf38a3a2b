"""Tables and plots say what they left out; variants and partial loads are shown, never
pooled or hidden."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from results import plots, tables
from results.runs import IGNORED_KEYS
from tests.test_results_sweeps import make_grid_sweep, write_run
from tests.test_results_tables import write_record


def test__a_run_with_an_unreadable_config_is_named_and_the_sweep_table_kept(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two runs, one config.yaml damaged: the table shows the other run and says why the
    first is missing (before: the run vanished, and with it the whole sweep table)."""
    runs = tmp_path / "runs" / "pair"
    for lr in (0.1, 0.3):
        write_run(runs / f"vicreg-tiny_cnn-s0-lr{lr}", base_lr=lr)
    bad = runs / "vicreg-tiny_cnn-s0-lr0.1" / "config.yaml"
    bad.write_text(bad.read_text()[:60] + "\n  - [unclosed")
    assert tables.main(tmp_path / "records", tmp_path / "runs", tmp_path / "out") == 0
    err = capsys.readouterr().err
    assert f"note: left out: sweep pair: left out {bad}: unreadable" in err
    md = (tmp_path / "out" / "sweep_pair.md").read_text()
    assert f"Left out: {bad}: unreadable" in md and "1 runs" in md


def test__a_single_run_sweep_says_why_it_has_no_table(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    write_run(tmp_path / "runs" / "solo" / "vicreg-tiny_cnn-s0-x")
    write_run(tmp_path / "runs" / "solo" / "vicreg-tiny_cnn-s0-y")
    (tmp_path / "runs" / "solo" / "vicreg-tiny_cnn-s0-y" / "config.yaml").unlink()
    tables.main(tmp_path / "records", tmp_path / "runs", tmp_path / "out")
    err = capsys.readouterr().err
    assert "sweep solo" in err and "no sweep table: a single run" in err


def test__plots_name_what_they_left_out(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    sweep = make_grid_sweep(tmp_path / "runs")
    bad = next(sweep.iterdir()) / "config.yaml"
    bad.write_bytes(b"\xff\xfe not yaml: [")
    torn = tmp_path / "records" / "torn.json"
    torn.parent.mkdir()
    torn.write_text('{"id": "torn", "bench')
    plots.main(tmp_path / "runs", tmp_path / "records", tmp_path / "plots")
    err = capsys.readouterr().err
    assert f"note: left out: {bad}: unreadable" in err
    assert f"note: left out: {torn}: unreadable" in err


def test__tables_list_every_unreadable_record(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    records = tmp_path / "records"
    write_record(records, "ok", "vicreg", 0, "knn", "top1_k20", 61.0, extra={"k": 20})
    for name in ("a", "b"):
        (records / f"{name}.json").write_text('{"id": ')
    tables.main(records, tmp_path / "no-runs", tmp_path / "out")
    err = capsys.readouterr().err
    assert all(f"note: left out: {records / n}.json: unreadable" in err for n in ("a", "b"))


def test__a_variant_record_is_its_own_column_not_a_duplicate(tmp_path: Path) -> None:
    records = tmp_path / "records"
    write_record(records, "t007", "vicreg", 0, "knn", "top1_k20", 61.0, extra={"k": 20})
    write_record(records, "t05", "vicreg", 0, "knn", "top1_k20", 55.0, extra={"k": 20},
                 variant="temperature=0.5", date="2026-01-01T00:00:00")
    built, dups, _ = tables.build_tables(records, tmp_path / "no-runs")
    assert not dups
    by_name = {t.name: t for t in built}
    knn = by_name["knn_lowshot_mini"]
    assert knn.cell(("VICReg", "resnet18", "100"), "knn/top1_k20/k20").mean == 61.0
    other = by_name["other_mini"]
    (col,) = other.columns
    assert col.variant == "temperature=0.5" and "[temperature=0.5]" in col.title
    assert other.rows[0].cells[col.key].mean == 55.0


def test__a_partial_load_is_marked_in_the_cell_and_noted(tmp_path: Path) -> None:
    records = tmp_path / "records"
    write_record(records, "p", "vicreg", 0, "imagenet_linear", "top1", 70.0, partial_load=True,
                 key_report={"matched": 10, "missing": 2, "unexpected": 0})
    write_record(records, "f", "barlow_twins", 0, "imagenet_linear", "top1", 71.0)
    tables.main(records, tmp_path / "no-runs", tmp_path / "out")
    md = (tmp_path / "out" / "imagenet_mini.md").read_text()
    assert "| 70.0 (1)‡ |" in md and "**71.0 (1)** |" in md and "partial checkpoint load" in md
    tex = (tmp_path / "out" / "imagenet_mini.tex").read_text()
    assert r"70.0 (1)$^\ddagger$" in tex
    prov = json.loads((tmp_path / "out" / "imagenet_mini.provenance.json").read_text())
    cells = [c for r in prov["rows"] for c in r["cells"].values() if c.get("partial_load")]
    assert [c["partial_load"] for c in cells] == [["p"]]


def test__results_ignore_every_bookkeeping_key_of_the_trainer() -> None:
    """results/ must not import the trainer; its list has to cover the trainer's."""
    from trainer.config import unhashed_keys

    assert set(unhashed_keys()) <= set(IGNORED_KEYS)

"""results.tables: values, mean ± std, bold, reported rows, missing, duplicates, formats."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest

from results import tables
from results.aggregate import MEASURED, REPORTED, Table, provenance
from results.latex import latex
from results.markdown import markdown, to_csv
from results.records import load_records, resolve_duplicates

ROW_VICREG = ("VICReg", "resnet18", "100")
ROW_BT = ("Barlow Twins", "resnet18", "100")
LIN1 = "imagenet_linear/top1"


def write_record(folder: Path, rid: str, method: str, seed: int | None, benchmark: str,
                 metric: str, value: float | None, **kw: Any) -> dict[str, Any]:
    """One record file in the eval battery's schema."""
    rec = {"id": rid, "checkpoint": f"runs/{method}-s{seed}/backbone.pth",
           "checkpoint_sha256": f"sha-{method}-{seed}", "method": method,
           "backbone": "resnet18", "run_dir": None, "config_hash": f"h-{method}-{seed}",
           "seed": seed, "epochs": 100, "benchmark": benchmark, "protocol": "mini",
           "suite": "mini", "metric": metric, "value": value, "extra": {}, "status": "ok",
           "reason": None, "config": {}, "dataset_fingerprint": "fp", "git_sha": "abc1234",
           "date": "2025-03-01T12:00:00", "wall_time_s": 1.0}
    rec.update(kw)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{rid}.json").write_text(json.dumps(rec))
    return rec


@pytest.fixture
def records_dir(tmp_path: Path) -> Path:
    """VICReg (3 seeds) and Barlow Twins (2 seeds) under the mini protocol, plus edge cases."""
    d = tmp_path / "records"
    for seed, v in enumerate([73.1, 73.3, 73.2]):
        write_record(d, f"vic-lin1-s{seed}", "vicreg", seed, "imagenet_linear", "top1", v)
        write_record(d, f"vic-lin5-s{seed}", "vicreg", seed, "imagenet_linear", "top5", v + 18)
    for seed, v in enumerate([72.0, 72.4]):
        write_record(d, f"bt-lin1-s{seed}", "barlow_twins", seed, "imagenet_linear", "top1", v)
    # an older duplicate of vic-lin1-s0, and a semi-supervised eval that was skipped
    write_record(d, "vic-lin1-s0-old", "vicreg", 0, "imagenet_linear", "top1", 70.0,
                 date="2024-01-01T00:00:00")
    write_record(d, "vic-semi1-s0", "vicreg", 0, "imagenet_semi_1pct", "top1", None,
                 status="skipped", reason="ImageNet not found at /data/imagenet")
    # the same cell under another protocol: never in the same column
    write_record(d, "vic-lin1-paper", "vicreg", 0, "imagenet_linear", "top1", 60.0,
                 protocol="paper", suite="paper")
    for k, v in ((16, 70.0), (1, 30.0), (4, 50.0)):  # named as eval/bench_voc.py names them
        write_record(d, f"vic-low-k{k}", "vicreg", 0, "voc07_lowshot", f"mAP_k{k}", v,
                     extra={"k": k, "tap": "avgpool", "per_sample": [v - 1, v + 1]})
    for k, v in ((200, 58.0), (20, 60.0)):
        write_record(d, f"vic-knn-k{k}", "vicreg", 0, "knn", f"top1_k{k}", v,
                     extra={"k": k, "temperature": 0.07})
    for backend, v in (("detectron2", 38.0), ("torchvision", 35.0)):
        write_record(d, f"vic-coco-{backend}", "vicreg", 0, "coco_det", "AP", v,
                     extra={"backend": backend})
    return d


def build(records_dir: Path, tmp_path: Path, reported: bool = False) -> dict[str, Table]:
    built, _, _ = tables.build_tables(records_dir, tmp_path / "no-runs", reported)
    return {t.name: t for t in built}


def test__mean_std_seed_count_and_provenance(records_dir: Path, tmp_path: Path) -> None:
    t = build(records_dir, tmp_path)["imagenet_mini"]
    assert t.cell(ROW_VICREG, LIN1).text() == "73.2 ± 0.1 (3)"
    assert t.cell(ROW_BT, LIN1).text() == "72.2 ± 0.3 (2)"
    assert t.cell(ROW_VICREG, "imagenet_linear/top5").text() == "91.2 ± 0.1 (3)"
    prov = provenance(t)
    vic = next(r for r in prov["rows"] if r["labels"]["Method"] == "VICReg")
    assert vic["cells"][LIN1]["record_ids"] == ["vic-lin1-s0", "vic-lin1-s1", "vic-lin1-s2"]
    assert vic["cells"][LIN1]["seeds"] == [0, 1, 2]
    bt = next(r for r in prov["rows"] if r["labels"]["Method"] == "Barlow Twins")
    assert bt["cells"][LIN1]["record_ids"] == ["bt-lin1-s0", "bt-lin1-s1"]


def test__best_per_column_bold(records_dir: Path, tmp_path: Path) -> None:
    t = build(records_dir, tmp_path)["imagenet_mini"]
    assert t.cell(ROW_VICREG, LIN1).bold and not t.cell(ROW_BT, LIN1).bold
    assert not t.cell(ROW_VICREG, "imagenet_linear/top5").bold  # a lone value is not "best"
    md = markdown(t)
    assert "| **73.2 ± 0.1 (3)** |" in md and "| 72.2 ± 0.3 (2) |" in md
    assert r"\textbf{73.2 $\pm$ 0.1 (3)}" in latex(t)


def test__protocols_and_backends_never_share_a_column(records_dir: Path, tmp_path: Path) -> None:
    built = build(records_dir, tmp_path)
    assert built["imagenet_paper"].cell(ROW_VICREG, LIN1).text() == "60.0 (1)"
    assert built["imagenet_mini"].cell(ROW_VICREG, LIN1).n == 3
    transfer = built["transfer_mini"]
    coco = [c for c in transfer.columns if c.benchmark == "coco_det"]
    assert [c.backend for c in coco] == ["detectron2", "torchvision"]
    assert [transfer.cell(ROW_VICREG, c.key).text() for c in coco] == ["38.0 (1)", "35.0 (1)"]


def test__missing_value_shows_dash_with_reason(records_dir: Path, tmp_path: Path) -> None:
    t = build(records_dir, tmp_path)["imagenet_mini"]
    cell = t.cell(ROW_VICREG, "imagenet_semi_1pct/top1")
    assert cell.missing and cell.text() == "—"
    assert cell.reason == "skipped: ImageNet not found at /data/imagenet"
    md = markdown(t)
    assert "— (a)" in md and "(a) — skipped: ImageNet not found at /data/imagenet." in md
    assert r"---\textsuperscript{a}" in latex(t)
    vic = next(r for r in provenance(t)["rows"] if r["labels"]["Method"] == "VICReg")
    semi = vic["cells"]["imagenet_semi_1pct/top1"]
    assert semi["reason"] == "skipped: ImageNet not found at /data/imagenet"
    assert semi["excluded"] == [{"id": "vic-semi1-s0", "reason": semi["reason"]}]
    bt = next(r for r in provenance(t)["rows"] if r["labels"]["Method"] == "Barlow Twins")
    assert bt["cells"]["imagenet_semi_1pct/top1"]["reason"] == "no record"


def test__duplicates_resolved_by_newest_and_reported(records_dir: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert tables.main(records_dir, tmp_path / "no-runs", out) == 0
    err = capsys.readouterr().err
    assert "duplicate records" in err and "kept vic-lin1-s0" in err and "vic-lin1-s0-old" in err
    prov = json.loads((out / "imagenet_mini.provenance.json").read_text())
    assert prov["duplicates"] == [{
        "checkpoint_sha256": "sha-vicreg-0", "benchmark": "imagenet_linear", "protocol": "mini",
        "metric": "top1", "extra": {}, "kept": "vic-lin1-s0", "kept_date": "2025-03-01T12:00:00",
        "dropped": ["vic-lin1-s0-old"], "dropped_dates": ["2024-01-01T00:00:00"]}]
    vic = next(r for r in prov["rows"] if r["labels"]["Method"] == "VICReg")
    assert vic["cells"][LIN1]["superseded"] == ["vic-lin1-s0-old"]
    assert 70.0 not in vic["cells"][LIN1]["values"]


def test__ok_record_beats_a_newer_failure_and_dates_compare(tmp_path: Path) -> None:
    d = tmp_path / "r"
    write_record(d, "a", "vicreg", 0, "knn", "top1_k20", 60.0, date="2025-01-01T00:00:00Z")
    write_record(d, "b", "vicreg", 0, "knn", "top1_k20", None, status="failed",
                 reason="OOM", date="2025-06-01T00:00:00+02:00")
    write_record(d, "c", "vicreg", 0, "knn", "top1_k20", 61.0, date="2025-02-01T00:00:00")
    (d / "sweep.json").write_text(json.dumps({"runs": {}}))  # not a record: skipped
    problems: list[str] = []
    kept, dups = resolve_duplicates(load_records(d, problems))
    assert [r.id for r in kept] == ["c"] and [r.id for r in dups[0].dropped] == ["a", "b"]
    assert len(problems) == 1 and "not a result record" in problems[0]


def test__reported_rows_separate_never_bold_nor_averaged(records_dir: Path,
                                                         tmp_path: Path) -> None:
    assert not build(records_dir, tmp_path)["imagenet_mini"].section(REPORTED)
    t = build(records_dir, tmp_path, reported=True)["imagenet_mini"]
    rep = {r.labels[0]: r for r in t.section(REPORTED)}
    assert set(rep) >= {"VICReg (reported)", "BYOL (reported)", "SimCLR (reported)"}
    byol = rep["BYOL (reported)"].cells[LIN1]
    assert byol.text() == "74.3" and not byol.bold  # higher than ours, still not bold
    assert t.cell(ROW_VICREG, LIN1).bold and t.cell(ROW_VICREG, LIN1).n == 3
    assert rep["VICReg (reported)"].cells["imagenet_semi_1pct/top1"].text() == "54.8"
    md = markdown(t).splitlines()
    sep = md.index("| *reported* |" + " |" * 8)
    assert all("(reported)" not in line for line in md[:sep])
    assert "(reported)" in md[sep + 1]
    tex = latex(t)
    assert r"\midrule" + "\n" + r"\multicolumn{9}{l}{\textit{reported}} \\" in tex
    assert r"\textbf{74.3" not in tex
    transfer = build(records_dir, tmp_path, reported=True)["transfer_paper"]
    bt = next(r for r in transfer.section(REPORTED) if r.labels[0] == "Barlow Twins (reported)")
    assert bt.cells["coco_det/AP"].text() == "40.0†"
    assert not transfer.section(MEASURED)


def test__knn_and_lowshot_columns_sorted_by_k(records_dir: Path, tmp_path: Path) -> None:
    t = build(records_dir, tmp_path, reported=True)["knn_lowshot_mini"]
    assert [c.title for c in t.columns] == [
        "kNN top-1 k=20", "kNN top-1 k=200", "VOC07 low-shot mAP k=1", "VOC07 low-shot mAP k=4",
        "VOC07 low-shot mAP k=16"]
    assert [t.cell(ROW_VICREG, c.key).mean for c in t.columns] == [60.0, 58.0, 30.0, 50.0, 70.0]
    (vic,) = [r for r in t.section(REPORTED) if r.labels[0] == "VICReg (reported)"]
    assert [vic.cells[c.key].text() for c in t.columns[:2]] == ["64.5", "62.8"]  # Table 11
    assert "kNN: weighted vote" in markdown(t) and "k=20, k=200" not in markdown(t)
    assert "settings: tap=avgpool." in markdown(t)  # scalar settings only, no per_sample
    assert r"\multicolumn{3}{c}{VOC07 low-shot mAP}" in latex(t)


def _tex_columns(line: str) -> int:
    line = line.strip().removesuffix(r"\\")
    cells = re.split(r"(?<!\\)&", line)
    spans = [int(m.group(1)) if (m := re.search(r"\\multicolumn\{(\d+)\}", c)) else 1
             for c in cells]
    return sum(spans)


def check_latex_shape(tex: str) -> None:
    """Balanced braces and environments, booktabs rules, one column count for every row."""
    body = "\n".join(line for line in tex.splitlines() if not line.startswith("%"))
    unescaped = re.sub(r"\\[{}%_&$#]", "", body)
    depth = 0
    for ch in unescaped:
        depth += {"{": 1, "}": -1}.get(ch, 0)
        assert depth >= 0
    assert depth == 0
    assert not re.search(r"[_%&#]", re.sub(r"&", "", unescaped))  # specials are escaped
    assert re.findall(r"\\begin\{(\w+)\}", body) == re.findall(r"\\end\{(\w+)\}", body)
    lines = body.splitlines()
    assert lines[0].startswith(r"\begin{tabular}{") and lines[-1] == r"\end{tabular}"
    rules = [ln for ln in lines if ln in (r"\toprule", r"\midrule", r"\bottomrule")]
    assert rules[0] == r"\toprule" and rules[-1] == r"\bottomrule" and r"\midrule" in rules
    ncols = len(re.match(r"\\begin\{tabular\}\{([lcr]+)\}", lines[0]).group(1))
    rows = [ln for ln in lines if ln.endswith(r"\\")]
    assert rows and all(_tex_columns(r) == ncols for r in rows), rows


def test__latex_compiles_shape(records_dir: Path, tmp_path: Path) -> None:
    built = build(records_dir, tmp_path, reported=True)
    for t in built.values():
        check_latex_shape(latex(t))
    assert r"Semi-sup. 1\%" in latex(built["imagenet_mini"])


def test__markdown_and_csv_content(records_dir: Path, tmp_path: Path) -> None:
    t = build(records_dir, tmp_path, reported=True)["imagenet_mini"]
    md = [ln for ln in markdown(t).splitlines() if ln.startswith("|")]
    assert md[0].startswith("| Method | Backbone | Epochs | Linear top-1 | Linear top-5 |")
    assert {ln.count("|") for ln in md} == {len(t.columns) + 4}  # 3 labels, 1 outer
    rows = list(csv.reader(io.StringIO(to_csv(t))))
    assert rows[0][:5] == ["section", "Method", "Backbone", "Epochs", "Linear top-1"]
    assert ["measured", "VICReg", "resnet18", "100", "73.2 ± 0.1 (3)", "91.2 ± 0.1 (3)",
            "—", "—", "—", "—"] in rows
    assert rows[-1][0] == "reported" and all(len(r) == len(rows[0]) for r in rows)


def test__cli_writes_every_format(records_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert tables.main(records_dir, tmp_path / "no-runs", out, reported=True) == 0
    for suffix in (".md", ".tex", ".notes.tex", ".csv", ".provenance.json"):
        assert (out / f"imagenet_mini{suffix}").is_file()
    assert "Protocol: mini (suite mini)" in (out / "imagenet_mini.md").read_text()
    check_latex_shape((out / "transfer_mini.tex").read_text())
    assert "## ImageNet linear" in (out / "index.md").read_text()


def test__row_pooling_configs_is_flagged(tmp_path: Path) -> None:
    d = tmp_path / "records"
    for i, lr in enumerate((0.1, 0.3)):  # two configs, same seed: one method row
        write_record(d, f"r{i}", "vicreg", 0, "imagenet_linear", "top1", 70.0 + i,
                     checkpoint_sha256=f"sha-lr{lr}")
    t = build(d, tmp_path)["imagenet_mini"]
    assert t.cell(ROW_VICREG, LIN1).n == 2
    assert any("pools several checkpoints with the same seed" in n for n in t.notes)


def test__nothing_to_tabulate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert tables.main(tmp_path / "none", tmp_path / "none", tmp_path / "out") == 0
    assert "nothing to tabulate" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()


def test__reads_records_written_by_the_eval_battery(tmp_path: Path) -> None:
    """Contract with eval/records.py: its records load, dedupe and tabulate."""
    eval_records = pytest.importorskip("eval.records")
    common = dict(checkpoint="runs/x/backbone.pth", protocol="mini", config={},
                  dataset_fingerprint=None, git="abc", wall_time_s=1.0, reason=None, status="ok")
    for seed, v in ((0, 81.0), (1, 83.0)):
        meta = {"method": "vicreg", "backbone": "resnet18_small", "seed": seed, "epochs": 3,
                "run_dir": f"runs/x{seed}", "config_hash": f"h{seed}"}
        for suite in ("mini", "custom"):  # same cell from two suites: a duplicate
            rec = eval_records.make_record(
                meta=meta, checkpoint_sha256=f"sha{seed}", benchmark="knn", suite=suite,
                metric="top1_k20", value=v, extra={"k": 20, "temperature": 0.07}, **common)
            eval_records.write_record(tmp_path / "records", rec)
    built, dups, _ = tables.build_tables(tmp_path / "records", tmp_path / "no-runs")
    t = {x.name: x for x in built}["knn_lowshot_mini"]
    assert t.cell(("VICReg", "resnet18_small", "3"), "knn/top1_k20/k20").text() == "82.0 ± 1.4 (2)"
    assert len(dups) == 2

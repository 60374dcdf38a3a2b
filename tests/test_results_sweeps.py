"""results.runs and results.sweep_table: run folders, sweeps, hyperparameter × metric tables."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from results.aggregate import provenance
from results.latex import latex
from results.runs import find_runs, find_sweeps, load_sweep, read_metrics
from results.sweep_table import sweep_table
from results.tables import build_tables, finalize
from tests.test_results_tables import check_latex_shape, write_record

ROOT = Path(__file__).resolve().parent.parent


def write_run(folder: Path, *, method: str = "vicreg", base_lr: float = 0.3,
              batch_size: int = 256, seed: int = 0, epochs: int = 2, steps_per_epoch: int = 5,
              acc: float = 0.5, collapse: bool = False,
              method_kw: dict[str, Any] | None = None) -> dict[str, Any]:
    """A fake trainer run folder: ``config.yaml`` and ``metrics.jsonl``."""
    cfg = {"method": {"name": method, **(method_kw or {"variance_weight": 25.0})},
           "backbone": {"name": "tiny_cnn", "width": 32}, "data": {"name": "fashion_mnist"},
           "aug": {"recipe": "vicreg", "crop_size": 28},
           "optim": {"name": "lars", "base_lr": base_lr, "weight_decay": 1e-6},
           "train": {"epochs": epochs, "batch_size": batch_size, "seed": seed},
           "run_dir": str(folder)}
    meta = {"git_sha": "abc1234", "config_hash": f"h-{method}-{base_lr}-{batch_size}-{seed}",
            "world_size": 1, "device": "cpu", "precision": "fp32", "peak_lr": base_lr,
            "steps_per_epoch": steps_per_epoch, "total_steps": epochs * steps_per_epoch,
            "config": cfg}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    lines = []
    for step in range(1, epochs * steps_per_epoch + 1):
        parts = {"invariance": 2.0 / step, "variance": 0.5 / step, "covariance": 0.1 / step}
        lr = base_lr * 0.5 * (1 + math.cos(math.pi * step / (epochs * steps_per_epoch)))
        lines.append({"kind": "step", "step": step, "loss": 25 * sum(parts.values()), "lr": lr,
                      "img_per_s": 500.0, **parts})
        if step % steps_per_epoch == 0:
            e = step // steps_per_epoch
            lines.append({"kind": "epoch", "step": step, "epoch": e, "lr": lr, "loss": 1.0,
                          **parts, "probe_train_acc": acc + 0.01, "probe_val_acc": acc,
                          "std_mean": 0.0 if collapse else 0.9, "std_min": 0.0 if collapse else 0.4,
                          "std_l2": 0.0 if collapse else 0.04,
                          "effective_rank": 1.0 if collapse else 20.0 + e})
    text = "\n".join(json.dumps(x) for x in lines) + "\n"
    (folder / "metrics.jsonl").write_text(text + '{"kind": "step", "st')  # a torn last line
    return meta


def make_grid_sweep(root: Path, manifest: bool = True) -> Path:
    """runs/grid: base_lr × batch_size × 2 seeds; probe accuracy = base_lr + seed/100."""
    sweep = root / "grid"
    entries = {}
    for lr in (0.1, 0.3):
        for bs in (128, 256):
            for seed in (0, 1):
                name = f"vicreg-tiny_cnn-s{seed}-{int(lr * 10)}{bs}"
                write_run(sweep / name, base_lr=lr, batch_size=bs, seed=seed,
                          acc=lr + seed / 100)
                entries[name] = {"label": f"optim.base_lr={lr} train.batch_size={bs} "
                                          f"seed={seed}", "run_dir": str(sweep / name),
                                 "seed": seed}
    if manifest:
        (sweep / "sweep.json").write_text(json.dumps({"format": "sslbench.sweep/1",
                                                      "name": "grid", "runs": entries}))
    return sweep


def test__read_metrics_skips_a_torn_line(tmp_path: Path) -> None:
    write_run(tmp_path / "run", epochs=1, steps_per_epoch=3)
    recs = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["kind"] for r in recs] == ["step", "step", "step", "epoch"]


def test__sweep_varying_keys_from_manifest_or_diff(tmp_path: Path) -> None:
    make_grid_sweep(tmp_path / "a")
    make_grid_sweep(tmp_path / "b", manifest=False)
    for root in (tmp_path / "a", tmp_path / "b"):
        (sweep,) = find_sweeps(root)
        assert len(sweep.runs) == 8 and sweep.name == "grid"
        assert sweep.varying() == ["optim.base_lr", "train.batch_size"]
    assert len(find_runs(tmp_path)) == 16


def test__sweep_table_mean_over_seeds_with_records(tmp_path: Path) -> None:
    sweep_dir = make_grid_sweep(tmp_path / "runs")
    records = tmp_path / "records"
    for seed, v in ((0, 61.0), (1, 63.0)):  # kNN of the (0.3, 256) runs, linked by config hash
        write_record(records, f"knn-s{seed}", "vicreg", seed, "knn", "top1_k20", v,
                     config_hash=f"h-vicreg-0.3-256-{seed}")
    built, _, _ = build_tables(records, tmp_path / "runs")
    t = next(t for t in built if t.name == "sweep_grid")
    assert t.label_headers == ["optim.base_lr", "train.batch_size"]
    assert [r.labels for r in t.rows] == [("0.1", "128"), ("0.1", "256"), ("0.3", "128"),
                                          ("0.3", "256")]
    probe = t.cell(("0.3", "256"), "train/probe_val_acc")
    assert probe.text() == "30.5 ± 0.7 (2)" and probe.bold
    assert t.cell(("0.3", "256"), "mini/knn/top1_k20").text() == "62.0 ± 1.4 (2)"
    assert t.cell(("0.1", "128"), "mini/knn/top1_k20").missing
    assert t.cell(("0.1", "128"), "train/effective_rank").text() == "22.0 ± 0.0 (2)"
    assert not t.cell(("0.1", "128"), "train/effective_rank").bold  # diagnostics: no "best"
    cells = next(r for r in provenance(t)["rows"] if r["labels"]["train.batch_size"] == "256"
                 and r["labels"]["optim.base_lr"] == "0.3")["cells"]
    assert cells["mini/knn/top1_k20"]["record_ids"] == ["knn-s0", "knn-s1"]
    assert cells["train/probe_val_acc"]["record_ids"] == [
        f"{sweep_dir}/vicreg-tiny_cnn-s{s}-3256/metrics.jsonl#epoch=2" for s in (0, 1)]
    check_latex_shape(latex(t))


def test__named_runs_are_labelled_by_name(tmp_path: Path) -> None:
    sweep = tmp_path / "collapse"
    write_run(sweep / "a", method="vicreg", acc=0.6)
    write_run(sweep / "b", method="simsiam", base_lr=0.05, batch_size=128, acc=0.2,
              collapse=True, method_kw={"use_predictor": False, "var_reg_weight": 1.0})
    (sweep / "sweep.json").write_text(json.dumps({"runs": {
        "a": {"label": "vicreg seed=0"}, "b": {"label": "simsiam_no_pred seed=0"}}}))
    loaded = load_sweep(sweep)
    assert len(loaded.varying()) > 4  # too many to show as columns
    t = sweep_table(loaded, [])
    assert t is not None and t.label_headers == ["run"]
    finalize(t)
    assert [r.labels for r in t.rows] == [("simsiam_no_pred",), ("vicreg",)]
    assert t.cell(("simsiam_no_pred",), "train/std_mean").text(3) == "0.000 (1)"
    assert t.cell(("vicreg",), "train/probe_val_acc").bold


def test__results_never_imports_torch() -> None:
    code = ("import sys, results.tables, results.plots, results.sweep_table; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test__frozen_probe_columns_come_from_probe_json(tmp_path: Path) -> None:
    sweep_dir = make_grid_sweep(tmp_path / "runs")
    for name, lin in (("s0-1128", 70.0), ("s1-1128", 72.0), ("s0-3128", 60.0)):
        run = sweep_dir / f"vicreg-tiny_cnn-{name}"
        (run / "probe.json").write_text(json.dumps({"labelled": 1000, "linear": lin,
                                                    "knn": lin - 5, "backbone_sha256": "x"}))
    (sweep_dir / "vicreg-tiny_cnn-s0-3256" / "probe.json").write_text("{torn")  # ignored
    built, _, _ = build_tables(tmp_path / "records", tmp_path / "runs")
    t = next(t for t in built if t.name == "sweep_grid")
    assert t.cell(("0.1", "128"), "probe/linear").text() == "71.0 ± 1.4 (2)"
    assert t.cell(("0.1", "128"), "probe/knn").text() == "66.0 ± 1.4 (2)"
    assert t.cell(("0.3", "128"), "probe/linear").text() == "60.0 (1)"
    assert t.cell(("0.1", "128"), "probe/linear").bold  # higher is better
    assert not t.cell(("0.3", "128"), "probe/linear").bold
    assert t.cell(("0.3", "256"), "probe/linear").missing  # the torn file gives nothing
    assert any("fit on 1000 labelled training images" in n for n in t.notes)
    cells = next(r for r in provenance(t)["rows"] if r["labels"]["train.batch_size"] == "128"
                 and r["labels"]["optim.base_lr"] == "0.1")["cells"]
    assert cells["probe/linear"]["record_ids"] == [
        f"{sweep_dir}/vicreg-tiny_cnn-s{s}-1128/probe.json" for s in (0, 1)]


def test__detection_folders_under_runs_are_not_runs(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    make_grid_sweep(root)
    for name in ("mini_voc_C4-1", "mini_coco_C4-2"):  # eval/detection's default output_dir
        folder = root / "detection" / name
        folder.mkdir(parents=True)
        (folder / "config.yaml").write_text("MODEL: {DEVICE: cpu}\nSOLVER: {MAX_ITER: 200}\n")
        (folder / "metrics.json").write_text('{"backend": "detectron2", "results": {}}')
    assert [s.name for s in find_sweeps(root)] == ["grid"]
    assert len(find_runs(root)) == 8
    built, _, _ = build_tables(tmp_path / "records", root)
    assert not any("detection" in t.name for t in built)

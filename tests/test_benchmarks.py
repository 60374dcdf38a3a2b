"""Smoke test of benchmarks/throughput.py: both sides run and the report is complete."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("lightly")

from benchmarks import throughput  # noqa: E402  (after the importorskip)


@pytest.fixture
def one_thread():
    """One torch thread: the tiny steps are fastest so, and shared CI cores stay usable."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test__both_sides_report_positive_finite_throughput(
    fmnist_root: Path, tmp_path: Path, one_thread: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = throughput.make_settings(
        "cpu", backbone="tiny_cnn", width=4, batch_size=8, steps=1, warmup=1, num_workers=0,
        num_images=16, data_root=str(fmnist_root), device="cpu",
    )  # fmt: skip
    report = throughput.run_benchmark(["vicreg"], settings)
    path = throughput.write_json(report, tmp_path / "out" / "report.json")
    saved = json.loads(path.read_text())
    assert saved["schema"] == throughput.SCHEMA
    assert {"device", "date", "settings", "precision", "channels_last", "target_ratio",
            "environment", "results"} <= set(saved)
    assert saved["settings"]["backbone"] == "tiny_cnn" and saved["precision"] == "fp32"
    assert {"torch", "lightly", "git_sha"} <= set(saved["environment"])
    (row,) = saved["results"]
    assert row["method"] == "vicreg" and row["heads"] == {"projector": "2048-2048-2048"}
    for side in ("ours", "lightly"):
        assert {"images_per_s", "images_per_s_mean", "median_step_s", "block_steps",
                "step_times_s"} <= set(row[side])
        assert math.isfinite(row[side]["images_per_s"]) and row[side]["images_per_s"] > 0
        assert len(row[side]["step_times_s"]) == 1
    assert "median_data_wait_s" in row["lightly"]
    assert row["ratio"] == pytest.approx(
        row["ours"]["images_per_s"] / row["lightly"]["images_per_s"])
    assert row["target"] == 1.0 and row["target_met"] == (row["ratio"] >= 1.0)
    table = throughput.format_table(saved)
    assert "| vicreg |" in table and "ours/lightly" in table
    # default path: benchmarks/results/<device>-<date>.json, next to the script
    monkeypatch.setattr(throughput, "__file__", str(tmp_path / "benchmarks" / "throughput.py"))
    default = throughput.write_json(report)
    assert default.parent == tmp_path / "benchmarks" / "results"
    assert default.name.startswith("cpu-") and default.name.endswith(f"-{report['date'][:10]}.json")


def test__cli_flags_override_the_preset() -> None:
    args = throughput.parse_args(["--preset", "cpu", "--methods", "simclr,byol", "--steps", "3",
                                  "--compile", "--num-workers", "0"])
    flags = {k: v for k, v in vars(args).items() if k not in ("preset", "methods", "out")}
    s = throughput.make_settings(args.preset, **flags)
    assert args.methods == "simclr,byol"
    assert (s.backbone, s.width, s.image_size, s.batch_size) == ("resnet18_small", 32, 28, 64)
    assert s.steps == 3 and s.warmup == 2 and s.compile_ours and not s.compile_lightly
    assert s.num_workers == 0


def test__block_median_counts_a_bursty_loader_fairly() -> None:
    # Two workers deliver two batches at once every 1 s: steps alternate 0.9 s and 0.1 s.
    times = [0.9, 0.1] * 4
    out = throughput.summarize(times, batch_size=10, block=2)
    assert out["images_per_s"] == pytest.approx(20.0)  # 20 images per 1 s block
    assert out["images_per_s_mean"] == pytest.approx(20.0)


def test__unknown_method_is_rejected(fmnist_root: Path) -> None:
    settings = throughput.make_settings("cpu", data_root=str(fmnist_root), num_workers=0)
    with pytest.raises(ValueError, match="methods must be among"):
        throughput.run_benchmark(["moco"], settings)


def test__cpu_precision_reports_every_variant_and_the_lightly_comparison(
        fmnist_root: Path, tmp_path: Path, one_thread: None) -> None:
    from benchmarks import cpu_precision

    out = tmp_path / "cpu.json"
    args = cpu_precision.parse_args(
        ["--widths", "4", "--backbone", "tiny_cnn", "--batch-size", "8", "--steps", "1",
         "--warmup", "1", "--num-images", "16", "--data-root", str(fmnist_root),
         "--variants", "fp32", "bf16+cl", "--note", "test", "--out", str(out)])
    report = cpu_precision.run(args, out)
    assert json.loads(out.read_text()) == report
    assert [(r["width"], r["variant"]) for r in report["results"]] == [(4, "fp32"),
                                                                       (4, "bf16+cl")]
    for r in report["results"]:
        assert r["images_per_s"] > 0 and r["images_per_cpu_s"] > 0 and r["first_step_s"] > 0
    assert report["machine"]["nproc"] >= 1 and report["machine"]["cpu_model"]
    assert report["lightly"]["variant"] in ("fp32", "bf16+cl")
    assert report["lightly"]["result"]["ratio"] > 0
    table = cpu_precision.format_table(report)
    assert "| 4 | bf16+cl |" in table and "ours vs lightly" in table

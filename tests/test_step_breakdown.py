"""benchmarks/step_breakdown.py: the trainer's step timed phase by phase, unchanged by it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks import step_breakdown
from trainer.config import load_config
from trainer.dist import init_distributed
from trainer.loop import build_run, train_step


def tiny(root: Path) -> list[str]:
    return [f"data.root={root}", "backbone.name=tiny_cnn", "backbone.width=4",
            "method.name=simclr", "method.projector=32-16", "train.batch_size=16",
            "data.num_samples=64", "data.val_samples=16", "aug.crop_size=28",
            "train.device=cpu"]


def test__mark_sees_the_three_phases_in_order_and_changes_nothing(
        fmnist_root: Path, tmp_path: Path) -> None:
    states, seen = [], []
    for i, mark in enumerate((None, seen.append)):
        cfg = load_config([], [*tiny(fmnist_root), f"run_dir={tmp_path / str(i)}",
                               "train.progress=false", "train.tensorboard=false"])
        run = build_run(cfg, init_distributed("cpu"), tmp_path / str(i))
        for step in range(3):
            train_step(run, step, 3, mark=mark)
        states.append({k: v.clone() for k, v in run.module.state_dict().items()})
    assert seen == ["augment", "forward", "backward+optimizer"] * 3  # "load" is the tool's
    assert states[0].keys() == states[1].keys()
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k


def test__report_phases_add_up_and_ops_are_ranked(fmnist_root: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sb.json"
    rc = step_breakdown.main([*tiny(fmnist_root), "--steps", "3", "--warmup", "1",
                              "--profile-steps", "1", "--top", "5", "--out", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["schema"] == step_breakdown.SCHEMA and report["steps"] == 3
    phases = report["phases"]
    assert list(phases) == list(step_breakdown.PHASES)
    assert phases["load"]["s_per_step"] >= 0  # in memory: no loader to wait for
    assert all(p["s_per_step"] > 0 for name, p in phases.items() if name != "load")
    assert sum(p["s_per_step"] for p in phases.values()) == pytest.approx(report["step_s"])
    assert sum(p["share"] for p in phases.values()) == pytest.approx(1.0)
    assert report["images_per_s"] == pytest.approx(16 / report["step_s"])
    assert report["run"]["backbone"] == "tiny_cnn" and report["run"]["precision"] == "fp32"
    assert report["run"]["backbone_kwargs"] == {"width": 4}
    assert report["run"]["streamed"] is False and report["run"]["num_workers"] is None
    ops = report["top_ops"]
    assert 1 <= len(ops) <= 5
    assert [o["self_ms_per_step"] for o in ops] == sorted(
        (o["self_ms_per_step"] for o in ops), reverse=True)
    assert any("conv" in o["op"] for o in ops)  # a CNN's time is in its convolutions
    table = capsys.readouterr().out
    assert "| backward+optimizer |" in table and "tiny_cnn" in table


def test__a_config_mistake_is_one_line_not_a_traceback(
        fmnist_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = step_breakdown.main([*tiny(fmnist_root), "train.no_such_key=1", "--steps", "1"])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("config error:") and "no_such_key" in err
    rc = step_breakdown.main([*tiny(fmnist_root / "missing"), "--steps", "1"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "error:" in err and "missing" in err and "Traceback" not in err


def test__a_jpeg_folder_is_read_by_the_trainers_loader_and_its_wait_is_timed(
        jpeg_tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "sb.json"
    rc = step_breakdown.main(["data.name=image_folder", f"data.root={jpeg_tree}",
                              "data.num_workers=1", "backbone.name=tiny_cnn", "backbone.width=4",
                              "method.projector=32-16", "aug.crop_size=16",
                              "train.batch_size=16", "data.val_samples=16", "train.device=cpu",
                              "--steps", "3", "--warmup", "1", "--profile-steps", "1",
                              "--out", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    run = report["run"]
    assert run["data"] == "image_folder" and run["streamed"] is True and run["num_workers"] == 1
    # 5 steps of 16 from a 64-image folder: the stream crosses an epoch, and each step got
    # its own batch (train_step refuses another step's batch)
    assert all(p["s_per_step"] > 0 for p in report["phases"].values())
    assert sum(p["share"] for p in report["phases"].values()) == pytest.approx(1.0)

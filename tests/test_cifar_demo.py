"""``make cifar-demo`` at tiny size: CIFAR-format files → pretraining through the sweep
launcher (local processes) → the chained cifar10 eval suite → the table beside solo-learn."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dataroom.cifar import read_cifar
from sweeps.cifar_demo import main


@pytest.mark.slow
def test__cifar_demo_end_to_end_at_tiny_size(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    code = main("simsiam", out=str(out), train=64, test=32, epochs=1, width=4, batch=32,
                linear_epochs=1)
    assert code == 0
    data = read_cifar("cifar10", out / "data", "test")  # the official layout, read back
    assert len(data) == 32 and (out / "data" / "cifar-10-batches-py" / "data_batch_5").is_file()
    records = [json.loads(p.read_text()) for p in (out / "records").glob("*.json")]
    got = {(r["benchmark"], r["metric"]): r for r in records}
    assert {("cifar10_linear", "top1"), ("cifar10_knn", "top1_k20")} <= set(got)
    assert all(r["status"] == "ok" and r["method"] == "simsiam" for r in records)
    linear = got[("cifar10_linear", "top1")]
    assert linear["extra"]["lr"] == 30.0  # solo-learn's SimSiam linear lr
    assert linear["config"]["benchmark"]["epochs"] == 1  # the demo's shortened protocol
    run_dir = Path(linear["run_dir"])
    assert run_dir.parent == out / "cifar-demo-simsiam" and (run_dir / "DONE").is_file()
    assert linear["variant"] == "epochs=1 milestones=1,1"  # not the suite's protocol
    table = (out / "tables" / "cifar10_paper.md").read_text()
    assert "| Linear top-1 [epochs=1 milestones=1,1] |" in table  # its own column
    ours = next(line for line in table.splitlines() if line.startswith("| SimSiam |"))
    assert ours.startswith("| SimSiam | resnet18_small | 1 | — | — | ")
    assert f"| {linear['value']:.2f} (1) |" in ours
    assert "| SimSiam (reported) | resnet18_small | 1000 | 90.51 | 99.72 | — |" in table
    assert main("dino", out=str(out)) == 2  # not one of the five

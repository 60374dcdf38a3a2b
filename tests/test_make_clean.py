"""``make clean`` removes only what can be rebuilt; runs and records go only on purpose."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test__clean_keeps_runs_and_records_and_clean_runs_needs_confirm(tmp_path: Path) -> None:
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    keep = [tmp_path / "runs" / "cpu" / "vicreg-x" / "checkpoint.pth",
            tmp_path / "results" / "records" / "abc.json",
            tmp_path / "results" / "figures" / "demo_curves.png"]
    gone = [tmp_path / "results" / "tables" / "index.md", tmp_path / "results" / "plots" / "a.png",
            tmp_path / "results" / "demo" / "tables" / "x.md", tmp_path / ".pytest_cache" / "v",
            tmp_path / "pkg" / "__pycache__" / "m.pyc"]
    for path in keep + gone:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    subprocess.run(["make", "clean"], cwd=tmp_path, check=True, capture_output=True)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in gone)
    refused = subprocess.run(["make", "clean-runs"], cwd=tmp_path, capture_output=True, text=True)
    assert refused.returncode != 0 and "CONFIRM=1" in refused.stdout
    assert all(p.exists() for p in keep)
    subprocess.run(["make", "clean-runs", "CONFIRM=1"], cwd=tmp_path, check=True,
                   capture_output=True)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results" / "records").exists()
    assert keep[2].exists()  # the README's figures are not generated output

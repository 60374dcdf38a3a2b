"""The eval battery end to end: ``--suite mini`` on a tiny_cnn backbone.pth.

The mini datasets are generated from the real Fashion-MNIST files in each benchmark's
on-disk format, so the real readers, feature cache, probes, SVMs and records all run.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from backbones import build_backbone
from eval import mini
from eval.config import DataPaths, apply_overrides
from eval.run_all import main, resolve_suite

REPO = Path(__file__).resolve().parent.parent
SCHEMA = ["id", "checkpoint", "checkpoint_sha256", "method", "backbone", "run_dir", "config_hash",
          "seed", "epochs", "benchmark", "protocol", "suite", "metric", "value", "extra", "status",
          "reason", "variant", "partial_load", "key_report", "group", "config",
          "dataset_fingerprint", "git_sha", "date", "wall_time_s"]
MINI_BENCHMARKS = ["imagenet_linear", "imagenet_semi_1pct", "imagenet_semi_10pct", "knn",
                   "places205_linear", "inat18_linear", "voc07_svm", "voc07_lowshot",
                   "voc07+12_det", "coco_det", "coco_seg"]
DETECTION = {"voc07+12_det", "coco_det", "coco_seg"}  # skipped for a non-ResNet checkpoint


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convs and BLAS calls: threads only add contention
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def mini_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        mini._find_fashion(None)
    except FileNotFoundError as e:
        pytest.skip(str(e))
    root = tmp_path_factory.mktemp("mini")
    mini.ensure_mini(root)
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    bb = build_backbone("tiny_cnn", width=8)
    (run / "config.yaml").write_text(yaml.safe_dump({"config_hash": "c0ffee", "config": {
        "method": {"name": "vicreg"}, "backbone": {"name": "tiny_cnn", "width": 8},
        "train": {"seed": 7, "epochs": 3}}}))
    meta = {"backbone": "tiny_cnn", "backbone_kwargs": {"width": 8}, "num_features": 16,
            "method": "vicreg", "config_hash": "c0ffee", "git_sha": "abc", "steps_done": 1,
            "steps_total": 1}
    path = run / "backbone.pth"
    torch.save({"format": "sslbench.backbone/1", "state_dict": bb.state_dict(), "meta": meta}, path)
    return path


def test_mini_generation_is_idempotent_and_real_format(mini_root: Path) -> None:
    manifest = json.loads((mini_root / "mini.json").read_text())
    stamp = (mini_root / "imagenet/train").stat().st_mtime_ns
    assert mini.ensure_mini(mini_root) == manifest["fingerprint"]
    assert (mini_root / "imagenet/train").stat().st_mtime_ns == stamp  # nothing rewritten
    lines = (mini_root / "imagenet/imagenet_subsets/1percent.txt").read_text().split()
    assert lines[0].startswith("n9") and lines[0].endswith(".JPEG")
    voc = mini_root / "VOCdevkit/VOC2007/ImageSets/Main"
    assert {v.split()[1] for f in voc.glob("*_trainval.txt") for v in f.read_text().splitlines()} \
        == {"1", "0", "-1"}  # present, difficult-only and absent all occur


@pytest.mark.slow
def test_mini_suite_end_to_end(mini_root: Path, checkpoint: Path, tmp_path: Path,
                               capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "records"
    cache = f"cache_dir={tmp_path / 'cache'}"
    records = main(str(checkpoint), "mini", str(mini_root), out=str(out), overrides=[cache])
    assert sorted({r["benchmark"] for r in records}) == sorted(MINI_BENCHMARKS)
    assert all(r["status"] == "ok" for r in records if r["benchmark"] not in DETECTION), \
        [r["reason"] for r in records]
    det = [r for r in records if r["benchmark"] in DETECTION]
    assert det and all(r["status"] == "skipped" and "ResNet" in r["reason"] for r in det)
    sha = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    files = sorted(out.glob("*.json"))
    assert len(files) == len(records)
    for path in files:
        rec = json.loads(path.read_text())
        assert list(rec) == SCHEMA
        key = sha + rec["benchmark"] + rec["protocol"] + rec["metric"] + rec["suite"]
        assert rec["id"] == hashlib.sha1(key.encode()).hexdigest() == path.stem
        if rec["status"] == "ok":
            assert 0.0 <= rec["value"] <= 100.0
        else:
            assert rec["value"] is None and rec["benchmark"] in DETECTION
        assert rec["protocol"] == rec["suite"] == "mini"
        assert rec["run_dir"] == str(checkpoint.parent) and rec["seed"] == 7
        assert rec["epochs"] == 3 and rec["method"] == "vicreg" and rec["config_hash"] == "c0ffee"
        assert rec["config"]["benchmark"] and (rec["dataset_fingerprint"] or rec["status"] != "ok")
    metrics = {(r["benchmark"], r["metric"]) for r in records}
    assert {("knn", "top1_k20"), ("knn", "top1_k200"), ("voc07_svm", "mAP"),
            ("voc07_lowshot", "mAP_k8"), ("imagenet_linear", "top5")} <= metrics
    knn = next(r for r in records if r["metric"] == "top1_k20")
    assert knn["value"] > 30  # random tiny_cnn features of Fashion-MNIST: well above 10 % chance
    capsys.readouterr()
    again = main(str(checkpoint), "mini", str(mini_root), out=str(out), overrides=[cache])
    assert "already recorded" in capsys.readouterr().out
    assert sorted(r["id"] for r in again) == sorted(r["id"] for r in records)


def test_missing_dataset_is_skipped_and_others_run(mini_root: Path, checkpoint: Path,
                                                   tmp_path: Path) -> None:
    records = main(str(checkpoint), "mini", str(mini_root), only="knn,voc07_svm",
                   out=str(tmp_path / "rec"),
                   overrides=[f"data.voc07={tmp_path / 'nowhere'}", "cache_dir="])
    status = {r["benchmark"]: r for r in records}
    assert status["knn"]["status"] == "ok"
    assert status["voc07_svm"]["status"] == "skipped" and status["voc07_svm"]["value"] is None
    assert "ImageSets/Main/<class>_<split>.txt" in status["voc07_svm"]["reason"]


def test_overrides_are_typed_and_validated() -> None:
    suite, data = resolve_suite("mini", ["knn.ks=10,30", "device=cpu", "data.inat18=/x"], None)
    assert suite.benchmarks["knn"].ks == (10, 30) and suite.run.device == "cpu"
    assert apply_overrides(DataPaths(), data, "data").inat18 == "/x"
    assert resolve_suite("mini", ["cache_dir="], None)[0].run.cache_dir == ""  # disables
    with pytest.raises(KeyError, match="knn.temperature"):
        resolve_suite("mini", ["knn.temprature=0.1"], None)
    with pytest.raises(ValueError, match="expected an int"):
        resolve_suite("mini", ["knn.ks=a,b"], None)
    with pytest.raises(KeyError, match="valid: imagenet_linear"):
        resolve_suite("mini", [], "knn,detection")


@pytest.mark.slow
def test_script_path_entry_point(checkpoint: Path) -> None:
    proc = subprocess.run([sys.executable, "eval/run_all.py", str(checkpoint), "--suite", "mini",
                           "voc07_svm.cost=1"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2
    assert "unknown key 'voc07_svm.cost'" in proc.stderr and "voc07_svm.costs" in proc.stderr

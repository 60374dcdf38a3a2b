"""Smoke test of benchmarks/loader_speed.py in its tiny mode: every pipeline runs and the
report is complete and consistent (correctness, not timing)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("lightly")

from benchmarks import loader_speed  # noqa: E402  (after the importorskip)

PIPELINES = {"ours", "official_vicreg", "lightly_vicreg", "pil_decode_only",
             "pil_decode_two_rrc_uint8", "ours_device_decode"}


def test__tiny_run_reports_every_pipeline(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    out = tmp_path / "report.json"
    report = loader_speed.main(["--tiny", "--photos", "none", "--device", "cpu",
                                "--out", str(out)])
    assert torch.get_num_threads() == threads  # the one-thread setting is undone
    saved = json.loads(out.read_text())
    assert saved["schema"] == loader_speed.SCHEMA and saved == json.loads(json.dumps(report))
    assert set(saved["results"]) == PIPELINES
    assert saved["images"]["count"] == 8 and "generated" in saved["images"]["source"]
    assert saved["images"]["mean_bytes"] > 500  # textured images, not flat colours
    for name, row in saved["results"].items():
        assert row["images_per_round"] == 8, name  # 2 batches of 4: every image, once
        assert math.isfinite(row["images_per_s"]) and row["images_per_s"] > 0
        assert row["cpu_images_per_s"] > 0 and len(row["round_images_per_s"]) == 1
    ours = saved["results"]["ours"]["images_per_s_per_core"]
    official = saved["results"]["official_vicreg"]["images_per_s_per_core"]
    assert saved["ratios"]["ours/official_vicreg"] == pytest.approx(ours / official)
    assert saved["augment_colour"]["images_per_s"] > 0
    assert saved["targets"]["met_ratio"] == (ours / official >= 3.5)
    assert "| ours |" in loader_speed.format_table(saved)


def test__official_transform_gives_two_normalised_224_views() -> None:
    from PIL import Image

    from dataroom.synthetic import natural_image

    a, b = loader_speed.OfficialVICRegTransform(64)(Image.fromarray(natural_image(80, 96, 0)))
    assert a.shape == b.shape == (3, 64, 64) and a.dtype == torch.float32
    assert a.min() < 0 < a.max() and not torch.equal(a, b)


def test__images_are_cut_from_photographs_when_given(tmp_path: Path) -> None:
    from PIL import Image

    from dataroom.synthetic import natural_image

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(natural_image(120, 200, 1)).save(photos / "a.jpg")
    info = loader_speed.make_images(tmp_path / "out", 3, (30, 40), 90, photos)
    assert "photographs" in info["source"] and info["count"] == 3
    shapes = {Image.open(p).size for p in (tmp_path / "out" / "train").rglob("*.JPEG")}
    assert shapes <= {(40, 30), (30, 40)}


def test__draft_quality_tiny_run(tmp_path: Path) -> None:
    from benchmarks import draft_quality

    out = tmp_path / "draft.json"
    threads = torch.get_num_threads()
    report = draft_quality.main(["--tiny", "--photos", "none", "--out", str(out)])
    assert json.loads(out.read_text())["schema"] == draft_quality.SCHEMA
    assert torch.get_num_threads() == threads
    assert report["views_checked"] == 32 and report["all"]["views"] > 0  # reductions happened
    assert 0 <= report["all"]["mean"] <= report["all"]["max"]
    assert sum(v["views"] for v in report["by_room"].values()) == report["all"]["views"]
    assert set(report["images_per_s_cpu"]) == {"draft", "full"}

"""eval/records.py: record ids, and the detection backend as part of a record's identity.

A Detectron2 and a torchvision result of one (checkpoint, benchmark) cell are two
different implementations' numbers (issue #6: "reported with the backend named, never
mixed with Detectron2 numbers in one column"): both records must survive, side by side,
and reach the tables in separate columns. Every other record keeps the id it always had.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from eval.records import find_records, make_record, read_record, record_id, write_record
from results import tables
from results.records import load_records, resolve_duplicates

COMMON: dict[str, Any] = dict(
    checkpoint="runs/x/backbone.pth", checkpoint_sha256="sha-x", protocol="mini", suite="mini",
    config={}, dataset_fingerprint=None, git="abc", wall_time_s=1.0, reason=None)
META = {"method": "vicreg", "backbone": "resnet50", "seed": 0, "epochs": 3}


def _det(backend: str | None, value: float | None, status: str = "ok") -> dict[str, Any]:
    extra = {"backend": backend, "preset": "mini_voc_C4"} if backend else {}
    return make_record(meta=META, benchmark="voc07+12_det", metric="AP50", value=value,
                       extra=extra, status=status, **COMMON)


def test_non_detection_ids_are_unchanged() -> None:
    """The historical formula: records already on disk keep their ids."""
    old = hashlib.sha1(b"sha-xknnminitop1_k20mini").hexdigest()
    assert record_id("sha-x", "knn", "mini", "top1_k20", "mini") == old
    rec = make_record(meta=META, benchmark="knn", metric="top1_k20", value=80.0,
                      extra={"k": 20, "temperature": 0.07}, status="ok", **COMMON)
    assert rec["id"] == old


def test_detection_backends_of_one_cell_both_survive(tmp_path: Path) -> None:
    d2, tv = _det("detectron2", 10.1), _det("torchvision", 15.8)
    assert d2["id"] != tv["id"]
    assert d2["id"] == record_id("sha-x", "voc07+12_det", "mini", "AP50", "mini", "detectron2")
    records = tmp_path / "records"
    write_record(records, d2)
    write_record(records, tv)  # before the fix: the same file, the Detectron2 number gone
    assert len(list(records.glob("*.json"))) == 2
    assert read_record(records, d2["id"])["value"] == 10.1
    assert read_record(records, tv["id"])["value"] == 15.8
    found = find_records(records, benchmark="voc07+12_det", status="ok")
    assert sorted(r["extra"]["backend"] for r in found) == ["detectron2", "torchvision"]


def test_failed_detection_record_is_replaced_by_a_success_of_its_backend(tmp_path: Path
                                                                        ) -> None:
    records = tmp_path / "records"
    failed = _det("detectron2", None, status="failed")
    write_record(records, failed)
    write_record(records, _det("torchvision", 15.8))
    write_record(records, _det("detectron2", 10.1))  # the retry succeeded: same cell, same id
    by_backend = {r["extra"]["backend"]: r for r in find_records(records)}
    assert len(by_backend) == 2 and by_backend["detectron2"]["status"] == "ok"
    assert by_backend["detectron2"]["id"] == failed["id"]


def test_tables_keep_backends_in_separate_columns(tmp_path: Path) -> None:
    records = tmp_path / "records"
    write_record(records, _det("detectron2", 10.1))
    write_record(records, _det("torchvision", 15.8))
    kept, duplicates = resolve_duplicates(load_records(records))
    assert len(kept) == 2 and duplicates == []
    built, dups, _ = tables.build_tables(records, tmp_path / "no-runs")
    assert dups == []
    table = {t.name: t for t in built}["transfer_mini"]
    det = [c for c in table.columns if c.benchmark == "voc07+12_det"]
    assert [c.backend for c in det] == ["detectron2", "torchvision"]
    assert {c.label.split()[-1] for c in det} == {"[d2]", "[tv]"}
    row = ("VICReg", "resnet50", "3")
    assert [table.cell(row, c.key).text() for c in det] == ["10.1 (1)", "15.8 (1)"]

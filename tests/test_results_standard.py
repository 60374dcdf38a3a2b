"""Tables of the standard small benchmarks, with solo-learn's published rows beside ours."""

from __future__ import annotations

from pathlib import Path

from results import tables
from results.aggregate import MEASURED, REPORTED, Table, provenance
from results.latex import latex
from results.markdown import markdown
from results.reference import SOLO
from tests.test_results_tables import check_latex_shape, write_record

PAPER = {"protocol": "paper", "suite": "cifar10", "backbone": "resnet18_small", "epochs": 1000}


def _build(records: Path, tmp_path: Path, reported: bool) -> dict[str, Table]:
    built, _, _ = tables.build_tables(records, tmp_path / "no-runs", reported)
    return {t.name: t for t in built}


def _cifar_records(d: Path) -> None:
    for seed, (top1, top5) in enumerate([(91.20, 99.70), (91.62, 99.66)]):
        write_record(d, f"vic-lin1-s{seed}", "vicreg", seed, "cifar10_linear", "top1", top1,
                     **PAPER)
        write_record(d, f"vic-lin5-s{seed}", "vicreg", seed, "cifar10_linear", "top5", top5,
                     **PAPER)
        for k, v in ((20, 90.1 + seed), (200, 89.3 + seed)):
            write_record(d, f"vic-knn{k}-s{seed}", "vicreg", seed, "cifar10_knn", f"top1_k{k}",
                         v, extra={"k": k, "temperature": 0.07}, **PAPER)
    write_record(d, "sim-lin1", "simsiam", 0, "cifar10_linear", "top1", 88.0, **PAPER)


def test__cifar10_table_shows_our_run_beside_solo_learn(tmp_path: Path) -> None:
    d = tmp_path / "records"
    _cifar_records(d)
    assert "cifar10_paper" in _build(d, tmp_path, reported=False)
    plain = _build(d, tmp_path, reported=False)["cifar10_paper"]
    assert not plain.section(REPORTED)
    t = _build(d, tmp_path, reported=True)["cifar10_paper"]
    assert [c.key for c in t.columns] == ["cifar10_linear/top1", "cifar10_linear/top5",
                                          "cifar10_knn/top1_k20/k20", "cifar10_knn/top1_k200/k200"]
    ours = {r.labels: r for r in t.section(MEASURED)}
    vic = ours[("VICReg", "resnet18_small", "1000")].cells["cifar10_linear/top1"]
    assert vic.text(2) == "91.41 ± 0.30 (2)" and vic.bold  # best of two measured rows
    rep = {r.labels[0]: r for r in t.section(REPORTED)}
    assert set(rep) == {f"{m} (reported)" for m in ("VICReg", "Barlow Twins", "SimCLR", "BYOL",
                                                    "SimSiam")}
    assert rep["VICReg (reported)"].labels == ("VICReg (reported)", "resnet18_small", "1000")
    byol = rep["BYOL (reported)"].cells["cifar10_linear/top1"]
    assert byol.text(2) == "92.58" and not byol.bold and byol.source == SOLO  # above ours
    assert rep["SimSiam (reported)"].cells["cifar10_linear/top5"].text(2) == "99.72"
    assert rep["SimCLR (reported)"].cells["cifar10_knn/top1_k20/k20"].missing  # not published
    md = markdown(t)
    assert "| 92.07 |" in md and "91.41 ± 0.30 (2)" in md
    assert "solo-learn README, Results" in md and "CIFAR 1000 epochs" in md
    check_latex_shape(latex(t))
    prov = {r["labels"]["Method"]: r["cells"] for r in provenance(t)["rows"]}
    assert prov["VICReg (reported)"]["cifar10_linear/top1"] == {
        "display": "92.07", "reported": 92.07, "source": SOLO, "record_ids": []}
    assert prov["VICReg"]["cifar10_linear/top1"]["record_ids"] == ["vic-lin1-s0", "vic-lin1-s1"]


def test__reported_only_tables_for_cifar100_and_imagenet100(tmp_path: Path) -> None:
    d = tmp_path / "records"
    write_record(d, "other", "vicreg", 0, "knn", "top1_k20", 50.0, protocol="paper",
                 suite="paper")
    built = _build(d, tmp_path, reported=True)
    assert "stl10_paper" not in built  # nothing published, nothing measured
    c100 = {r.labels[0]: r for r in built["cifar100_paper"].section(REPORTED)}
    assert c100["Barlow Twins (reported)"].cells["cifar100_linear/top1"].text(2) == "70.90"
    in100 = built["imagenet100_paper"]
    rows = {r.labels[0]: r for r in in100.section(REPORTED)}
    assert rows["SimSiam (reported)"].labels[1:] == ("resnet18", "400")
    assert rows["SimSiam (reported)"].cells["imagenet100_linear/top1"].text(2) == "78.72"
    simclr = rows["SimCLR (reported)"].cells["imagenet100_linear/top1"]
    assert simclr.text(2) == "77.64 (online)"  # no offline value published
    note = markdown(in100)
    assert "online top-1: VICReg 79.22" in note and "(online)' the online probe" in note
    assert "Bardes et al." not in note.split("Reported rows")[1]  # solo-learn's source only
    check_latex_shape(latex(in100))
    assert not built["imagenet100_paper"].section(MEASURED)


def test__a_shortened_protocol_gets_its_own_columns_without_reported_values(tmp_path) -> None:
    d = tmp_path / "records"
    _cifar_records(d)
    write_record(d, "short", "vicreg", 5, "cifar10_linear", "top1", 50.6,
                 variant="epochs=10 milestones=6,8", **PAPER)
    t = _build(d, tmp_path, reported=True)["cifar10_paper"]
    col = next(c for c in t.columns if c.variant)
    assert col.key == "cifar10_linear/top1/epochs=10 milestones=6,8"
    assert col.title == "Linear top-1 [epochs=10 milestones=6,8]"
    ours = t.cell(("VICReg", "resnet18_small", "1000"), col.key)
    assert ours.text(2) == "50.60 (1)"  # not averaged into the suite's column
    assert t.cell(("VICReg", "resnet18_small", "1000"), "cifar10_linear/top1").n == 2
    rep = next(r for r in t.section(REPORTED) if r.labels[0] == "VICReg (reported)")
    assert rep.cells[col.key].missing and rep.cells["cifar10_linear/top1"].text(2) == "92.07"

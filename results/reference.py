"""Published numbers, shown beside ours only when asked (``--reported``).

Two sources:

- Bardes, Ponce, LeCun. VICReg. ICLR 2022 (https://arxiv.org/abs/2105.04906), as
  transcribed in docs ``methods.md`` §9: Table 1 (ImageNet linear and semi-supervised),
  Table 2 (transfer) and Table 11 (kNN). All ResNet-50, 1000 epochs unless noted.
- solo-learn's README "Results" (:data:`SOLO`): CIFAR-10 / CIFAR-100 (ResNet-18 with the
  CIFAR stem, 1000 epochs) and ImageNet-100 (ResNet-18, 400 epochs), as in
  ``data-pipeline.md`` §6.2 (top-5 read from the same README tables).

They are rendered in their own "reported" block: never averaged with, nor bolded against,
our measured rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from results.aggregate import REPORTED, Cell, Column, Row

PAPER = "Bardes et al., VICReg, ICLR 2022"
SOLO = "solo-learn README, Results (vturrisi/solo-learn @9187ea3, 2026-04-22)"
ONLINE = " (online)"  # a solo-learn cell that is the online probe (no offline value published)
DAGGER = "†"
DAGGER_NOTE = f"{DAGGER} run by the VICReg authors (their Table 2)."


@dataclass(frozen=True)
class Reported:
    """One published row: values keyed by (benchmark, metric[, k])."""

    method: str
    values: dict[tuple[str, str], float]
    backbone: str = "resnet50"
    epochs: int = 1000
    notes: dict[tuple[str, str], str] = field(default_factory=dict)  # per-value marks
    source: str = PAPER  # PAPER (cells cite its table) or SOLO

    def cite(self, benchmark: str) -> str:
        """The citation of this row's value for ``benchmark``."""
        return f"{PAPER}, Table {paper_table(benchmark)}" if self.source == PAPER else SOLO


def _t1(lin: tuple[float, float] | None, s1: tuple[float, float] | None,
        s10: tuple[float, float] | None) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    for bench, pair in (("imagenet_linear", lin), ("imagenet_semi_1pct", s1),
                        ("imagenet_semi_10pct", s10)):
        if pair is not None:
            out[(bench, "top1")], out[(bench, "top5")] = pair
    return out


_T2_KEYS = (("places205_linear", "top1"), ("voc07_svm", "mAP"), ("inat18_linear", "top1"),
            ("voc07+12_det", "AP50"), ("coco_det", "AP"), ("coco_seg", "AP"))


def _t2(*values: float | None) -> dict[tuple[str, str], float]:
    return {key: v for key, v in zip(_T2_KEYS, values) if v is not None}


COCO_DAGGER = {("coco_det", "AP"): DAGGER, ("coco_seg", "AP"): DAGGER}

REPORTED_ROWS: tuple[Reported, ...] = (
    Reported("vicreg", {**_t1((73.2, 91.1), (54.8, 79.4), (69.5, 89.5)),
                        **_t2(54.3, 86.6, 47.0, 82.4, 39.4, 36.4),
                        ("knn", "top1_k20"): 64.5, ("knn", "top1_k200"): 62.8}),
    Reported("barlow_twins", {**_t1((73.2, 91.0), (55.0, 79.2), (69.7, 89.3)),
                              **_t2(54.1, 86.2, 46.5, 82.6, 40.0, 36.7)},
             notes=COCO_DAGGER),
    Reported("byol", {**_t1((74.3, 91.6), (53.2, 78.4), (68.8, 89.0)),
                      **_t2(54.0, 86.6, 47.6, None, 40.4, 37.0)},
             notes=COCO_DAGGER),
    Reported("simclr", _t1((69.3, 89.0), (48.3, 75.5), (65.6, 87.8))),
    # NOTE: methods.md §9 prints SimSiam's 71.3 (top-1 only) in Table 1 without its
    # epochs; it is SimSiam's own 800-epoch result (Chen & He 2021, Table 4).
    Reported("simsiam", {("imagenet_linear", "top1"): 71.3}, epochs=800),
    Reported("supervised", _t2(53.2, 87.5, 46.7, 81.3, 39.0, 35.4), epochs=0),
)


def _solo(method: str, cifar10: tuple[float, float], cifar100: tuple[float, float],
          in100: tuple[float | None, float | None, float, float]) -> tuple[Reported, Reported]:
    """A method's two solo-learn rows: CIFAR (1000 epochs) and ImageNet-100 (400 epochs).

    ``in100`` = (offline top-1, offline top-5, online top-1, online top-5): the table shows
    the offline linear evaluation, as our ``imagenet100_linear``; the online value where
    no offline one is published, marked.
    """
    cifar = {("cifar10_linear", "top1"): cifar10[0], ("cifar10_linear", "top5"): cifar10[1],
             ("cifar100_linear", "top1"): cifar100[0], ("cifar100_linear", "top5"): cifar100[1]}
    off1, off5, on1, on5 = in100
    imnet = {("imagenet100_linear", "top1"): off1 if off1 is not None else on1,
             ("imagenet100_linear", "top5"): off5 if off5 is not None else on5}
    notes = {k: ONLINE for k, off in zip(imnet, (off1, off5)) if off is None}
    return (Reported(method, cifar, "resnet18_small", 1000, source=SOLO),
            Reported(method, imnet, "resnet18", 400, notes, source=SOLO))


# solo-learn README "Results" (Acc@1, Acc@5); ImageNet-100 (offline top-1, offline top-5,
# online top-1, online top-5); "-" there = None here.
SOLO_ROWS: tuple[Reported, ...] = (
    *_solo("vicreg", (92.07, 99.74), (68.54, 90.83), (79.40, 95.02, 79.22, 95.06)),
    *_solo("barlow_twins", (92.10, 99.73), (70.90, 91.91), (80.16, 95.14, 80.38, 95.28)),
    *_solo("simclr", (90.74, 99.75), (65.78, 89.04), (None, None, 77.64, 94.06)),
    *_solo("byol", (92.58, 99.79), (70.46, 91.96), (80.32, 94.94, 80.16, 95.02)),
    *_solo("simsiam", (90.51, 99.72), (66.04, 89.62), (78.72, 94.78, 74.54, 93.16)),
)
SOLO_NOTE = (
    f"Reported rows: published numbers ({SOLO}; data-pipeline.md §6.2): solo-learn's ResNet-18 "
    "(CIFAR: 3×3 stem, no max-pool), CIFAR 1000 epochs, ImageNet-100 400 epochs (DALI); never "
    "averaged with nor bolded against measured rows. CIFAR cells are its Acc@1/Acc@5, which "
    "the README does not label online or offline; ImageNet-100 cells are its offline linear "
    "evaluation, '(online)' the online probe where no offline value is published (SimCLR). "
    "ImageNet-100 online top-1: VICReg 79.22, Barlow Twins 80.38, SimCLR 77.64, BYOL 80.16, "
    "SimSiam 74.54.")



def paper_table(benchmark: str) -> int:
    """The VICReg paper table a published number comes from."""
    if benchmark.startswith("imagenet"):
        return 1
    return 11 if benchmark == "knn" else 2


# Published detection numbers were obtained with detectron2 (Faster/Mask R-CNN).
_REPORTED_BACKENDS = (None, "detectron2")


def reported_rows(columns: list[Column], labels: dict[str, str] | None = None) -> list[Row]:
    """The published rows that have a value in at least one of ``columns``.

    Args:
        columns: The table's columns; a value fills a column with the same benchmark
            and metric (k None or part of the metric name), and backend None or detectron2.
        labels: Method display names (default: the registry key).

    Returns:
        Rows in the ``reported`` section, labelled (method (reported), backbone, epochs).
    """
    labels = labels or {}
    out = []
    for ref in (*REPORTED_ROWS, *SOLO_ROWS):
        cells: dict[str, Cell] = {}
        for col in columns:
            key = (col.benchmark, col.metric)
            value = ref.values.get(key)
            # kNN columns carry k in extra and in the metric name (top1_k20): both fit.
            k_fits = col.k is None or col.metric.endswith(f"_k{col.k}")
            # a column of records made with other settings (variant) holds none
            fits = k_fits and col.backend in _REPORTED_BACKENDS and not col.variant
            source = ref.cite(col.benchmark)
            cells[col.key] = (Cell(reported=value, note=ref.notes.get(key, ""), source=source)
                              if value is not None and fits else Cell())
        if any(not c.missing for c in cells.values()):
            name = f"{labels.get(ref.method, ref.method)} (reported)"
            epochs = str(ref.epochs) if ref.epochs else ""
            out.append(Row((name, ref.backbone, epochs), cells, section=REPORTED))
    return out


def reported_note(rows: list[Row], protocol: str | None) -> str:
    """The footnote of a reported block (empty when there is none)."""
    if not rows:
        return ""
    solo = any(c.source == SOLO for r in rows for c in r.cells.values())
    rows = [r for r in rows if any(c.source.startswith(PAPER) for c in r.cells.values())]
    if not rows:
        return SOLO_NOTE + _protocol_note(protocol)
    cells = [c for r in rows for c in r.cells.values() if c.source]
    numbers = sorted({int(c.source.rsplit(" ", 1)[1]) for c in cells})
    tables = " and ".join(", ".join(map(str, numbers)).rsplit(", ", 1))
    note = (f"Reported rows: published numbers ({PAPER}, Table{'s' * (len(numbers) > 1)} "
            f"{tables}, as in methods.md §9), ResNet-50; never averaged with nor bolded "
            "against measured rows.")
    if any(c.note == DAGGER for c in cells):
        note += f" {DAGGER_NOTE}"
    if any(r.labels[0].startswith("SimSiam") for r in rows):
        note += " SimSiam: its own 800-epoch result (Chen & He 2021), quoted in Table 1."
    if any(r.labels[2] == "" for r in rows):
        note += " Supervised: the standard supervised ResNet-50 (no pretraining epochs)."
    return note + (" " + SOLO_NOTE if solo else "") + _protocol_note(protocol)


def _protocol_note(protocol: str | None) -> str:
    if protocol not in (None, "paper"):
        return f" They follow the papers' protocols, not the {protocol} protocol of our rows."
    return ""

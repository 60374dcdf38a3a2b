"""Detection evaluators (VOC 11-point, COCO) and the VOC/COCO readers and mini COCO writer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO

from eval.datasets import DatasetError
from eval.detection.data import (
    DetectionDataset,
    DetectionSplit,
    ImageRecord,
    decode_segmentation,
    load_split,
)
from eval.detection.metrics import (
    Prediction,
    area_ap,
    coco_ap,
    eleven_point_ap,
    voc_class_ap,
    voc_detection_ap,
)
from eval.detection.mini import category_ids, ensure_mini_coco


def _record(i: int, boxes: list, labels: list, difficult: list | None = None) -> ImageRecord:
    return ImageRecord(f"/nonexistent/{i}.jpg", f"{i:06d}", 100, 100,
                       np.asarray(boxes, np.float32).reshape(-1, 4),
                       np.asarray(labels, np.int64),
                       np.asarray(difficult or [False] * len(labels), bool))


def _voc_split(records: list[ImageRecord], classes: tuple[str, ...] = ("a", "b")) -> DetectionSplit:
    return DetectionSplit("voc_2007_test", "voc", list(classes), records, "/nonexistent")


def _pred(boxes: list, scores: list, labels: list) -> Prediction:
    return Prediction(np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(scores),
                      np.asarray(labels, np.int64))


def test_voc_ground_truth_as_predictions_gives_100() -> None:
    split = _voc_split([_record(0, [[0, 0, 10, 10], [20, 20, 40, 50]], [0, 1]),
                        _record(1, [[5, 5, 60, 30]], [1])])
    preds = {i: _pred(r.boxes, [0.9] * len(r.labels), r.labels)
             for i, r in enumerate(split.images)}
    res = voc_detection_ap(split, preds)
    assert res["AP"] == res["AP50"] == res["AP75"] == pytest.approx(100.0)
    assert res["per_class_AP50"] == {"a": 100.0, "b": 100.0}


def test_hand_computed_eleven_point_ap() -> None:
    # 4 positives; ranked detections TP, FP, TP, FP, TP:
    # recall .25 .25 .5 .5 .75, precision 1 .5 .667 .5 .6
    # 11-point: t = 0, .1, .2 → 1; t = .3, .4, .5 → 2/3; t = .6, .7 → .6; t = .8, .9, 1 → 0
    gts = [[0, 0, 10, 10], [30, 30, 50, 50], [60, 0, 80, 20], [0, 60, 20, 80]]
    split = _voc_split([_record(0, gts[:2], [0, 0]), _record(1, gts[2:], [0, 0])], ("a",))
    far = [90, 90, 99, 99]
    preds = {0: _pred([gts[0], far, gts[1]], [0.9, 0.8, 0.7], [0, 0, 0]),
             1: _pred([far, gts[2]], [0.6, 0.5], [0, 0])}
    res = voc_detection_ap(split, preds)
    expected = (3 * 1.0 + 3 * (2 / 3) + 2 * 0.6) / 11  # = 0.5636…
    assert res["AP50"] == pytest.approx(100 * expected)
    assert res["AP50"] == pytest.approx(56.3636, abs=1e-3)
    # the same ranking with the all-point area (VOC2010+): .25 · (1 + 2/3 + .6)
    all_point = voc_detection_ap(split, preds, use_07_metric=False)
    assert all_point["AP50"] == pytest.approx(100 * 0.25 * (1 + 2 / 3 + 0.6))


def test_eleven_point_and_area_on_arrays() -> None:
    recall, precision = np.array([0.5, 1.0]), np.array([1.0, 0.5])
    assert eleven_point_ap(recall, precision) == pytest.approx((6 * 1.0 + 5 * 0.5) / 11)
    assert area_ap(recall, precision) == pytest.approx(0.75)


def test_voc_rules_difficult_duplicates_and_strict_iou() -> None:
    boxes = np.array([[1.0, 1, 10, 10], [21, 21, 30, 30]])  # 1-based, as in the files
    difficult = np.array([False, True])
    gt = {0: (boxes, difficult)}
    # A detection on the difficult box is ignored; a duplicate is FP.
    dets = [(0, 0.9, boxes[0]), (0, 0.8, boxes[1]), (0, 0.7, boxes[0])]
    tp_then_fp = voc_class_ap(dets, gt, 0.5)  # ranked TP, (ignored), FP: precision 1, .5
    assert tp_then_fp == pytest.approx(1.0)  # recall reaches 1 at precision 1
    # IoU exactly 0.5 (with +1 widths: 10×5 inside 10×10) is not a match: strictly greater.
    half = [(0, 0.9, np.array([1.0, 1, 10, 5]))]
    assert voc_class_ap(half, gt, 0.5) == 0.0
    assert voc_class_ap(half, gt, 0.45) == pytest.approx(1.0)
    # A class without non-difficult ground truth has no AP (left out of the mean).
    assert np.isnan(voc_class_ap(dets, {0: (boxes[1:], difficult[1:])}, 0.5))


@pytest.fixture(scope="module")
def mini_coco(fmnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("det") / "coco"
    params = {"train": 24, "val": 12, "canvas": 64, "items": [2, 4], "scale": [0.75, 1.25],
              "threshold": 24, "max_overlap": 0.25, "seed": 0}
    ensure_mini_coco(root, fashion_root=str(fmnist_root), params=params)
    return root


def test_mini_coco_is_exact_coco_format(mini_coco: Path) -> None:
    body = json.loads((mini_coco / "annotations" / "instances_train2017.json").read_text())
    assert {"info", "licenses", "images", "annotations", "categories"} <= set(body)
    assert [c["id"] for c in body["categories"]] == category_ids(10) != list(range(1, 11))
    assert len(body["images"]) == 24
    per_image = {}
    for ann in body["annotations"]:
        assert set(ann) >= {"id", "image_id", "category_id", "segmentation", "area", "bbox",
                            "iscrowd"}
        assert ann["iscrowd"] == 0 and isinstance(ann["segmentation"]["counts"], str)
        mask = decode_segmentation(ann["segmentation"], 64, 64)
        ys, xs = np.nonzero(mask)
        assert ann["area"] == mask.sum()
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        per_image.setdefault(ann["image_id"], []).append(ann)
    assert max(len(v) for v in per_image.values()) >= 3  # several items per canvas
    image = body["images"][0]
    assert (mini_coco / "train2017" / image["file_name"]).is_file()
    COCO(str(mini_coco / "annotations" / "instances_val2017.json"))  # pycocotools reads it
    split = load_split("coco_2017_train", coco_root=mini_coco)
    assert split.classes[0] == "T-shirt/top" and split.category_ids == category_ids(10)
    x, target = DetectionDataset(split, train=False, masks=True)[0]
    assert x.shape == (3, 64, 64) and target["masks"].shape[0] == len(target["labels"])
    assert (target["labels"] >= 1).all()  # 0 is the background


def test_coco_ground_truth_as_predictions_gives_100(mini_coco: Path) -> None:
    split = load_split("coco_2017_val", coco_root=mini_coco)
    preds = {}
    for i, r in enumerate(split.images):
        masks = np.stack([decode_segmentation(s, r.height, r.width) for s in r.segmentations])
        preds[i] = Prediction(r.boxes.astype(np.float64), np.ones(len(r.labels)), r.labels,
                              masks.astype(bool))
    for iou_type in ("bbox", "segm"):
        res = coco_ap(split, preds, iou_type)
        assert res["AP"] == res["AP50"] == res["AP75"] == pytest.approx(100.0), iou_type
    # Restricting to a subset of images scores only those.
    sub = split.subset([0, 1])
    assert coco_ap(sub, {0: preds[0], 1: preds[1]}, "bbox")["AP"] == pytest.approx(100.0)
    # Nothing predicted: zero, not an error.
    assert coco_ap(split, {}, "bbox")["AP"] == 0.0


def test_mini_coco_refuses_a_foreign_folder(tmp_path: Path, fmnist_root: Path) -> None:
    (tmp_path / "coco").mkdir()
    (tmp_path / "coco" / "something.json").write_text("{}")
    with pytest.raises(DatasetError, match="not written by the mini COCO generator"):
        ensure_mini_coco(tmp_path / "coco", fashion_root=str(fmnist_root))


def test_missing_roots_name_the_expected_layout(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"VOC2012/ImageSets/Main/trainval\.txt not found.*"
                                           r"VOCdevkit.*Annotations/<id>\.xml"):
        load_split("voc_2012_trainval", voc_root=tmp_path / "VOCdevkit")
    with pytest.raises(DatasetError, match=r"instances_val2017\.json not found.*"
                                           r"annotations/instances_\{train,val\}2017\.json"):
        load_split("coco_2017_val", coco_root=tmp_path / "coco")
    with pytest.raises(KeyError, match="unknown detection split"):
        load_split("ade20k_train")


def test_voc_reader_follows_detectron2(tmp_path: Path) -> None:
    folder = tmp_path / "VOCdevkit" / "VOC2007"
    (folder / "Annotations").mkdir(parents=True)
    (folder / "ImageSets" / "Main").mkdir(parents=True)
    (folder / "ImageSets" / "Main" / "test.txt").write_text("000001\n")
    (folder / "Annotations" / "000001.xml").write_text(
        "<annotation><size><width>50</width><height>40</height></size>"
        "<object><name>dog</name><difficult>1</difficult><bndbox><xmin>5</xmin><ymin>6</ymin>"
        "<xmax>20</xmax><ymax>30</ymax></bndbox></object></annotation>")
    split = load_split("voc_2007_test", voc_root=tmp_path / "VOCdevkit")
    rec = split.images[0]
    assert split.classes[11] == "dog" and rec.labels.tolist() == [11]
    assert rec.boxes.tolist() == [[4.0, 5.0, 20.0, 30.0]]  # xmin/ymin − 1
    assert rec.difficult.tolist() == [True] and (rec.height, rec.width) == (40, 50)
    (folder / "Annotations" / "000001.xml").write_text(
        "<annotation><object><name>shoe</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>2"
        "</xmax><ymax>2</ymax></bndbox></object></annotation>")
    with pytest.raises(DatasetError, match="'shoe' is not one of"):
        load_split("voc_2007_test", voc_root=tmp_path / "VOCdevkit")

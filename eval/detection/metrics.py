"""Detection metrics as Detectron2 reports them (eval-protocols §7.4), without Detectron2.

- VOC (:func:`voc_detection_ap`): per class and IoU threshold t ∈ {0.50, 0.55, …, 0.95},
  detections of all images ranked by score; a detection is a true positive when its best
  IoU with a ground truth of its class is *strictly greater* than t and that ground truth
  is not yet taken; a best match to a ``difficult`` ground truth counts as neither TP nor
  FP; duplicates are FP; ``difficult`` ground truths are not positives. AP is the VOC07
  11-point AP (year 2007) or the all-point area. Boxes are compared in the files' 1-based
  pixel coordinates with ``+1`` widths, as the devkit and Detectron2 do. Reported ×100:
  ``AP`` (mean over thresholds of the class mean), ``AP50``, ``AP75``.
- COCO (:func:`coco_ap`): pycocotools ``COCOeval`` (max detections 1/10/100), ``AP``,
  ``AP50``, ``AP75``, ``APs``, ``APm``, ``APl`` ×100, for ``bbox`` or ``segm``.

Predictions are :class:`Prediction` objects in the loaded images' coordinates
(Detectron2's convention: ``x0, y0, x1, y1`` with VOC ``xmin``/``ymin`` shifted by -1).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from eval.detection.data import DetectionSplit

IOU_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))


@dataclass
class Prediction:
    """Detections of one image.

    Attributes:
        boxes: ``(N, 4)`` ``x0, y0, x1, y1``.
        scores: ``(N,)``.
        labels: ``(N,)`` contiguous class indices.
        masks: ``(N, H, W)`` bool, or None.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    masks: np.ndarray | None = None


def eleven_point_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC07 AP: mean over t ∈ {0, 0.1, …, 1} of the max precision at recall ≥ t."""
    points = []
    for t in np.linspace(0.0, 1.0, 11):
        above = precision[recall >= t]
        points.append(float(above.max()) if above.size else 0.0)
    return float(np.mean(points))


def area_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """All-point AP (VOC2010+): area under the precision envelope."""
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    idx = np.nonzero(mrec[1:] != mrec[:-1])[0] + 1
    return float(np.sum((mrec[idx] - mrec[idx - 1]) * mpre[idx]))


def _iou_plus_one(box: np.ndarray, gts: np.ndarray) -> np.ndarray:
    """IoU of one box with each row of ``gts`` using inclusive pixel widths (``+1``)."""
    iw = np.maximum(np.minimum(gts[:, 2], box[2]) - np.maximum(gts[:, 0], box[0]) + 1.0, 0.0)
    ih = np.maximum(np.minimum(gts[:, 3], box[3]) - np.maximum(gts[:, 1], box[1]) + 1.0, 0.0)
    inter = iw * ih
    area = lambda b: (b[..., 2] - b[..., 0] + 1.0) * (b[..., 3] - b[..., 1] + 1.0)
    return inter / (area(box) + area(gts) - inter)


def voc_class_ap(detections: Sequence[tuple[int, float, np.ndarray]],
                 ground_truth: dict[int, tuple[np.ndarray, np.ndarray]], iou_threshold: float,
                 use_07_metric: bool = True) -> float:
    """AP of one class at one IoU threshold (fraction in [0, 1]).

    Args:
        detections: ``(image_index, score, box)`` of this class over all images; boxes in
            1-based inclusive pixel coordinates.
        ground_truth: ``{image_index: (boxes (M, 4), difficult (M,))}`` of this class.
        iou_threshold: A match needs IoU strictly greater than this.
        use_07_metric: 11-point AP (VOC2007) instead of the all-point area.

    Returns:
        The AP; NaN when the class has no non-difficult ground truth.
    """
    num_pos = sum(int((~d).sum()) for _, d in ground_truth.values())
    if num_pos == 0:
        return float("nan")
    taken = {i: np.zeros(len(b), bool) for i, (b, _) in ground_truth.items()}
    order = sorted(range(len(detections)), key=lambda k: -detections[k][1])  # stable
    tp, fp = np.zeros(len(order)), np.zeros(len(order))
    for rank, k in enumerate(order):
        image, _, box = detections[k]
        gts, difficult = ground_truth.get(image, (np.zeros((0, 4)), np.zeros(0, bool)))
        if len(gts) == 0:
            fp[rank] = 1
            continue
        ious = _iou_plus_one(np.asarray(box, np.float64), gts.astype(np.float64))
        best = int(np.argmax(ious))
        if ious[best] > iou_threshold:
            if difficult[best]:
                continue  # neither TP nor FP
            if taken[image][best]:
                fp[rank] = 1  # duplicate
            else:
                tp[rank], taken[image][best] = 1, True
        else:
            fp[rank] = 1
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    recall = tp / num_pos
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return eleven_point_ap(recall, precision) if use_07_metric else area_ap(recall, precision)


def voc_detection_ap(split: DetectionSplit, predictions: dict[int, Prediction],
                     use_07_metric: bool | None = None) -> dict[str, object]:
    """Detectron2's ``PascalVOCDetectionEvaluator`` numbers for ``split``.

    Args:
        split: A VOC split (ground truth).
        predictions: ``{index into split.images: Prediction}``; missing images have none.
        use_07_metric: Default: True when the split's year is 2007.

    Returns:
        ``{"AP", "AP50", "AP75"}`` in percent and ``"per_class_AP50"``.
    """
    if use_07_metric is None:
        use_07_metric = "2007" in split.name
    shift = np.array([1.0, 1.0, 0.0, 0.0])  # back to the files' 1-based coordinates
    gts: list[dict[int, tuple[np.ndarray, np.ndarray]]] = [{} for _ in split.classes]
    for i, rec in enumerate(split.images):
        for c in np.unique(rec.labels):
            sel = rec.labels == c
            gts[int(c)][i] = (rec.boxes[sel] + shift, rec.difficult[sel])
    dets: list[list[tuple[int, float, np.ndarray]]] = [[] for _ in split.classes]
    for i, p in predictions.items():
        for box, score, label in zip(p.boxes, p.scores, p.labels):
            dets[int(label)].append((i, float(score), np.asarray(box, np.float64) + shift))
    table = np.array([[voc_class_ap(dets[c], gts[c], t, use_07_metric)
                       for c in range(len(split.classes))] for t in IOU_THRESHOLDS])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a threshold where no class has AP
        by_threshold = 100.0 * np.nanmean(table, axis=1)
    return {"AP": float(np.mean(by_threshold)), "AP50": float(by_threshold[0]),
            "AP75": float(by_threshold[IOU_THRESHOLDS.index(0.75)]),
            "per_class_AP50": {c: round(100.0 * float(a), 4)
                               for c, a in zip(split.classes, table[0])}}


def coco_results(split: DetectionSplit, predictions: dict[int, Prediction],
                 iou_type: str) -> list[dict[str, object]]:
    """Predictions in the COCO results format (``bbox`` ``[x, y, w, h]`` or RLE ``segm``)."""
    out: list[dict[str, object]] = []
    for i, p in predictions.items():
        image_id = split.images[i].image_id
        for k, (box, score, label) in enumerate(zip(p.boxes, p.scores, p.labels)):
            res: dict[str, object] = {"image_id": image_id, "score": float(score),
                                      "category_id": split.category_ids[int(label)]}
            if iou_type == "bbox":
                x0, y0, x1, y1 = (float(v) for v in box)
                res["bbox"] = [x0, y0, x1 - x0, y1 - y0]
            else:
                if p.masks is None:
                    raise ValueError("segm evaluation needs predicted masks")
                rle = mask_util.encode(np.asfortranarray(p.masks[k].astype(np.uint8)))
                rle["counts"] = rle["counts"].decode("ascii")
                res["segmentation"] = rle
            out.append(res)
    return out


COCO_STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def coco_ap(split: DetectionSplit, predictions: dict[int, Prediction],
            iou_type: str) -> dict[str, float]:
    """pycocotools AP for ``bbox`` or ``segm`` in percent (NaN where COCOeval gives -1).

    Args:
        split: A COCO split (its JSON is the ground truth; only ``split.images`` are scored).
        predictions: ``{index into split.images: Prediction}``.
        iou_type: ``"bbox"`` or ``"segm"``.
    """
    if split.kind != "coco":
        raise ValueError(f"{split.name} is not a COCO split")
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # pycocotools vs NumPy 2
        gt = COCO(split.root)
        results = coco_results(split, predictions, iou_type)
        if not results:
            return {k: 0.0 for k in COCO_STATS}
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, iou_type)
        # Only the split's images (a subset of the JSON's, e.g. for AP on training images).
        ev.params.imgIds = [r.image_id for r in split.images]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: float(100.0 * s) if s >= 0 else float("nan") for k, s in zip(COCO_STATS, ev.stats)}

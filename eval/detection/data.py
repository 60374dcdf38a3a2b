"""Detection datasets in Detectron2's on-disk layouts (eval-protocols §7.1), read without it.

Split names are Detectron2's builtin ones (``voc_2007_trainval``, ``voc_2012_trainval``,
``voc_2007_test``, ``coco_2017_train``, ``coco_2017_val``), resolved against our roots:

- VOC: ``<voc_root>/VOC<year>/{Annotations/<id>.xml, ImageSets/Main/<split>.txt,
  JPEGImages/<id>.jpg}`` (``voc_root`` is the ``VOCdevkit`` folder);
- COCO: ``<coco_root>/annotations/instances_<split>2017.json`` and ``<coco_root>/<split>2017/``.

Boxes are loaded as Detectron2 loads them: VOC ``xmin``/``ymin`` minus 1 (1-based files),
all objects including ``difficult`` ones kept for training; COCO ``[x, y, w, h]`` to
corners, category ids remapped to contiguous indices in sorted-id order, crowd regions
kept apart (not trained on, ignored by COCOeval).
"""

from __future__ import annotations

import dataclasses
import json
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_util
from torch import Tensor
from torch.utils.data import Dataset

from eval.datasets import DatasetError, read_voc_annotation

# Detectron2's fixed VOC class order (d2: detectron2/data/datasets/pascal_voc.py CLASS_NAMES).
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip
VOC_LAYOUT = (
    "PASCAL VOC in Detectron2's layout: <voc_root>/VOC2007 and <voc_root>/VOC2012 (voc_root = "
    "the VOCdevkit folder), each with Annotations/<id>.xml, ImageSets/Main/<split>.txt and "
    "JPEGImages/<id>.jpg"
)
COCO_LAYOUT = (
    "COCO 2017 in Detectron2's layout: <coco_root>/annotations/instances_{train,val}2017.json "
    "(bbox [x, y, w, h], segmentation polygons or RLE, area, iscrowd) and images in "
    "<coco_root>/{train,val}2017/<file_name>"
)
_VOC_NAME = re.compile(r"voc_(\d{4})_(\w+)")
_COCO_NAME = re.compile(r"coco_2017_(train|val)")


@dataclass
class ImageRecord:
    """One image and its objects.

    Attributes:
        path: Absolute image path.
        image_id: VOC file id (str) or COCO image id (int).
        height: Image height from the annotation.
        width: Image width from the annotation.
        boxes: ``(N, 4)`` float32 ``x0, y0, x1, y1`` in Detectron2's convention.
        labels: ``(N,)`` int64 contiguous class indices.
        difficult: ``(N,)`` bool (VOC ``difficult``; always False for COCO).
        segmentations: COCO ``segmentation`` of each object (polygons or RLE), else None.
        crowd: COCO ``iscrowd`` regions (not trained on), as raw annotations.
    """

    path: str
    image_id: str | int
    height: int
    width: int
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray
    segmentations: list[Any] | None = None
    crowd: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class DetectionSplit:
    """A loaded split.

    Attributes:
        name: Detectron2 split name (``voc_2007_test``).
        kind: ``"voc"`` or ``"coco"``.
        classes: Class names; index = label.
        images: Per-image records.
        root: The split's folder (VOC ``VOC<year>``) or the COCO JSON file.
        category_ids: COCO category id of each class index (COCO only).
    """

    name: str
    kind: str
    classes: list[str]
    images: list[ImageRecord]
    root: str
    category_ids: list[int] = field(default_factory=list)

    def subset(self, indices: Sequence[int]) -> DetectionSplit:
        """The same split restricted to ``images[indices]`` (for AP on a few images)."""
        return dataclasses.replace(self, images=[self.images[i] for i in indices])


def _voc_split(voc_root: Path, year: str, split: str, name: str,
               classes: tuple[str, ...]) -> DetectionSplit:
    folder = voc_root / f"VOC{year}"
    ids_file = folder / "ImageSets" / "Main" / f"{split}.txt"
    if not ids_file.is_file():
        raise DatasetError(f"{name}: {ids_file} not found. Expected {VOC_LAYOUT}")
    index = {c: i for i, c in enumerate(classes)}
    images = []
    for image_id in ids_file.read_text().split():
        xml = folder / "Annotations" / f"{image_id}.xml"
        if not xml.is_file():
            raise DatasetError(f"{name}: {xml} not found. Expected {VOC_LAYOUT}")
        ann = read_voc_annotation(xml)
        boxes, labels, difficult = [], [], []
        for obj in ann["objects"]:
            if obj["name"] not in index:
                raise DatasetError(f"{xml}: class '{obj['name']}' is not one of {list(classes)} "
                                   "(set the benchmark's classes for a non-VOC dataset)")
            x0, y0, x1, y1 = obj["bbox"]
            boxes.append((x0 - 1.0, y0 - 1.0, float(x1), float(y1)))  # as Detectron2 loads VOC
            labels.append(index[obj["name"]])
            difficult.append(bool(obj["difficult"]))
        images.append(ImageRecord(
            str(folder / "JPEGImages" / f"{image_id}.jpg"), image_id, ann["height"], ann["width"],
            np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64),
            np.asarray(difficult, bool)))
    if not images:
        raise DatasetError(f"{name}: {ids_file} lists no image. Expected {VOC_LAYOUT}")
    return DetectionSplit(name, "voc", list(classes), images, str(folder))


def coco_json_path(coco_root: Path, split: str) -> Path:
    """``<coco_root>/annotations/instances_<split>2017.json``."""
    return coco_root / "annotations" / f"instances_{split}2017.json"


def _coco_split(coco_root: Path, split: str, name: str) -> DetectionSplit:
    path = coco_json_path(coco_root, split)
    if not path.is_file():
        raise DatasetError(f"{name}: {path} not found. Expected {COCO_LAYOUT}")
    try:
        data = json.loads(path.read_text())
        cats = sorted(data["categories"], key=lambda c: c["id"])
        index = {c["id"]: i for i, c in enumerate(cats)}
        per_image: dict[int, list[dict[str, Any]]] = {im["id"]: [] for im in data["images"]}
        for ann in data["annotations"]:
            per_image[ann["image_id"]].append(ann)
        images = []
        for im in data["images"]:
            anns = per_image[im["id"]]
            objs = [a for a in anns if not a.get("iscrowd", 0)]
            boxes = [(a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                      a["bbox"][1] + a["bbox"][3]) for a in objs]
            images.append(ImageRecord(
                str(coco_root / f"{split}2017" / im["file_name"]), im["id"], im["height"],
                im["width"], np.asarray(boxes, np.float32).reshape(-1, 4),
                np.asarray([index[a["category_id"]] for a in objs], np.int64),
                np.zeros(len(objs), bool), [a.get("segmentation") for a in objs],
                [a for a in anns if a.get("iscrowd", 0)]))
    except (json.JSONDecodeError, KeyError, TypeError, IndexError) as e:
        raise DatasetError(f"{path}: malformed ({type(e).__name__}: {e}). "
                           f"Expected {COCO_LAYOUT}") from None
    return DetectionSplit(name, "coco", [c["name"] for c in cats], images, str(path),
                          [c["id"] for c in cats])


def load_split(name: str, voc_root: str | Path = "", coco_root: str | Path = "",
               voc_classes: tuple[str, ...] = VOC_CLASSES) -> DetectionSplit:
    """Read one Detectron2-named split from our roots.

    Args:
        name: ``voc_<year>_<split>`` or ``coco_2017_<train|val>``.
        voc_root: The ``VOCdevkit`` folder.
        coco_root: The ``coco`` folder.
        voc_classes: VOC class names in label order (VOC's 20 by default).

    Raises:
        DatasetError: The files are missing or malformed; the message names the layout.
        KeyError: ``name`` is neither a VOC nor a COCO split name.
    """
    if m := _VOC_NAME.fullmatch(name):
        return _voc_split(Path(voc_root).expanduser(), m.group(1), m.group(2), name, voc_classes)
    if m := _COCO_NAME.fullmatch(name):
        return _coco_split(Path(coco_root).expanduser(), m.group(1), name)
    raise KeyError(f"unknown detection split '{name}'; use voc_<year>_<split> or "
                   "coco_2017_<train|val>")


def voc_class_names(voc_root: str | Path, split_names: tuple[str, ...]) -> tuple[str, ...]:
    """VOC's 20 classes, or (another dataset in VOC format) the sorted names found."""
    names: set[str] = set()
    for split in split_names:
        m = _VOC_NAME.fullmatch(split)
        if not m:
            continue
        folder = Path(voc_root).expanduser() / f"VOC{m.group(1)}"
        ids = folder / "ImageSets" / "Main" / f"{m.group(2)}.txt"
        if not ids.is_file():
            raise DatasetError(f"{split}: {ids} not found. Expected {VOC_LAYOUT}")
        for image_id in ids.read_text().split():
            xml = folder / "Annotations" / f"{image_id}.xml"
            if xml.is_file():
                names |= {o["name"] for o in read_voc_annotation(xml)["objects"]}
    return VOC_CLASSES if names <= set(VOC_CLASSES) else tuple(sorted(names))


def decode_segmentation(segm: Any, height: int, width: int) -> np.ndarray:
    """A COCO ``segmentation`` (polygons, uncompressed or compressed RLE) as a uint8 mask."""
    if isinstance(segm, list):  # polygons: union of the parts
        rle = mask_util.merge(mask_util.frPyObjects(segm, height, width))
    elif isinstance(segm.get("counts"), list):  # uncompressed RLE
        rle = mask_util.frPyObjects(segm, height, width)
    else:
        rle = segm
    with warnings.catch_warnings():  # pycocotools' Cython vs NumPy 2 copy= deprecation
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_util.decode(rle).astype(np.uint8)


class DetectionDataset(Dataset):
    """Images as float ``(3, H, W)`` in [0, 1] and torchvision detection targets.

    Args:
        split: A loaded split.
        train: Drop images without objects (Detectron2 ``FILTER_EMPTY_ANNOTATIONS``) and flip
            horizontally with probability 0.5 (``RANDOM_FLIP "horizontal"``).
        masks: Add ``"masks"`` ``(N, H, W)`` uint8 to the targets (COCO only).
    """

    def __init__(self, split: DetectionSplit, train: bool, masks: bool = False) -> None:
        if masks and split.kind != "coco":
            raise ValueError(f"{split.name}: masks need COCO segmentations")
        self.split, self.train, self.masks = split, train, masks
        self.indices = [i for i, r in enumerate(split.images) if len(r.labels) or not train]
        if not self.indices:
            raise DatasetError(f"{split.name}: no image has an object")

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Tensor]]:
        rec = self.split.images[self.indices[i]]
        try:
            image = Image.open(rec.path).convert("RGB")
        except OSError as e:
            raise DatasetError(f"{rec.path}: cannot read ({e})") from None
        x = torch.from_numpy(np.asarray(image, np.uint8).copy()).permute(2, 0, 1)  # (3, H, W)
        x = x.float().div_(255)
        boxes = torch.from_numpy(rec.boxes.copy())
        target = {"boxes": boxes, "labels": torch.from_numpy(rec.labels) + 1,  # 0 = background
                  "index": torch.tensor(self.indices[i])}
        if self.masks:
            assert rec.segmentations is not None
            h, w = x.shape[1:]
            masks = [decode_segmentation(s, h, w) for s in rec.segmentations]
            target["masks"] = torch.from_numpy(
                np.stack(masks) if masks else np.zeros((0, h, w), np.uint8))
        if self.train and torch.rand(()) < 0.5:
            x = x.flip(-1)
            width = x.shape[-1]
            target["boxes"] = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0],
                                           boxes[:, 3]], 1)
            if self.masks:
                target["masks"] = target["masks"].flip(-1)
        return x, target


def collate(batch: list[tuple[Tensor, dict[str, Tensor]]]) -> tuple[list[Tensor], list[dict]]:
    """Lists of images and targets (torchvision's detection models take lists)."""
    return [b[0] for b in batch], [b[1] for b in batch]

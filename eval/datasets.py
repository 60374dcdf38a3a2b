"""Readers for the transfer benchmarks' on-disk layouts (eval-protocols §2–§5).

Each reader returns a :class:`FileSet` (image paths, labels, class names, a fingerprint)
and raises :class:`DatasetError`, whose message names the expected layout, when the folder
is missing or malformed. The ImageNet / ImageFolder / SimCLR-subset readers, ``FileSet``
and ``DatasetError`` live in ``dataroom.readers`` (one reader per layout for the whole
project, pretraining included) and are re-exported here; Places205, VOC07 and iNat18 are
built on the same primitives. Images are decoded later (``eval/images.py``).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from dataroom.index import IMAGE_EXTENSIONS
from dataroom.readers import (
    IMAGENET_LAYOUT,
    SUBSET_LAYOUT,
    DatasetError,
    FileSet,
    image_folder,
    imagenet,
    imagenet_subset,
    make_fileset,
    require_dir,
)

__all__ = [
    "IMAGENET_LAYOUT", "IMAGE_EXTENSIONS", "INAT_LAYOUT", "PLACES_LAYOUT", "SUBSET_LAYOUT",
    "VOC_LAYOUT", "DatasetError", "FileSet", "image_folder", "imagenet", "imagenet_subset",
    "inat18", "places205", "read_voc_annotation", "voc07",
]

PLACES_LAYOUT = (
    "Places205, one of: (a) VISSL disk_filelist <root>/<split>_images.npy + "
    "<root>/<split>_labels.npy; (b) the original lists <root>/trainvalsplit_places205/"
    "<split>_places205.csv ('<relative path> <label>' per line) with images under "
    "<root>/images256/ or <root>/data/vision/torralba/deeplearning/images256/; "
    "(c) an ImageFolder <root>/<split>/<class>/*.jpg"
)
VOC_LAYOUT = (
    "PASCAL VOC2007: <root> = VOCdevkit/VOC2007 with JPEGImages/<id>.jpg, Annotations/<id>.xml "
    "and ImageSets/Main/<class>_<split>.txt ('<id> <1|0|-1>' per line, one file per class)"
)
INAT_LAYOUT = (
    "iNaturalist 2018: <root>/train2018.json and <root>/val2018.json (COCO-style: "
    "images[{id, file_name}], annotations[{image_id, category_id}], categories[{id, name}]) "
    "with images at <root>/<file_name> (train_val2018/<supercategory>/<category>/<name>.jpg)"
)


def _resolve(root: Path, entry: str, bases: tuple[Path, ...] = ()) -> str:
    path = Path(entry)
    if path.is_absolute():
        return str(path)
    for base in (*bases, root):
        if (base / path).exists():
            return str(base / path)
    return str((bases[0] if bases else root) / path)


def _class_name(rel: str) -> str:
    """Places class from a path such as ``a/abbey/0001.jpg`` or ``b/bus_interior/x.jpg``."""
    parts = Path(rel).parts[:-1]
    letters = [i for i, p in enumerate(parts) if len(p) == 1 and p.isalpha()]
    if letters and letters[-1] + 1 < len(parts):
        return "/".join(parts[letters[-1] + 1:])
    return parts[-1] if parts else ""


def _named_classes(rel_paths: list[str], labels: np.ndarray) -> list[str]:
    num = int(labels.max()) + 1 if len(labels) else 0
    names = [f"class_{i:03d}" for i in range(num)]
    for rel, label in zip(rel_paths, labels):
        if names[label].startswith("class_") and _class_name(rel):
            names[label] = _class_name(rel)
    return names


def places205(root: str | Path, split: str) -> FileSet:
    """Places205 from a VISSL filelist, the original CSV lists, or an ImageFolder."""
    root = Path(root).expanduser().resolve()
    require_dir(root, PLACES_LAYOUT)
    npy_images, npy_labels = root / f"{split}_images.npy", root / f"{split}_labels.npy"
    csv = root / "trainvalsplit_places205" / f"{split}_places205.csv"
    if npy_images.is_file() and npy_labels.is_file():
        rel = [str(p) for p in np.load(npy_images, allow_pickle=False)]
        labels = np.load(npy_labels, allow_pickle=False).astype(np.int64).reshape(-1)
        if len(rel) != len(labels):
            raise DatasetError(f"{npy_images}: {len(rel)} paths but {len(labels)} labels")
        paths = [_resolve(root, p) for p in rel]
    elif csv.is_file():
        bases = (root / "images256", root / "data/vision/torralba/deeplearning/images256")
        rel, lab = [], []
        for n, line in enumerate(csv.read_text().splitlines(), 1):
            if not line.strip():
                continue
            fields = line.replace(",", " ").split()
            if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
                raise DatasetError(f"{csv}:{n}: malformed line {line!r}. Expected {PLACES_LAYOUT}")
            rel.append(fields[0].lstrip("/"))
            lab.append(int(fields[1]))
        labels = np.asarray(lab, dtype=np.int64)
        paths = [_resolve(root, p, bases) for p in rel]
    elif (root / split).is_dir():
        return image_folder(root, split, "places205", PLACES_LAYOUT)
    else:
        raise DatasetError(f"{root}: no Places205 '{split}' split found. Expected {PLACES_LAYOUT}")
    if len(labels) and labels.min() < 0:
        raise DatasetError(f"{root}/{split}: negative label. Expected {PLACES_LAYOUT}")
    classes = _named_classes([str(Path(p)) for p in rel], labels)
    return make_fileset("places205", split, paths, labels, classes, root)


def _read_voc_set(path: Path) -> dict[str, int]:
    out = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in ("1", "0", "-1"):
            raise DatasetError(f"{path}:{n}: malformed line {line!r}. Expected {VOC_LAYOUT}")
        out[fields[0]] = int(fields[1])
    return out


def voc07(root: str | Path, split: str) -> FileSet:
    """VOC2007 classification targets from ``ImageSets/Main/<class>_<split>.txt``.

    Labels are remapped as in fssb/VISSL ``create_voc_data_files.py``: 1 → 1 (present),
    -1 → 0 (absent), 0 → -1 (ignore). Rows are sorted by image id, columns by class name.
    """
    root = Path(root).expanduser().resolve()
    if (root / "VOCdevkit" / "VOC2007").is_dir():
        root = root / "VOCdevkit" / "VOC2007"
    main = root / "ImageSets" / "Main"
    require_dir(main, VOC_LAYOUT)
    suffix = f"_{split}.txt"
    files = sorted(p for p in main.iterdir() if p.name.endswith(suffix) and p.name != suffix[1:])
    if not files:
        raise DatasetError(f"{main}: no <class>{suffix} files. Expected {VOC_LAYOUT}")
    classes = [p.name[: -len(suffix)] for p in files]
    per_class = [_read_voc_set(p) for p in files]
    ids = sorted(per_class[0])
    for cls, table in zip(classes, per_class):
        if sorted(table) != ids:
            raise DatasetError(f"{main}/{cls}{suffix} lists other images than {files[0].name}. "
                               f"Expected {VOC_LAYOUT}")
    remap = {1: 1, -1: 0, 0: -1}
    labels = np.array([[remap[t[i]] for t in per_class] for i in ids], dtype=np.int8)
    paths = [str(root / "JPEGImages" / f"{i}.jpg") for i in ids]
    return make_fileset("voc07", split, paths, labels.reshape(len(ids), len(classes)), classes,
                        root)


def read_voc_annotation(path: str | Path) -> dict:
    """One VOC XML annotation: ``{"filename", "width", "height", "objects": [...]}``.

    Each object is ``{"name", "difficult", "bbox": (xmin, ymin, xmax, ymax)}`` in the file's
    1-based pixel coordinates (detectron2 subtracts 1 from xmin/ymin when loading).
    """
    tree = ET.parse(path).getroot()
    size = tree.find("size")
    objects = []
    for obj in tree.findall("object"):
        box = obj.find("bndbox")
        objects.append({
            "name": obj.findtext("name", "").strip(),
            "difficult": int(obj.findtext("difficult", "0")),
            "bbox": tuple(int(float(box.findtext(k, "0")))
                          for k in ("xmin", "ymin", "xmax", "ymax")),
        })
    return {
        "filename": tree.findtext("filename", ""),
        "width": int(size.findtext("width", "0")) if size is not None else 0,
        "height": int(size.findtext("height", "0")) if size is not None else 0,
        "objects": objects,
    }


def inat18(root: str | Path, split: str) -> FileSet:
    """iNaturalist 2018 ``train`` / ``val`` from the competition JSON.

    NOTE: the label is ``annotations.category_id`` (the canonical field), mapped to a
    contiguous index in category-id order; VISSL's converter parses the category folder of
    ``file_name`` instead (eval-protocols §9.14). The two agree on the official files.
    """
    root = Path(root).expanduser().resolve()
    path = root / f"{split}2018.json"
    if not path.is_file():
        raise DatasetError(f"{path} not found. Expected {INAT_LAYOUT}")
    try:
        data = json.loads(path.read_text())
        images, annotations, categories = data["images"], data["annotations"], data["categories"]
        label_of = {a["image_id"]: a["category_id"] for a in annotations}
        cats = sorted(categories, key=lambda c: c["id"])
        index = {c["id"]: i for i, c in enumerate(cats)}
        paths = [str(root / im["file_name"]) for im in images]
        labels = np.asarray([index[label_of[im["id"]]] for im in images], dtype=np.int64)
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise DatasetError(f"{path}: malformed ({type(e).__name__}: {e}). "
                           f"Expected {INAT_LAYOUT}") from None
    if len(label_of) != len(annotations):
        raise DatasetError(f"{path}: some images have several annotations. Expected {INAT_LAYOUT}")
    names = [str(c.get("name", c["id"])) for c in cats]
    return make_fileset("inat18", split, paths, labels, names, root)

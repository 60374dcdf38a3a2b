"""Mini COCO: Fashion-MNIST mosaics with instance masks, in COCO 2017's exact layout.

``ensure_mini_coco(coco_root)`` writes, once, ``<coco_root>/annotations/instances_{train,
val}2017.json`` and ``<coco_root>/{train,val}2017/<id>.jpg``: 64×64 canvases with 2–4
items each (rescaled 0.75–1.25×, placed at random, later items occluding earlier ones by
at most a quarter of either). Each object's mask is the item's non-background pixels that
stay visible; its ``bbox`` (``[x, y, w, h]``) and ``area`` come from that mask; its
``segmentation`` is compressed RLE with ``iscrowd`` 0 (Detectron2 reads it with
``INPUT.MASK_FORMAT bitmask``). Category ids are non-contiguous, as COCO's are. Train
scenes use the Fashion-MNIST train images, val scenes the test images.

The mini VOC07 detection set is the eval battery's (``eval.mini``: 64×64 2×2 mosaics with
VOC XML boxes and ``difficult`` flags); it is not duplicated here.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_util

from eval.datasets import DatasetError
from trainer.datasets import fashion_mnist

VERSION = 1
PARAMS: dict[str, Any] = {"train": 240, "val": 80, "canvas": 64, "items": [2, 4],
                          "scale": [0.75, 1.25], "threshold": 24, "max_overlap": 0.25,
                          "seed": 0}
MANIFEST = "mini.json"
GENERATOR = "sslbench.eval.detection.mini"


def category_ids(num_classes: int) -> list[int]:
    """Non-contiguous ids (1, 2, 3, 5, 6, 7, 9 …) so that the id → index remapping is exercised."""
    return [1 + c + c // 3 for c in range(num_classes)]


def _resized(item: np.ndarray, scale: float) -> np.ndarray:
    side = max(8, int(round(item.shape[0] * scale)))
    return np.asarray(Image.fromarray(item).resize((side, side), Image.BILINEAR))


def mosaic(items: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
           params: dict[str, Any] = PARAMS) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """One canvas and its ``(label, visible mask)`` objects.

    Args:
        items: ``(N, 28, 28)`` uint8 source images to draw from.
        labels: ``(N,)`` their classes.
        rng: The generator (draws items, scales, positions).
        params: Canvas size, item count range, scale range, foreground threshold, overlap.
    """
    size = params["canvas"]
    canvas = np.zeros((size, size), np.uint8)
    objects: list[tuple[int, np.ndarray]] = []
    for _ in range(int(rng.integers(params["items"][0], params["items"][1] + 1))):
        k = int(rng.integers(len(items)))
        item = _resized(items[k], float(rng.uniform(*params["scale"])))
        fg = item > params["threshold"]
        if fg.sum() < 16:
            continue
        for _attempt in range(30):
            top, left = (int(v) for v in rng.integers(0, size - item.shape[0] + 1, 2))
            full = np.zeros((size, size), bool)
            full[top:top + item.shape[0], left:left + item.shape[1]] = fg
            limit = params["max_overlap"]
            if all((full & m).sum() <= limit * min(full.sum(), m.sum()) for _, m in objects):
                break
        else:
            continue
        region = canvas[top:top + item.shape[0], left:left + item.shape[1]]
        region[fg] = item[fg]
        objects = [(c, m & ~full) for c, m in objects]
        objects.append((int(labels[k]), full))
    return canvas, [(c, m) for c, m in objects if m.sum() >= 8]


def _annotation(ann_id: int, image_id: int, category: int, mask: np.ndarray) -> dict[str, Any]:
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"id": ann_id, "image_id": image_id, "category_id": category,
            "segmentation": {"size": [int(v) for v in rle["size"]],
                             "counts": rle["counts"].decode("ascii")},
            "area": float(mask_util.area(rle)),
            "bbox": [float(v) for v in mask_util.toBbox(rle)], "iscrowd": 0}


def write_split(root: Path, split: str, items: np.ndarray, labels: np.ndarray,
                classes: list[str], num_images: int, rng: np.random.Generator,
                first_id: int, params: dict[str, Any] = PARAMS) -> int:
    """Write ``<split>2017/`` images and ``annotations/instances_<split>2017.json``.

    Returns:
        The next free image id (ids are unique across splits, as in COCO).
    """
    ids = category_ids(len(classes))
    images, annotations = [], []
    (root / f"{split}2017").mkdir(parents=True, exist_ok=True)
    image_id = first_id
    for _ in range(num_images):
        canvas, objects = mosaic(items, labels, rng, params)
        file_name = f"{image_id:012d}.jpg"
        Image.fromarray(canvas).convert("RGB").save(root / f"{split}2017" / file_name, quality=95)
        images.append({"id": image_id, "file_name": file_name, "height": canvas.shape[0],
                       "width": canvas.shape[1], "license": 0})
        for c, m in objects:
            annotations.append(_annotation(len(annotations) + 1 + 100000 * (split == "val"),
                                           image_id, ids[c], m))
        image_id += 1
    body = {"info": {"description": "sslbench mini COCO (Fashion-MNIST mosaics)",
                     "version": str(VERSION)},
            "licenses": [{"id": 0, "name": "Fashion-MNIST (MIT)", "url": ""}],
            "images": images, "annotations": annotations,
            "categories": [{"id": i, "name": n, "supercategory": "clothing"}
                           for i, n in zip(ids, classes)]}
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(body))
    return image_id


def ensure_mini_coco(coco_root: str | Path, fashion_root: str = "",
                     params: dict[str, Any] = PARAMS) -> str:
    """Generate the mini COCO under ``coco_root`` unless it is there; returns its fingerprint.

    Raises:
        DatasetError: ``coco_root`` holds files this generator did not write, or
            Fashion-MNIST cannot be found.
    """
    root = Path(coco_root).expanduser()
    try:
        train, test = fashion_mnist(fashion_root, "train"), fashion_mnist(fashion_root, "test")
    except (FileNotFoundError, OSError, RuntimeError) as e:
        raise DatasetError(f"mini COCO: Fashion-MNIST not found ({e})") from None
    digest = hashlib.sha256(train.images.numpy().tobytes() + test.images.numpy().tobytes())
    fp = hashlib.sha1(json.dumps([VERSION, params, digest.hexdigest()]).encode()).hexdigest()
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent runs: one writes, the others wait
        manifest = root / MANIFEST
        if manifest.is_file():
            info = json.loads(manifest.read_text())
            if info.get("generator") == GENERATOR and info.get("fingerprint") == fp:
                return fp
        if root.exists() and any(root.iterdir()) and not manifest.is_file():
            raise DatasetError(f"{root} holds a dataset not written by the mini COCO generator; "
                               "pass another coco_root")
        rng = np.random.default_rng(params["seed"])
        with tempfile.TemporaryDirectory(dir=root.parent, prefix=f".{root.name}-") as tmp:
            next_id = write_split(Path(tmp), "train", train.images[:, 0].numpy(),
                                  train.labels.numpy(), train.classes, params["train"], rng, 1,
                                  params)
            write_split(Path(tmp), "val", test.images[:, 0].numpy(), test.labels.numpy(),
                        test.classes, params["val"], rng, next_id, params)
            (Path(tmp) / MANIFEST).write_text(json.dumps(
                {"generator": GENERATOR, "fingerprint": fp, "version": VERSION,
                 "params": params}, indent=1))
            shutil.rmtree(root, ignore_errors=True)
            os.replace(tmp, root)
            os.makedirs(tmp)  # TemporaryDirectory's cleanup expects it
    return fp

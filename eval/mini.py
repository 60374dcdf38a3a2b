"""The mini suite's datasets: Fashion-MNIST items written in each benchmark's real layout.

``ensure_mini(root)`` writes, once, under ``root``:

- ``imagenet/``: ImageFolder ``train/<wnid>/<wnid>_<n>.JPEG`` and ``val/…`` (10 classes,
  32×32 RGB JPEGs) with ``imagenet_subsets/{1,10}percent.txt`` in the SimCLR format;
- ``places205/``: VISSL ``disk_filelist`` ``{train,val}_images.npy`` / ``_labels.npy``
  pointing at ``images256/<letter>/<class>/<n>.jpg`` (40×40, so resize + crop is exercised);
- ``VOCdevkit/VOC2007/``: 64×64 mosaics of 1–4 items on a 2×2 grid, with VOC XML
  annotations (real boxes; some objects low-contrast and marked difficult) and
  ``ImageSets/Main/<class>_<split>.txt`` (1 / 0 only-difficult / -1) for trainval and test;
- ``inat2018/``: ``train2018.json`` / ``val2018.json`` (COCO-style) and
  ``train_val2018/<supercategory>/<category_id>/<n>.jpg`` (36×32, non-square).

Every split draws disjoint Fashion-MNIST items. ``mini.json`` holds the fingerprint (the
generator version, its parameters and the SHA-256 of the source IDX files); a matching
fingerprint means nothing is rewritten.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import json
import os
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

VERSION = 1
PARAMS = {"imagenet": (120, 40), "imagenet_subsets": (2, 12), "places205": (80, 30),
          "voc07": (300, 300), "inat18": (80, 30), "seed": 0}
CLASSES = ["tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
           "boot"]
SUPER = {"tshirt": "Tops", "pullover": "Tops", "coat": "Tops", "shirt": "Tops",
         "trouser": "Bottoms", "dress": "Dresses", "sandal": "Footwear", "sneaker": "Footwear",
         "boot": "Footwear", "bag": "Bags"}
SOURCE_DIRS = ("/usr/share/datasets/fashion-mnist", "~/.cache/sslbench/fashion-mnist")
OUTPUTS = ("imagenet", "places205", "VOCdevkit", "inat2018")


def _find_fashion(root: str | None) -> Path:
    env = os.environ.get("SSLBENCH_FASHION_MNIST")
    for base in [b for b in (root, env, *SOURCE_DIRS) if b]:
        d = Path(base).expanduser()
        for cand in (d, d / "FashionMNIST" / "raw"):
            name = "train-images-idx3-ubyte"
            if (cand / f"{name}.gz").is_file() or (cand / name).is_file():
                return cand
    raise FileNotFoundError("mini suite: Fashion-MNIST IDX files not found in "
                            f"$SSLBENCH_FASHION_MNIST or {', '.join(SOURCE_DIRS)} "
                            "(apt-get install dataset-fashion-mnist)")


def _idx(directory: Path, name: str) -> tuple[np.ndarray, str]:
    path = directory / f"{name}.gz" if (directory / f"{name}.gz").is_file() else directory / name
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    raw = gzip.decompress(raw) if path.suffix == ".gz" else raw
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims), digest


def _save(img: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).convert("RGB").save(path, quality=92)


def _pad(item: np.ndarray, h: int, w: int) -> np.ndarray:
    out = np.zeros((h, w), np.uint8)
    top, left = (h - item.shape[0]) // 2, (w - item.shape[1]) // 2
    out[top:top + item.shape[0], left:left + item.shape[1]] = item
    return out


class _Pool:
    """Disjoint per-class draws of Fashion-MNIST items."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.images = images
        self.by_class = [list(rng.permutation(np.nonzero(labels == c)[0])) for c in range(10)]

    def take(self, c: int) -> np.ndarray:
        return self.images[self.by_class[c].pop()]


def _imagenet(out: Path, pool: _Pool) -> None:
    n_train, n_val = PARAMS["imagenet"]
    wnids = [f"n{90000000 + c:08d}" for c in range(10)]
    for split, n in (("train", n_train), ("val", n_val)):
        for c, wnid in enumerate(wnids):
            for i in range(n):
                _save(_pad(pool.take(c), 32, 32), out / split / wnid / f"{wnid}_{i}.JPEG")
    subsets = out / "imagenet_subsets"
    subsets.mkdir(parents=True)
    for name, per_class in zip(("1percent", "10percent"), PARAMS["imagenet_subsets"]):
        lines = [f"{w}_{i}.JPEG" for w in wnids for i in range(per_class)]
        (subsets / f"{name}.txt").write_text("\n".join(lines) + "\n")


def _places(out: Path, pool: _Pool) -> None:
    for split, n in zip(("train", "val"), PARAMS["places205"]):
        paths, labels = [], []
        for c, name in enumerate(CLASSES):
            for i in range(n):
                rel = f"images256/{name[0]}/{name}/{split}_{i:05d}.jpg"
                _save(_pad(pool.take(c), 40, 40), out / rel)
                paths.append(rel)
                labels.append(c)
        np.save(out / f"{split}_images.npy", np.array(paths))
        np.save(out / f"{split}_labels.npy", np.array(labels, dtype=np.int64))


def _voc_xml(image_id: str, objects: list[tuple[str, tuple[int, int, int, int], int]]) -> str:
    objs = "".join(
        f"<object><name>{n}</name><pose>Unspecified</pose><truncated>0</truncated>"
        f"<difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for n, b, d in objects)
    return (f"<annotation><folder>VOC2007</folder><filename>{image_id}.jpg</filename>"
            "<source><database>sslbench mini (Fashion-MNIST)</database></source>"
            f"<size><width>64</width><height>64</height><depth>3</depth></size>"
            f"<segmented>0</segmented>{objs}</annotation>\n")


def _voc(out: Path, pool: _Pool, rng: np.random.Generator) -> None:
    voc = out / "VOC2007"
    n_trainval, n_test = PARAMS["voc07"]
    splits = rng.permutation(["trainval"] * n_trainval + ["test"] * n_test)
    table: dict[str, dict[str, dict[str, int]]] = {"trainval": {}, "test": {}}
    for n, split in enumerate(splits, 1):
        image_id, canvas, objects = f"{n:06d}", np.zeros((64, 64), np.uint8), []
        cells = rng.permutation(4)[: rng.integers(1, 5)]
        for cell in cells:
            c = int(rng.integers(10))
            item = pool.take(c).astype(np.float32)
            difficult = int(rng.random() < 0.12)
            item = item * (0.35 if difficult else 1.0)
            top, left = 32 * (cell // 2) + 2, 32 * (cell % 2) + 2
            canvas[top:top + 28, left:left + 28] = item.astype(np.uint8)
            ys, xs = np.nonzero(item > 10)
            if len(ys) == 0:
                continue
            box = (left + xs.min() + 1, top + ys.min() + 1, left + xs.max() + 1, top + ys.max() + 1)
            objects.append((CLASSES[c], tuple(int(v) for v in box), difficult))
        _save(canvas, voc / "JPEGImages" / f"{image_id}.jpg")
        (voc / "Annotations").mkdir(parents=True, exist_ok=True)
        (voc / "Annotations" / f"{image_id}.xml").write_text(_voc_xml(image_id, objects))
        # VOC convention: 1 = a non-difficult instance, 0 = only difficult ones, -1 = absent.
        table[split][image_id] = {
            name: max([1 if not d else 0 for nm, _, d in objects if nm == name], default=-1)
            for name in CLASSES}
    main = voc / "ImageSets" / "Main"
    main.mkdir(parents=True)
    for split, rows in table.items():
        (main / f"{split}.txt").write_text("".join(f"{i}\n" for i in rows))
        for name in CLASSES:
            (main / f"{name}_{split}.txt").write_text(
                "".join(f"{i} {rows[i][name]:2d}\n" for i in rows))


def _inat(out: Path, pool: _Pool) -> None:
    categories = [{"id": c, "name": name, "supercategory": SUPER[name], "kingdom": "Vestimenta",
                   "phylum": SUPER[name], "class": SUPER[name], "order": name, "family": name,
                   "genus": name} for c, name in enumerate(CLASSES)]
    image_id = 0
    for split, n in zip(("train", "val"), PARAMS["inat18"]):
        images, annotations = [], []
        for c, name in enumerate(CLASSES):
            for i in range(n):
                rel = f"train_val2018/{SUPER[name]}/{c}/{split}{i:05d}.jpg"
                _save(_pad(pool.take(c), 32, 36), out / rel)
                images.append({"id": image_id, "width": 36, "height": 32, "file_name": rel,
                               "license": 0, "rights_holder": "sslbench"})
                annotations.append({"id": image_id, "image_id": image_id, "category_id": c})
                image_id += 1
        body = {"info": {"description": "sslbench mini iNat"}, "licenses": [], "images": images,
                "annotations": annotations, "categories": categories}
        (out / f"{split}2018.json").write_text(json.dumps(body))


def fingerprint(source: Path) -> str:
    """Generator version + parameters + SHA-256 of the source IDX files."""
    digests = [_idx(source, n)[1] for n in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")]
    return hashlib.sha1(json.dumps([VERSION, PARAMS, digests]).encode()).hexdigest()


def ensure_mini(root: str | Path, fashion_root: str | None = None) -> str:
    """Generate the mini datasets under ``root`` unless already there; returns the fingerprint."""
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    source = _find_fashion(fashion_root)
    fp = fingerprint(source)
    with open(root / ".mini.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent runs: one generates, the others wait
        manifest = root / "mini.json"
        if manifest.is_file() and json.loads(manifest.read_text()).get("fingerprint") == fp:
            return fp
        if not manifest.is_file() and any((root / o).exists() for o in OUTPUTS):
            raise FileExistsError(f"{root} holds datasets not written by the mini generator; "
                                  "pass another --data-root")
        images, _ = _idx(source, "train-images-idx3-ubyte")
        labels, _ = _idx(source, "train-labels-idx1-ubyte")
        pool = _Pool(images, labels, PARAMS["seed"])
        rng = np.random.default_rng(PARAMS["seed"])
        with tempfile.TemporaryDirectory(dir=root, prefix=".mini-") as tmp:
            _imagenet(Path(tmp) / "imagenet", pool)
            _places(Path(tmp) / "places205", pool)
            _voc(Path(tmp) / "VOCdevkit", pool, rng)
            _inat(Path(tmp) / "inat2018", pool)
            for name in OUTPUTS:
                shutil.rmtree(root / name, ignore_errors=True)
                os.replace(Path(tmp) / name, root / name)
        manifest.write_text(json.dumps({"fingerprint": fp, "version": VERSION, "params": PARAMS,
                                        "source": str(source)}, indent=1))
    return fp

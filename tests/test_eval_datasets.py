"""Dataset readers on hand-written fixtures in each benchmark's official on-disk schema."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from backbones import build_backbone
from eval import datasets
from eval.features import extract_files
from eval.images import EvalTransform


def _jpeg(path: Path, value: int = 128, size: tuple[int, int] = (20, 16)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, value // 2, 255 - value)).save(path)


def test_imagenet_folders_and_simclr_subset(tmp_path: Path) -> None:
    for split, wnid, names in (("train", "n01440764",
                                ["n01440764_10026.JPEG", "n01440764_10027.JPEG"]),
                               ("train", "n01443537", ["n01443537_10007.JPEG"]),
                               ("val", "n01443537", ["ILSVRC2012_val_00000236.JPEG"])):
        for name in names:
            _jpeg(tmp_path / split / wnid / name)
    train = datasets.imagenet(tmp_path, "train")
    val = datasets.imagenet(tmp_path, "val")
    assert train.classes == ["n01440764", "n01443537"] and train.labels.tolist() == [0, 0, 1]
    assert val.labels.tolist() == [1]  # indexed by train's sorted wnids, not val's own
    (tmp_path / "1percent.txt").write_text("n01443537_10007.JPEG\nn01440764_10027.JPEG\n")
    sub = datasets.imagenet_subset(tmp_path, tmp_path / "1percent.txt", "train_1pct")
    assert sub.labels.tolist() == [1, 0] and sub.paths[1].endswith("n01440764/n01440764_10027.JPEG")
    assert sub.fingerprint != train.fingerprint
    (tmp_path / "bad.txt").write_text("n01440764_99999.JPEG\n")
    with pytest.raises(datasets.DatasetError, match="1 listed images not found"):
        datasets.imagenet_subset(tmp_path, tmp_path / "bad.txt", "x")


def test_missing_dataset_names_the_layout(tmp_path: Path) -> None:
    with pytest.raises(datasets.DatasetError, match=r"train/<wnid>/\*\.JPEG"):
        datasets.imagenet(tmp_path / "nope", "train")
    with pytest.raises(datasets.DatasetError, match="ImageSets/Main/<class>_<split>.txt"):
        datasets.voc07(tmp_path, "trainval")
    with pytest.raises(datasets.DatasetError, match="train2018.json"):
        datasets.inat18(tmp_path, "train")
    with pytest.raises(datasets.DatasetError, match="disk_filelist"):
        datasets.places205(tmp_path, "train")


def test_places205_vissl_filelist(tmp_path: Path) -> None:
    rel = ["images256/a/abbey/00000001.jpg", "images256/b/bus_interior/00000002.jpg"]
    for r in rel:
        _jpeg(tmp_path / r)
    np.save(tmp_path / "train_images.npy", np.array([str(tmp_path / rel[0]), rel[1]]))
    np.save(tmp_path / "train_labels.npy", np.array([0, 1]))
    fs = datasets.places205(tmp_path, "train")
    assert fs.labels.tolist() == [0, 1] and all(Path(p).is_file() for p in fs.paths)
    assert fs.classes == ["abbey", "bus_interior"]


def test_places205_original_csv_lists(tmp_path: Path) -> None:
    _jpeg(tmp_path / "images256/a/abbey/00000001.jpg")
    _jpeg(tmp_path / "images256/a/airport_terminal/00000003.jpg")
    lists = tmp_path / "trainvalsplit_places205"
    lists.mkdir()
    (lists / "val_places205.csv").write_text(
        "a/abbey/00000001.jpg 0\na/airport_terminal/00000003.jpg 1\n")
    fs = datasets.places205(tmp_path, "val")
    assert fs.labels.tolist() == [0, 1] and Path(fs.paths[1]).is_file()
    (lists / "train_places205.csv").write_text("a/abbey/00000001.jpg\n")
    with pytest.raises(datasets.DatasetError, match="malformed line"):
        datasets.places205(tmp_path, "train")


VOC_XML = """<annotation>
	<folder>VOC2007</folder>
	<filename>000005.jpg</filename>
	<source>
		<database>The VOC2007 Database</database>
		<annotation>PASCAL VOC2007</annotation>
	</source>
	<size><width>500</width><height>375</height><depth>3</depth></size>
	<segmented>0</segmented>
	<object><name>chair</name><pose>Rear</pose><truncated>0</truncated><difficult>0</difficult>
		<bndbox><xmin>263</xmin><ymin>211</ymin><xmax>324</xmax><ymax>339</ymax></bndbox></object>
	<object><name>chair</name><pose>Unspecified</pose><truncated>1</truncated><difficult>1</difficult>
		<bndbox><xmin>5</xmin><ymin>244</ymin><xmax>67</xmax><ymax>374</ymax></bndbox></object>
</annotation>
"""


def _voc_fixture(root: Path) -> Path:
    voc = root / "VOCdevkit" / "VOC2007"
    main = voc / "ImageSets" / "Main"
    main.mkdir(parents=True)
    # The devkit's exact line format: id, then the label right-aligned in 2 columns.
    (main / "chair_trainval.txt").write_text("000005  1\n000007 -1\n000009  0\n")
    (main / "car_trainval.txt").write_text("000005 -1\n000007  1\n000009 -1\n")
    (main / "trainval.txt").write_text("000005\n000007\n000009\n")
    (voc / "Annotations").mkdir()
    (voc / "Annotations" / "000005.xml").write_text(VOC_XML)
    for i in ("000005", "000007", "000009"):
        _jpeg(voc / "JPEGImages" / f"{i}.jpg")
    return voc


def test_voc07_image_sets_and_annotation(tmp_path: Path) -> None:
    voc = _voc_fixture(tmp_path)
    fs = datasets.voc07(tmp_path, "trainval")  # the VOCdevkit parent also works
    assert fs.classes == ["car", "chair"]  # sorted class-file order
    # remap 1 → 1, -1 → 0, 0 → -1 (ignore)
    assert fs.labels.tolist() == [[0, 1], [1, 0], [0, -1]]
    assert fs.paths[0].endswith("JPEGImages/000005.jpg")
    ann = datasets.read_voc_annotation(voc / "Annotations" / "000005.xml")
    assert (ann["width"], ann["height"]) == (500, 375)
    assert ann["objects"][1] == {"name": "chair", "difficult": 1, "bbox": (5, 244, 67, 374)}
    (voc / "ImageSets/Main/car_trainval.txt").write_text("000005 -1\n")
    with pytest.raises(datasets.DatasetError, match="lists other images"):
        datasets.voc07(voc, "trainval")


def test_inat18_json(tmp_path: Path) -> None:
    rel = ["train_val2018/Plantae/7477/3b60c9486db1d2ee875f11a669fbde4a.jpg",
           "train_val2018/Aves/2983/0a4b6c2b3a7f4f1a8d2e4b1c5d6e7f80.jpg"]
    for r in rel:
        _jpeg(tmp_path / r)
    body = {
        "info": {"year": 2018}, "licenses": [{"id": 1, "name": "CC", "url": ""}],
        "images": [{"id": 10, "width": 20, "height": 16, "file_name": rel[0], "license": 1,
                    "rights_holder": "x"},
                   {"id": 11, "width": 20, "height": 16, "file_name": rel[1], "license": 1,
                    "rights_holder": "y"}],
        "annotations": [{"id": 1, "image_id": 10, "category_id": 7477},
                        {"id": 2, "image_id": 11, "category_id": 2983}],
        "categories": [{"id": c, "name": n, "supercategory": s, "kingdom": s, "phylum": "",
                        "class": "", "order": "", "family": "", "genus": ""}
                       for c, n, s in ((7477, "Quercus", "Plantae"), (2983, "Parus", "Aves"))],
    }
    (tmp_path / "train2018.json").write_text(json.dumps(body))
    fs = datasets.inat18(tmp_path, "train")
    assert fs.classes == ["Parus", "Quercus"] and fs.labels.tolist() == [1, 0]
    (tmp_path / "val2018.json").write_text('{"images": []')
    with pytest.raises(datasets.DatasetError, match="malformed"):
        datasets.inat18(tmp_path, "val")


def test_corrupt_images_skipped_with_count(tmp_path: Path) -> None:
    paths = []
    for i in range(4):
        paths.append(tmp_path / f"{i}.jpg")
        _jpeg(paths[-1], value=40 * i, size=(24, 20))
    paths[2].write_bytes(b"not a jpeg")
    bb = build_backbone("tiny_cnn", width=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        feats = extract_files(bb, [str(p) for p in paths], EvalTransform(20, 16), mean=(0.5,) * 3,
                              std=(0.5,) * 3, batch_size=2, name="fixture")
    assert feats["index"].tolist() == [0, 1, 3] and feats["avgpool"].shape == (3, 8)
    assert any("skipped 1 of 4" in str(w.message) for w in caught)
    assert torch.isfinite(feats["avgpool"]).all()

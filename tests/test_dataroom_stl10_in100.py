"""STL-10 binary files (column-major, unlabeled memory-mapped) and ImageNet-100 over an
ImageNet-layout tree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dataroom.arrays import RowStack
from dataroom.imagenet100 import IMAGENET100_LIST, imagenet100
from dataroom.pretrain import open_files
from dataroom.readers import DatasetError
from dataroom.stl10 import read_stl10, write_stl10
from dataroom.synthetic import write_tree
from dataroom.synthetic_sets import labelled_images


@pytest.fixture(scope="module")
def stl(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict]:
    root = tmp_path_factory.mktemp("stl10")
    x_tr, y_tr = labelled_images(12, 96, 10, 0)
    x_te, y_te = labelled_images(7, 96, 10, 1)
    x_un, _ = labelled_images(9, 96, 10, 2)
    images = {"train": x_tr, "test": x_te, "unlabeled": x_un}
    labels = {"train": y_tr, "test": y_te}
    write_stl10(root, images, labels)
    return root, images, labels


def test__files_are_column_major_raw_bytes(stl, tmp_path) -> None:
    img = np.zeros((1, 3, 96, 96), np.uint8)
    img[0, :, 0, :] = 255  # the top row is white
    write_stl10(tmp_path, {"train": img}, {"train": np.array([3])})
    raw = np.fromfile(tmp_path / "stl10_binary" / "train_X.bin", np.uint8)
    assert raw.size == 27648 and (raw[:96:1] == 255).sum() == 1  # column 0: only its top pixel
    assert raw[::96][:96].min() == 255  # every column starts with a white pixel
    assert np.fromfile(tmp_path / "stl10_binary" / "train_y.bin", np.uint8).tolist() == [4]
    got = read_stl10(tmp_path, "train")
    assert got.images.numpy()[0, :, 0, :].min() == 255 and got.images.numpy()[0, :, 1:].max() == 0
    assert got.labels.tolist() == [3]


@pytest.mark.parametrize("split", ["train", "test", "unlabeled", "train+unlabeled"])
def test__splits_match_written_pixels_and_torchvision(stl, split, monkeypatch) -> None:
    import torchvision.datasets.stl10 as tv

    root, images, labels = stl
    got = read_stl10(root, split)
    parts = split.split("+")
    np.testing.assert_array_equal(got.images.numpy(), np.concatenate([images[p] for p in parts]))
    want = np.concatenate([labels[p] if p in labels else np.full(len(images[p]), -1)
                           for p in parts])
    np.testing.assert_array_equal(got.labels, want)
    monkeypatch.setattr(tv.STL10, "_check_integrity", lambda self: True)
    ref = tv.STL10(str(root), split=split, download=False)
    np.testing.assert_array_equal(got.images.numpy(), ref.data)
    np.testing.assert_array_equal(got.labels, ref.labels if ref.labels is not None
                                  else np.full(len(ref.data), -1))
    assert got.classes[0] == "airplane" and len(got.classes) == 10


def test__unlabeled_is_memory_mapped_and_gathered_per_batch(stl) -> None:
    root, images, _ = stl
    both = read_stl10(root, "train+unlabeled")
    (train, swapped_tr), (unlabeled, swapped_un) = both.images.parts
    assert isinstance(unlabeled, np.memmap) and swapped_un and not swapped_tr
    assert not isinstance(train, np.memmap)
    full = np.concatenate([images["train"], images["unlabeled"]])
    idx = torch.tensor([20, 3, 13, 13, 0, -1])
    batch = both.images[idx]
    assert isinstance(batch, torch.Tensor) and batch.is_contiguous() and batch.dtype == torch.uint8
    np.testing.assert_array_equal(batch.numpy(), full[idx.numpy()])
    view = both.images[5:16]  # a lazy subset
    assert isinstance(view, RowStack) and view.shape == (11, 3, 96, 96)
    np.testing.assert_array_equal(view[np.array([0, 10])].numpy(), full[[5, 15]])
    np.testing.assert_array_equal(both.images[7].numpy(), full[7])
    with pytest.raises(IndexError):
        view[np.array([11])]


def test__bad_stl_files(stl, tmp_path) -> None:
    root, images, labels = stl
    base = write_stl10(tmp_path, images, labels)
    data = (base / "unlabeled_X.bin").read_bytes()
    (base / "unlabeled_X.bin").write_bytes(data[:-100])
    with pytest.raises(DatasetError, match=r"unlabeled_X\.bin: \d+ bytes is not a whole number "
                                           r"of 96×96×3 images .*truncated"):
        read_stl10(tmp_path, "train+unlabeled")
    (base / "test_y.bin").write_bytes(bytes([1, 2, 3]))
    with pytest.raises(DatasetError, match=r"test_y\.bin: 3 labels for 7 images in test_X\.bin"):
        read_stl10(tmp_path, "test")
    (base / "test_y.bin").write_bytes(bytes([0] * 7))
    with pytest.raises(DatasetError, match=r"labels 0\.\.0, expected 1\.\.10"):
        read_stl10(tmp_path, "test")
    (base / "train_X.bin").unlink()
    with pytest.raises(DatasetError, match=r"train_X\.bin: missing\. Expected STL-10, binary"):
        read_stl10(tmp_path, "train")
    with pytest.raises(DatasetError, match=r"no 'val' split; valid: train, test, unlabeled, "
                                           r"train\+unlabeled"):
        read_stl10(root, "val")
    with pytest.raises(DatasetError, match=r"stl10: no stl10_binary folder in .*nowhere"):
        read_stl10(tmp_path / "nowhere", "train")


def test__stl_root_may_be_the_binary_folder_or_the_env(stl, tmp_path, monkeypatch) -> None:
    root, images, _ = stl
    assert len(read_stl10(root / "stl10_binary", "test")) == len(images["test"])
    monkeypatch.setenv("SSLBENCH_STL10", str(root))
    assert len(read_stl10("", "test")) == len(images["test"])


# ----------------------------------------------------------------------------- ImageNet-100


def test__imagenet100_list_is_the_cmc_solo_learn_list() -> None:
    text = IMAGENET100_LIST.read_text()
    wnids = text.split()
    assert len(wnids) == 100 == len(set(wnids))
    assert all(len(w) == 9 and w[0] == "n" and w[1:].isdigit() for w in wnids)
    # CMC's imagenet100.txt: one id per line, first n02869837, last n02090622 (1000 bytes).
    assert wnids[0] == "n02869837" and wnids[-1] == "n02090622" and len(text.encode()) == 1000


@pytest.fixture(scope="module")
def imagenet_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("imagenet")
    wnids = IMAGENET100_LIST.read_text().split()
    extra = ["n01440764", "n09999999"]  # ImageNet classes outside the subset
    layout = {f"train/{w}": 2 if w == wnids[0] else 1 for w in wnids + extra}
    layout.update({f"val/{w}": 1 for w in wnids + extra})
    write_tree(root, layout, size=(12, 16))
    return root


def test__imagenet100_reads_only_the_listed_classes(imagenet_tree, monkeypatch) -> None:
    train = imagenet100(imagenet_tree, "train")
    wnids = sorted(IMAGENET100_LIST.read_text().split())
    assert train.classes == wnids and len(train) == 101
    assert not any("n01440764" in p or "n09999999" in p for p in train.paths)
    for path, label in zip(train.paths, train.labels):
        assert Path(path).parent.name == wnids[label]  # label = index in sorted order
    val = imagenet100(imagenet_tree, "val")
    assert len(val) == 100 and val.classes == wnids and val.name == "imagenet100"
    monkeypatch.setenv("SSLBENCH_IMAGENET", str(imagenet_tree))
    assert open_files("imagenet100", "", "val").fingerprint == val.fingerprint


def test__imagenet100_missing_class_is_named(imagenet_tree, tmp_path) -> None:
    import shutil

    copy = tmp_path / "imagenet"
    shutil.copytree(imagenet_tree / "val", copy / "val")
    shutil.rmtree(copy / "val" / "n02090622")
    with pytest.raises(DatasetError, match=r"1 classes of .*imagenet100\.txt have no folder "
                                           r"\(e\.g\. n02090622\)\. Expected ImageNet-100"):
        imagenet100(copy, "val")

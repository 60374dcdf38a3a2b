"""dataroom readers and the file index, on trees written in the exact on-disk layouts."""

from __future__ import annotations

import os
import pickle
import time
from pathlib import Path

import numpy as np
import pytest

from dataroom import index as index_mod
from dataroom import readers
from dataroom.paths import PathTable
from dataroom.pretrain import open_files
from dataroom.synthetic import natural_image, write_image, write_tree

WNIDS = ["n01440764", "n01443537", "n01484850"]


def _age(root: Path, seconds: float = 3600) -> None:
    """Set every folder's mtime back, as on a tree written long ago (not racy)."""
    past = time.time() - seconds
    for folder, _, _ in os.walk(root):
        os.utime(folder, (past, past))


@pytest.fixture
def imagenet_root(tmp_path: Path) -> Path:
    root = tmp_path / "imagenet"
    write_tree(root, {f"train/{w}": 3 for w in WNIDS}, size=(24, 32))
    write_tree(root, {f"val/{w}": 1 for w in WNIDS[1:]}, size=(24, 32), seed=100)
    return root


def test__paths_table_round_trips_and_pickles_compactly(tmp_path: Path) -> None:
    entries = ["a/x.JPEG", "b/ü ñ.jpg", "c/d/e.png", "/elsewhere/abs.jpg"]
    table = PathTable.from_entries(tmp_path, entries)
    assert len(table) == 4 and table[1] == str(tmp_path / "b/ü ñ.jpg")
    assert table[3] == "/elsewhere/abs.jpg" and table[-1] == table[3]
    assert table.entries() == entries and list(table)[2] == str(tmp_path / "c/d/e.png")
    assert table.take([3, 0]).entries() == [entries[3], entries[0]]
    assert pickle.loads(pickle.dumps(table)) == table
    assert isinstance(table.data, np.ndarray) and table.data.dtype == np.uint8
    with pytest.raises(IndexError):
        table[4]


def test__imagenet_train_val_labels_and_paths(imagenet_root: Path) -> None:
    train = readers.imagenet(imagenet_root, "train")
    val = readers.imagenet(imagenet_root, "val")
    assert train.classes == WNIDS and train.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert Path(train.paths[4]).parent.name == WNIDS[1] and Path(train.paths[4]).is_file()
    assert val.classes == WNIDS and val.labels.tolist() == [1, 2]  # train's indices
    assert isinstance(train.paths, PathTable) and train.fingerprint != val.fingerprint


def test__imagenet_root_from_the_environment(imagenet_root: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(readers.IMAGENET_ENV, raising=False)
    with pytest.raises(readers.DatasetError, match=r"SSLBENCH_IMAGENET.*train/<wnid>/\*\.JPEG"):
        readers.imagenet("", "train")
    monkeypatch.setenv(readers.IMAGENET_ENV, str(imagenet_root))
    assert len(readers.imagenet("", "train")) == 9
    assert len(open_files("imagenet", "", "val")) == 2


def test__class_list_subsets_like_imagenet100(imagenet_root: Path, tmp_path: Path) -> None:
    (tmp_path / "subset.txt").write_text(f"{WNIDS[2]}\n  {WNIDS[0]} \n")
    sub = readers.imagenet(imagenet_root, "train", class_list=tmp_path / "subset.txt")
    assert sub.classes == [WNIDS[0], WNIDS[2]] and sub.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert all(Path(p).parent.name in (WNIDS[0], WNIDS[2]) for p in sub.paths)
    # val has no n01440764 folder: a listed class missing is an error, not a silent gap
    with pytest.raises(readers.DatasetError, match=r"1 classes of .*subset.txt have no folder "
                                                   r"\(e.g. n01440764\)"):
        readers.imagenet(imagenet_root, "val", class_list=tmp_path / "subset.txt")
    (tmp_path / "empty.txt").write_text(" \n")
    with pytest.raises(readers.DatasetError, match="is empty"):
        readers.image_folder(imagenet_root, "train", class_list=tmp_path / "empty.txt")


def test__image_folder_reads_nested_class_folders_and_skips_hidden(tmp_path: Path) -> None:
    root = tmp_path / "pets"
    write_tree(root, {"train/cat": 2, "train/dog/indoor": 1, "train/dog/outdoor": 2,
                      "train/.cache": 1, "train/dog/.thumbs": 1}, size=(16, 16), ext=".Jpg")
    write_image(root / "train" / "stray.png", natural_image(16, 16, 9), "PNG")  # no class
    write_image(root / "train" / "cat" / ".hidden.jpg", natural_image(16, 16, 9))
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    fs = readers.image_folder(root, "train")
    assert fs.classes == ["cat", "dog"] and fs.labels.tolist() == [0, 0, 1, 1, 1]
    names = [os.path.relpath(p, root / "train") for p in fs.paths]
    assert names == ["cat/cat_0000.Jpg", "cat/cat_0001.Jpg", "dog/indoor/indoor_0000.Jpg",
                     "dog/outdoor/outdoor_0000.Jpg", "dog/outdoor/outdoor_0001.Jpg"]


def test__unlabeled_folder_flat_and_nested(tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    write_tree(flat, {"": 3}, size=(16, 16), ext=".jpeg")
    fs = readers.unlabeled_folder(flat)
    assert len(fs) == 3 and fs.labels.tolist() == [-1, -1, -1] and fs.classes == []
    nested = tmp_path / "nested"
    write_tree(nested, {"b/deep/er": 1, "a": 1, "": 1, ".git": 2}, size=(16, 16), ext=".JPG")
    write_image(nested / "b" / "x.PNG", natural_image(16, 16, 1), "PNG")
    fs = readers.unlabeled_folder(nested)
    names = [os.path.relpath(p, nested) for p in fs.paths]
    # a folder's files (sorted) come before its sub-folders (sorted), depth first
    assert names == ["img_0000.JPG", "a/a_0000.JPG", "b/x.PNG", "b/deep/er/er_0000.JPG"]
    assert open_files("unlabeled_folder", nested).fingerprint == fs.fingerprint


@pytest.mark.parametrize("call, layout", [
    (lambda r: readers.imagenet(r / "missing", "train"), r"train/<wnid>/\*\.JPEG"),
    (lambda r: readers.imagenet(r, "train"), r"train/<wnid>/\*\.JPEG"),
    (lambda r: readers.image_folder(r / "missing", "train"), r"<root>/<split>/<class>/<images>"),
    (lambda r: readers.unlabeled_folder(r / "missing"), r"an unlabeled image folder"),
    (lambda r: readers.unlabeled_folder(r), r"no images found .*an unlabeled image folder"),
    (lambda r: open_files("imagenet_22k", r), r"unknown image dataset 'imagenet_22k'; valid: "
                                              r"image_folder, imagenet, imagenet100, "
                                              r"unlabeled_folder"),
    (lambda r: open_files("unlabeled_folder", r, "val"), r"no 'val' split.*data.val_root"),
])
def test__refusals_name_the_expected_layout(tmp_path: Path, call, layout: str) -> None:
    (tmp_path / "empty_class" / "x").mkdir(parents=True)
    (tmp_path / "train").mkdir()
    with pytest.raises(readers.DatasetError, match=layout):
        call(tmp_path)


def test__an_empty_split_refuses(tmp_path: Path) -> None:
    (tmp_path / "train" / "n01").mkdir(parents=True)
    with pytest.raises(readers.DatasetError, match="no images found.*train/<wnid>"):
        readers.imagenet(tmp_path, "train")


def test__index_is_cached_and_invalidated_by_a_change(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "tree"
    write_tree(root, {"a": 2, "b/c": 2, "d": 1}, size=(8, 8))
    _age(root)
    calls = []

    def counting(path):
        calls.append(path)
        return os.scandir(path)

    monkeypatch.setattr(index_mod, "_scandir", counting)
    cache = tmp_path / "cache"
    first = index_mod.index_tree(root, cache=cache)
    assert not first.from_cache and len(first.files) == 5 and len(calls) == 5  # 5 folders
    second = index_mod.index_tree(root, cache=cache)
    assert second.from_cache and len(calls) == 5  # not one folder listed again
    assert second.files == first.files
    assert len(list(cache.glob("*.npz"))) == 1 and not list(cache.glob("*.tmp"))
    write_image(root / "b" / "c" / "new.jpg", natural_image(8, 8, 5))  # a new file ...
    third = index_mod.index_tree(root, cache=cache)
    assert not third.from_cache and len(third.files) == 6  # ... invalidates it
    _age(root)
    os.rename(root / "a" / "a_0000.JPEG", root / "a" / "z.JPEG")  # a rename, too
    assert index_mod.index_tree(root, cache=cache).files[1].endswith("a/z.JPEG")
    (root / "d" / "d_0000.JPEG").unlink()  # and a removal
    assert len(index_mod.index_tree(root, cache=cache).files) == 5


def test__a_recently_changed_tree_is_not_trusted_and_a_broken_cache_is_rebuilt(
        tmp_path: Path) -> None:
    root = tmp_path / "tree"
    write_tree(root, {"a": 1}, size=(8, 8))
    cache = tmp_path / "cache"
    index_mod.index_tree(root, cache=cache)
    assert not index_mod.index_tree(root, cache=cache).from_cache  # written < 2 s ago: racy
    _age(root)
    index_mod.index_tree(root, cache=cache)
    assert index_mod.index_tree(root, cache=cache).from_cache
    (cached,) = cache.glob("*.npz")
    cached.write_bytes(b"garbage")
    again = index_mod.index_tree(root, cache=cache)
    assert not again.from_cache and len(again.files) == 1
    assert not index_mod.index_tree(root, cache="off").from_cache


def test__symlinked_class_folders_as_imagenet100_scripts_make_them(imagenet_root: Path,
                                                                   tmp_path: Path) -> None:
    subset = tmp_path / "imagenet100"
    (subset / "train").mkdir(parents=True)
    for wnid in WNIDS[1:]:  # solo-learn's make_imagenet100.py symlinks train/<wnid>
        (subset / "train" / wnid).symlink_to(imagenet_root / "train" / wnid)
    fs = readers.imagenet(subset, "train")
    assert fs.classes == WNIDS[1:] and len(fs) == 6 and fs.labels.tolist() == [0] * 3 + [1] * 3
    assert all(Path(p).is_file() and str(subset) in p for p in fs.paths)

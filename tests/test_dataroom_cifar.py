"""CIFAR-10/100 python-version batches: exact format, restricted unpickling, bad input."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from dataroom.cifar import dump_py2, load_pickle, read_cifar, write_cifar
from dataroom.readers import DatasetError
from dataroom.synthetic_sets import labelled_images


def _sets(name: str, n_train: int = 20, n_test: int = 8) -> tuple[dict, dict]:
    k = 10 if name == "cifar10" else 100
    x_tr, y_tr = labelled_images(n_train, 32, k, 0)
    x_te, y_te = labelled_images(n_test, 32, k, 1)
    return {"train": x_tr, "test": x_te}, {"train": y_tr, "test": y_te}


@pytest.fixture(scope="module")
def cifar10_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict]:
    root = tmp_path_factory.mktemp("cifar10")
    images, labels = _sets("cifar10")
    write_cifar(root, "cifar10", images, labels, classes=[f"c{i}" for i in range(10)])
    return root, images, labels


def _torchvision(monkeypatch: pytest.MonkeyPatch) -> object:
    """torchvision's CIFAR readers with their md5 checks off (our files are not the originals)."""
    import torchvision.datasets.cifar as tv

    monkeypatch.setattr(tv, "check_integrity", lambda *a, **k: True)
    monkeypatch.setattr(tv.CIFAR10, "_check_integrity", lambda self: True)
    return tv


def test__written_files_are_python2_pickles_as_the_originals(cifar10_root) -> None:
    root, _, _ = cifar10_root
    raw = (root / "cifar-10-batches-py" / "data_batch_1").read_bytes()
    assert raw.startswith(b"\x80\x02}")  # protocol 2, a dict
    assert b"U\x04data" in raw and b"U\x06labels" in raw  # Python 2 str keys (SHORT_BINSTRING)
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in raw and b"cnumpy\ndtype\n" in raw
    with open(root / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        assert set(pickle.load(f, encoding="bytes")) == {b"batch_label", b"labels", b"data",
                                                          b"filenames"}
    assert sorted(p.name for p in (root / "cifar-10-batches-py").iterdir()) == [
        "batches.meta", "data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4",
        "data_batch_5", "test_batch"]


@pytest.mark.parametrize("split", ["train", "test"])
def test__cifar10_matches_written_pixels_and_torchvision(cifar10_root, split, monkeypatch) -> None:
    root, images, labels = cifar10_root
    got = read_cifar("cifar10", root, split)
    np.testing.assert_array_equal(got.images.numpy(), images[split])
    np.testing.assert_array_equal(got.labels, labels[split])
    assert got.classes == [f"c{i}" for i in range(10)]
    tv = _torchvision(monkeypatch)
    ref = tv.CIFAR10(str(root), train=split == "train", download=False)
    np.testing.assert_array_equal(got.images.numpy().transpose(0, 2, 3, 1), ref.data)  # HWC
    np.testing.assert_array_equal(got.labels, ref.targets)
    assert got.classes == ref.classes


def test__cifar100_fine_labels_and_torchvision(tmp_path, monkeypatch) -> None:
    images, labels = _sets("cifar100", 30, 10)
    write_cifar(tmp_path, "cifar100", images, labels)
    got = read_cifar("cifar100", tmp_path, "train")
    tv = _torchvision(monkeypatch)
    ref = tv.CIFAR100(str(tmp_path), train=True, download=False)
    np.testing.assert_array_equal(got.images.numpy().transpose(0, 2, 3, 1), ref.data)
    np.testing.assert_array_equal(got.labels, ref.targets)
    assert len(got.classes) == 100 and got.classes == ref.classes


def test__python3_pickles_with_bytes_keys_are_read(tmp_path) -> None:
    images, labels = _sets("cifar10", 10, 5)
    base = write_cifar(tmp_path, "cifar10", images, labels)
    body = {b"data": images["test"].reshape(5, -1), b"labels": [int(v) for v in labels["test"]],
            b"batch_label": b"testing batch 1 of 1", b"filenames": [b"x.png"] * 5}
    (base / "test_batch").write_bytes(pickle.dumps(body, protocol=4))
    np.testing.assert_array_equal(read_cifar("cifar10", tmp_path, "test").images.numpy(),
                                  images["test"])


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("where", ["top", "inside"])
def test__malicious_pickle_is_refused_and_nothing_runs(cifar10_root, tmp_path, where) -> None:
    root, images, labels = cifar10_root
    bad_root = tmp_path / "bad"
    base = write_cifar(bad_root, "cifar10", images, labels)
    marker = tmp_path / "pwned"
    payload = _Exploit(marker)
    obj = payload if where == "top" else {b"data": images["train"][:2].reshape(2, -1),
                                          b"labels": [0, 1], b"batch_label": payload}
    (base / "data_batch_2").write_bytes(pickle.dumps(obj, protocol=4))
    with pytest.raises(DatasetError, match=r"data_batch_2: refused to load global "
                                           r"'(posix|os)\.system'"):
        read_cifar("cifar10", bad_root, "train")
    assert not marker.exists()


@pytest.mark.parametrize("module, name", [("builtins", "eval"), ("subprocess", "Popen"),
                                          ("numpy", "load"), ("numpy.lib.npyio", "load"),
                                          ("copyreg", "_reconstructor")])
def test__any_other_global_is_refused(tmp_path, module, name) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"q\x00.")
    with pytest.raises(DatasetError, match=rf"refused to load global '{module}\.{name}'"):
        load_pickle(path)


def test__cifar100_files_given_for_cifar10(tmp_path) -> None:
    images, labels = _sets("cifar100", 10, 5)
    write_cifar(tmp_path, "cifar100", images, labels)
    with pytest.raises(DatasetError, match=r"holds cifar-100-python .*not cifar-10-batches-py"
                                           r".*Expected CIFAR-10, python version"):
        read_cifar("cifar10", tmp_path, "train")
    # the CIFAR-100 train file copied in as a CIFAR-10 batch
    base = write_cifar(tmp_path / "mixed", "cifar10", *_sets("cifar10", 10, 5))
    (base / "data_batch_1").write_bytes((tmp_path / "cifar-100-python" / "train").read_bytes())
    with pytest.raises(DatasetError, match=r"data_batch_1: no 'labels' key .*\(a CIFAR-100 "
                                           r"file\); cifar10 expects CIFAR-10"):
        read_cifar("cifar10", tmp_path / "mixed", "train")


def test__missing_batch_wrong_shapes_and_labels(cifar10_root, tmp_path) -> None:
    _, images, labels = cifar10_root
    base = write_cifar(tmp_path, "cifar10", images, labels)
    (base / "data_batch_3").unlink()
    with pytest.raises(DatasetError, match=r"data_batch_3: missing\. Expected CIFAR-10.*"
                                           r"data_batch_1\.\.5, test_batch, batches\.meta"):
        read_cifar("cifar10", tmp_path, "train")
    dump_py2({b"data": np.zeros((4, 1024), np.uint8), b"labels": [0, 1, 2, 3]},
             base / "test_batch")
    with pytest.raises(DatasetError, match=r"test_batch: 'data' is uint8 \(4, 1024\), expected "
                                           r"uint8 N×3072"):
        read_cifar("cifar10", tmp_path, "test")
    dump_py2({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, base / "test_batch")
    with pytest.raises(DatasetError, match=r"labels outside 0\.\.9 \(found 0\.\.10\)"):
        read_cifar("cifar10", tmp_path, "test")
    dump_py2({b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 1]}, base / "test_batch")
    with pytest.raises(DatasetError, match=r"3 images but 2 labels"):
        read_cifar("cifar10", tmp_path, "test")
    full = (tmp_path / "cifar-10-batches-py" / "data_batch_1").read_bytes()
    (base / "test_batch").write_bytes(full[: len(full) // 2])
    with pytest.raises(DatasetError, match=r"test_batch: .*truncated"):
        read_cifar("cifar10", tmp_path, "test")
    dump_py2({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}, base / "test_batch")
    dump_py2({b"label_names": [b"a", b"b"]}, base / "batches.meta")
    with pytest.raises(DatasetError, match=r"batches\.meta: 2 'label_names' \(expected 10\)"):
        read_cifar("cifar10", tmp_path, "test")


def test__where_the_files_are_found(cifar10_root, tmp_path, monkeypatch) -> None:
    root, images, _ = cifar10_root
    direct = read_cifar("cifar10", root / "cifar-10-batches-py", "test")  # the folder itself
    np.testing.assert_array_equal(direct.images.numpy(), images["test"])
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SSLBENCH_CIFAR10", str(root))
    assert len(read_cifar("cifar10", "", "test")) == len(images["test"])
    monkeypatch.setenv("SSLBENCH_CIFAR10", str(tmp_path / "nowhere"))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(DatasetError, match=r"cifar10: no cifar-10-batches-py folder in .*nowhere"
                                           r".*set \$SSLBENCH_CIFAR10"):
        read_cifar("cifar10", "", "train")
    with pytest.raises(DatasetError, match=r"no 'val' split; valid: train, test"):
        read_cifar("cifar10", root, "val")


def test__fingerprint_follows_the_content(cifar10_root, tmp_path) -> None:
    root, images, labels = cifar10_root
    a = read_cifar("cifar10", root, "test")
    assert a.fingerprint == read_cifar("cifar10", root, "test").fingerprint
    changed = {k: v.copy() for k, v in images.items()}
    changed["test"][0, 0, 0, 0] ^= 1
    write_cifar(tmp_path, "cifar10", changed, labels, classes=[f"c{i}" for i in range(10)])
    assert read_cifar("cifar10", tmp_path, "test").fingerprint != a.fingerprint

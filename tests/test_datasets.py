"""The IDX reader/writer and the Fashion-MNIST factory, on hand-written tiny files."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.datasets import (
    DATASETS,
    FASHION_MNIST_CLASSES,
    ImageSet,
    channel_stats,
    fashion_mnist,
    read_idx,
    write_idx,
)

REAL_DIR = Path("/usr/share/datasets/fashion-mnist")
TRAIN_LABELS = [0, 3, 9, 1, 2]
TEST_LABELS = [7, 8, 5]


def known_images(n: int, shift: int) -> np.ndarray:
    """Image i has pixel (r, c) = (7·i + 3·r + c + shift) mod 256: every pixel is checkable."""
    i, r, c = np.meshgrid(np.arange(n), np.arange(28), np.arange(28), indexing="ij")
    return ((7 * i + 3 * r + c + shift) % 256).astype(np.uint8)


def write_raw_idx(path: Path, magic: int, dims: tuple[int, ...], data: bytes) -> None:
    """The IDX bytes spelled out by hand (independent of ``write_idx``)."""
    body = struct.pack(f">I{len(dims)}I", magic, *dims) + data
    path.write_bytes(gzip.compress(body) if path.suffix == ".gz" else body)


def make_fashion_dir(directory: Path, ext: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for prefix, labels, shift in (("train", TRAIN_LABELS, 0), ("t10k", TEST_LABELS, 100)):
        n = len(labels)
        images = known_images(n, shift)
        write_raw_idx(
            directory / f"{prefix}-images-idx3-ubyte{ext}", 0x803, (n, 28, 28), images.tobytes()
        )
        write_raw_idx(directory / f"{prefix}-labels-idx1-ubyte{ext}", 0x801, (n,), bytes(labels))
    return directory


@pytest.mark.parametrize("ext", ["", ".gz"])
def test__reads_hand_written_idx(tmp_path: Path, ext: str) -> None:
    data = fashion_mnist(str(make_fashion_dir(tmp_path, ext)), "train")
    assert isinstance(data, ImageSet) and len(data) == 5
    assert data.images.dtype == torch.uint8 and data.images.shape == (5, 1, 28, 28)
    np.testing.assert_array_equal(data.images[:, 0].numpy(), known_images(5, 0))
    assert data.labels.dtype == torch.int64 and data.labels.tolist() == TRAIN_LABELS
    assert data.classes == FASHION_MNIST_CLASSES and len(data.classes) == 10
    pixels = known_images(5, 0) / 255.0
    assert data.mean == pytest.approx((pixels.mean(),), abs=1e-12)
    assert data.std == pytest.approx((pixels.std(),), abs=1e-12)


def test__test_split_uses_train_statistics(tmp_path: Path) -> None:
    root = str(make_fashion_dir(tmp_path, ".gz"))
    train, test = fashion_mnist(root, "train"), fashion_mnist(root, "test")
    assert test.labels.tolist() == TEST_LABELS
    np.testing.assert_array_equal(test.images[:, 0].numpy(), known_images(3, 100))
    assert (test.mean, test.std) == (train.mean, train.std)


def test__torchvision_layout_and_registry(tmp_path: Path) -> None:
    make_fashion_dir(tmp_path / "FashionMNIST" / "raw", "")
    data = DATASETS.build("fashion_mnist", root=str(tmp_path), split="test")
    assert data.labels.tolist() == TEST_LABELS


def test__env_var_is_searched_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSLBENCH_FASHION_MNIST", str(make_fashion_dir(tmp_path, ".gz")))
    assert fashion_mnist().labels.tolist() == TRAIN_LABELS


def test__missing_directory_names_the_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as err:
        fashion_mnist(str(tmp_path / "nowhere"), "train")
    message = str(err.value)
    for expected in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "nowhere"):
        assert expected in message
    assert "apt-get install dataset-fashion-mnist" in message and "data.root=" in message


def test__wrong_magic_raises(tmp_path: Path) -> None:
    make_fashion_dir(tmp_path, "")
    bad = tmp_path / "train-images-idx3-ubyte"
    write_raw_idx(bad, 0x12345678, (5, 28, 28), known_images(5, 0).tobytes())
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.*0x12345678.*0x00000803"):
        fashion_mnist(str(tmp_path), "train")


def test__labels_file_in_place_of_images_raises(tmp_path: Path) -> None:
    make_fashion_dir(tmp_path, "")
    write_raw_idx(tmp_path / "train-images-idx3-ubyte", 0x801, (5,), bytes(5))
    with pytest.raises(ValueError, match=r"expected uint8 images N×28×28"):
        fashion_mnist(str(tmp_path), "train")


@pytest.mark.parametrize("ext", ["", ".gz"])
def test__truncated_file_raises(tmp_path: Path, ext: str) -> None:
    make_fashion_dir(tmp_path, ext)
    short = known_images(5, 0).tobytes()[:-10]
    write_raw_idx(tmp_path / f"train-images-idx3-ubyte{ext}", 0x803, (5, 28, 28), short)
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.*3920 data bytes.*truncated"):
        fashion_mnist(str(tmp_path), "train")


def test__corrupt_gzip_raises(tmp_path: Path) -> None:
    path = tmp_path / "x-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + bytes(100))[:-12])
    with pytest.raises(ValueError, match="x-idx1-ubyte.gz"):
        read_idx(path)


def test__label_count_mismatch_raises(tmp_path: Path) -> None:
    make_fashion_dir(tmp_path, "")
    write_raw_idx(tmp_path / "train-labels-idx1-ubyte", 0x801, (4,), bytes(4))
    with pytest.raises(ValueError, match="expected 5 uint8 labels"):
        fashion_mnist(str(tmp_path), "train")


def test__unknown_split_raises(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="split"):
        fashion_mnist(str(tmp_path), "val")


@pytest.mark.parametrize("ext", ["", ".gz"])
@pytest.mark.parametrize(
    "array",
    [
        known_images(3, 5),
        np.arange(-6, 6, dtype=np.int32).reshape(3, 4),
        np.linspace(-1, 1, 10, dtype=np.float32),
        np.arange(7, dtype=np.int8),
    ],
)
def test__write_idx_round_trip(tmp_path: Path, ext: str, array: np.ndarray) -> None:
    path = tmp_path / f"a-idx{ext}"
    write_idx(path, array)
    back = read_idx(path)
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test__write_idx_bytes_are_exact(tmp_path: Path) -> None:
    images = known_images(2, 9)
    write_idx(tmp_path / "img", torch.from_numpy(images))
    expected = struct.pack(">IIII", 0x803, 2, 28, 28) + images.tobytes()
    assert (tmp_path / "img").read_bytes() == expected
    write_idx(tmp_path / "lab", np.array([4, 2], dtype=np.uint8))
    assert (tmp_path / "lab").read_bytes() == struct.pack(">II", 0x801, 2) + b"\x04\x02"


def test__write_idx_rejects_unsupported_dtype(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="int64"):
        write_idx(tmp_path / "x", np.zeros(3, dtype=np.int64))


def test__image_set_subset_and_checks() -> None:
    images = torch.from_numpy(known_images(5, 0)).unsqueeze(1)
    data = ImageSet(images, torch.tensor(TRAIN_LABELS), ["a"] * 10, (0.5,), (0.25,))
    part = data.subset(2)
    assert len(part) == 2 and part.labels.tolist() == TRAIN_LABELS[:2]
    assert torch.equal(part.images, images[:2]) and part.mean == (0.5,)
    with pytest.raises(ValueError):
        data.subset(6)
    with pytest.raises(ValueError, match="uint8"):
        ImageSet(images.float(), data.labels, data.classes, (0.5,), (0.25,))
    with pytest.raises(ValueError, match="mean/std"):
        ImageSet(images, data.labels, data.classes, (0.5, 0.5), (0.25,))


def test__channel_stats_per_channel() -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (4, 3, 5, 6), generator=g, dtype=torch.uint8)
    mean, std = channel_stats(images)
    pixels = images.double() / 255
    assert mean == pytest.approx(pixels.mean(dim=(0, 2, 3)).tolist(), abs=1e-12)
    assert std == pytest.approx(pixels.std(dim=(0, 2, 3), correction=0).tolist(), abs=1e-12)


@pytest.mark.skipif(not REAL_DIR.is_dir(), reason="dataset-fashion-mnist not installed")
def test__real_train_split() -> None:
    data = fashion_mnist(str(REAL_DIR), "train")
    assert len(data) == 60000 and data.images.shape[1:] == (1, 28, 28)
    assert len(data.classes) == 10
    assert torch.bincount(data.labels).tolist() == [6000] * 10
    assert data.mean[0] == pytest.approx(0.2860, abs=1e-3)
    assert data.std[0] == pytest.approx(0.3530, abs=1e-3)

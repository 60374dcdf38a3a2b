"""In-memory image datasets, registered by name, and an IDX (MNIST-format) reader/writer.

The pretraining loop slices batches straight out of a uint8 tensor (no DataLoader
workers), so a dataset is an :class:`ImageSet`: all images, labels, class names and
the per-channel statistics used to normalise after augmentation.

The IDX format (LeCun et al., http://yann.lecun.com/exdb/mnist/): a big-endian
uint32 magic ``0x0000TTDD`` (TT = element type, DD = number of dimensions), DD
big-endian uint32 sizes, then the elements in C order, big-endian.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from backbones.registry import Registry

DATASETS: Registry[Callable[..., ImageSet]] = Registry("dataset")

# IDX element-type code -> big-endian numpy dtype.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_FASHION_ENV = "SSLBENCH_FASHION_MNIST"
_FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian dataset-fashion-mnist
_FASHION_CACHE_DIR = Path("~/.cache/sslbench/fashion-mnist")


@dataclass
class ImageSet:
    """A labelled image dataset held in memory.

    Attributes:
        images: uint8 ``(N, C, H, W)``; C = 1 for grayscale.
        labels: int64 ``(N,)`` class indices into ``classes``.
        classes: Class names.
        mean: Per-channel mean in [0, 1] pixel units, for normalisation after augmentation.
        std: Per-channel standard deviation in [0, 1] pixel units.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(
                f"images must be uint8 (N, C, H, W), got {self.images.dtype} "
                f"{tuple(self.images.shape)}"
            )
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"labels must have shape ({self.images.shape[0]},), got {tuple(self.labels.shape)}"
            )
        self.labels = self.labels.long()
        channels = self.images.shape[1]
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(f"mean/std need {channels} value(s), got {self.mean} / {self.std}")

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, n: int) -> ImageSet:
        """The first ``n`` samples (a view, no copy); mean/std stay those of the full set."""
        if not 0 <= n <= len(self):
            raise ValueError(f"subset size {n} is outside [0, {len(self)}]")
        return ImageSet(self.images[:n], self.labels[:n], list(self.classes), self.mean, self.std)


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and (population) std of uint8 ``(N, C, H, W)`` images, in [0, 1].

    Args:
        images: uint8 images.

    Returns:
        ``(mean, std)``, one value per channel.
    """
    levels = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for c in range(images.shape[1]):
        # A 256-bin histogram is exact and avoids a float copy of the whole set.
        counts = torch.bincount(images[:, c].reshape(-1).cpu(), minlength=256).double()
        counts /= counts.sum()
        mean = float((counts * levels).sum())
        means.append(mean)
        stds.append(float((counts * (levels - mean) ** 2).sum()) ** 0.5)
    return tuple(means), tuple(stds)


# ----------------------------------------------------------------------------- IDX


def _read_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix != ".gz":
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(f"{path}: corrupt or truncated gzip file ({e})") from None


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (gzipped when the name ends in ``.gz``) into a native-endian array.

    Args:
        path: The file.

    Returns:
        A writable array with the shape and element type the header declares.

    Raises:
        ValueError: The header is not IDX, or the data size does not match it.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise ValueError(f"{path}: {len(raw)} bytes, too short for an IDX header (4-byte magic)")
    (magic,) = struct.unpack(">I", raw[:4])
    code, ndim = (magic >> 8) & 0xFF, magic & 0xFF
    if magic >> 16 != 0 or code not in _IDX_DTYPES or ndim == 0:
        raise ValueError(
            f"{path}: magic 0x{magic:08x} is not an IDX magic "
            "(expected 0x0000TTDD, e.g. 0x00000803 for uint8 images, 0x00000801 for labels)"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated header (need {header} bytes, file has {len(raw)})")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = _IDX_DTYPES[code]
    count = int(np.prod(dims, dtype=np.int64))
    if len(raw) - header != count * dtype.itemsize:
        raise ValueError(
            f"{path}: header declares shape {dims} ({count * dtype.itemsize} data bytes) "
            f"but the file holds {len(raw) - header} data bytes (truncated or malformed)"
        )
    array = np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="))  # copies: writable, native byte order


def write_idx(path: str | Path, array: np.ndarray | torch.Tensor) -> None:
    """Write ``array`` as an IDX file, gzipped when ``path`` ends in ``.gz``.

    Args:
        path: Destination; parent folders are created.
        array: uint8, int8, int16, int32, float32 or float64 data of any rank ≥ 1.
    """
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    array = np.asarray(array)
    codes = {dt.newbyteorder("=").str: code for code, dt in _IDX_DTYPES.items()}
    key = array.dtype.newbyteorder("=").str
    if key not in codes or array.ndim == 0:
        raise ValueError(f"IDX cannot hold a {array.ndim}-d {array.dtype} array")
    code = codes[key]
    header = struct.pack(">I", (code << 8) | array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    body = header + np.ascontiguousarray(array, dtype=_IDX_DTYPES[code]).tobytes()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # mtime=0 makes the .gz bytes reproducible.
    path.write_bytes(gzip.compress(body, mtime=0) if path.suffix == ".gz" else body)


# ----------------------------------------------------------------------------- Fashion-MNIST


def _find(directory: Path, name: str) -> Path | None:
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _locate(bases: list[Path], names: tuple[str, ...]) -> Path | None:
    """The first folder (a base, or torchvision's ``FashionMNIST/raw`` in it) with all names."""
    for base in bases:
        for directory in (base, base / "FashionMNIST" / "raw"):
            if all(_find(directory, n) for n in names):
                return directory
    return None


def _download(cache: Path) -> str:
    """Last resort: torchvision's downloader into ``cache``; returns an error text or ""."""
    try:
        from torchvision.datasets import FashionMNIST

        FashionMNIST(str(cache), train=True, download=True)
    except Exception as e:  # noqa: BLE001 (network failures come in many types)
        return f"{type(e).__name__}: {e}"
    return ""


def _fashion_dir(root: str, names: tuple[str, ...]) -> Path:
    env = os.environ.get(_FASHION_ENV, "")
    if root:
        bases = [Path(root).expanduser()]
    else:
        bases = [Path(env).expanduser()] if env else []
        bases += [_FASHION_SYSTEM_DIR, _FASHION_CACHE_DIR.expanduser()]
    found = _locate(bases, names)
    download_error = ""
    if found is None and not root:
        download_error = _download(bases[-1])
        found = _locate(bases[-1:], names)
    if found is not None:
        return found
    searched = ", ".join(str(b) for b in bases)
    if not root and not env:
        searched = f"${_FASHION_ENV} (unset), {searched}"
    raise FileNotFoundError(
        f"Fashion-MNIST files {' and '.join(names)} (raw or .gz) not found in any of: {searched} "
        "(each also as <dir>/FashionMNIST/raw)"
        + (f"; the torchvision download failed ({download_error})" if download_error else "")
        + ". Run `apt-get install dataset-fashion-mnist` (installs them into "
        f"{_FASHION_SYSTEM_DIR}) or pass data.root=DIR."
    )


def _read_fashion_images(path: Path) -> np.ndarray:
    images = read_idx(path)
    if images.dtype != np.uint8 or images.shape[1:] != (28, 28):
        raise ValueError(
            f"{path}: expected uint8 images N×28×28 (magic 0x00000803), "
            f"got {images.dtype} {images.shape}"
        )
    return images


@DATASETS.register("fashion_mnist")
def fashion_mnist(root: str = "", split: str = "train") -> ImageSet:
    """Fashion-MNIST (Xiao, Rasul, Vollgraf 2017, https://arxiv.org/abs/1708.07747).

    60,000 train / 10,000 test grayscale 28×28 images of 10 clothing classes.

    Args:
        root: A folder holding the IDX files (raw or ``.gz``), or torchvision's layout
            (``<root>/FashionMNIST/raw``). ``""`` searches ``$SSLBENCH_FASHION_MNIST``,
            ``/usr/share/datasets/fashion-mnist``, ``~/.cache/sslbench/fashion-mnist``, and
            finally tries torchvision's download into that cache.
        split: ``"train"`` or ``"test"``.

    Returns:
        The split. mean/std are the exact statistics of the *train* images of the same
        folder, so that both splits are normalised alike (a folder without train images
        falls back to the split's own statistics).

    Raises:
        FileNotFoundError: No folder holds the split's files.
        ValueError: A file is not the IDX data it should be.
    """
    if split not in _FASHION_FILES:
        raise ValueError(f"unknown Fashion-MNIST split '{split}'; use 'train' or 'test'")
    image_name, label_name = _FASHION_FILES[split]
    directory = _fashion_dir(root, (image_name, label_name))
    image_path, label_path = _find(directory, image_name), _find(directory, label_name)
    assert image_path is not None and label_path is not None  # _fashion_dir checked
    images = _read_fashion_images(image_path)
    labels = read_idx(label_path)
    if labels.dtype != np.uint8 or labels.shape != images.shape[:1]:
        raise ValueError(
            f"{label_path}: expected {images.shape[0]} uint8 labels (magic 0x00000801), "
            f"got {labels.dtype} {labels.shape}"
        )
    if labels.size and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise ValueError(f"{label_path}: label {labels.max()} is not a class index 0..9")
    images_t = torch.from_numpy(images).unsqueeze(1)  # (N, 1, 28, 28)
    stats_source = images_t
    train_path = _find(directory, _FASHION_FILES["train"][0])
    if split != "train" and train_path is not None:
        stats_source = torch.from_numpy(_read_fashion_images(train_path)).unsqueeze(1)
    mean, std = channel_stats(stats_source)
    return ImageSet(
        images_t, torch.from_numpy(labels).long(), list(FASHION_MNIST_CLASSES), mean, std
    )

"""IDX (MNIST-format) files, and where the Fashion-MNIST ones are found.

The IDX format (LeCun et al., http://yann.lecun.com/exdb/mnist/): a big-endian
uint32 magic ``0x0000TTDD`` (TT = element type, DD = number of dimensions), DD
big-endian uint32 sizes, then the elements in C order, big-endian.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

# IDX element-type code -> big-endian numpy dtype.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_FASHION_ENV = "SSLBENCH_FASHION_MNIST"
_FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian dataset-fashion-mnist
_FASHION_CACHE_DIR = Path("~/.cache/sslbench/fashion-mnist")


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


# ----------------------------------------------------------------------------- Fashion-MNIST files


def find_file(directory: Path, name: str) -> Path | None:
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _locate(bases: list[Path], names: tuple[str, ...]) -> Path | None:
    """The first folder (a base, or torchvision's ``FashionMNIST/raw`` in it) with all names."""
    for base in bases:
        for directory in (base, base / "FashionMNIST" / "raw"):
            if all(find_file(directory, n) for n in names):
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


def fashion_dir(root: str, names: tuple[str, ...]) -> Path:
    """The folder holding ``names``: ``root``, else $SSLBENCH_FASHION_MNIST, Debian's, the cache."""
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

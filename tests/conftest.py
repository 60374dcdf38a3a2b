"""Shared fixtures: a tiny Fashion-MNIST written in the real IDX layout."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.slurm_fixtures import slurm_cluster  # noqa: F401  (session fixture)
from trainer.datasets import write_idx

# train.precision=auto / channels_last=auto resolve to fp32 on every CPU in the tests (child
# processes too), whatever bf16 units the CI machine has: tests that compare exact numbers
# stay exact. Tests of the bf16 path name it (train.precision=bf16) or fake the CPU.
os.environ["SSLBENCH_CPU_BF16"] = "0"


@pytest.fixture(scope="session", autouse=True)
def _index_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """File indexes of test trees go to a temporary folder, not ~/.cache (shared machine)."""
    before = os.environ.get("SSLBENCH_INDEX_CACHE")
    os.environ["SSLBENCH_INDEX_CACHE"] = str(tmp_path_factory.mktemp("index-cache"))
    yield
    if before is None:
        os.environ.pop("SSLBENCH_INDEX_CACHE", None)
    else:
        os.environ["SSLBENCH_INDEX_CACHE"] = before


def make_fashion_like(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable 28×28 images: each class is a bar at its own place and angle, plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    yy, xx = np.mgrid[0:28, 0:28]
    images = np.empty((n, 28, 28), dtype=np.uint8)
    for i, c in enumerate(labels):
        angle = np.pi * c / 10
        d = np.abs((xx - 14) * np.sin(angle) - (yy - 14) * np.cos(angle))
        img = 200 * (d < 2.5 + (c % 3)) + rng.normal(30, 20, (28, 28))
        images[i] = np.clip(img, 0, 255).astype(np.uint8)
    return images, labels.astype(np.uint8)


@pytest.fixture(scope="session")
def fmnist_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the four Fashion-MNIST IDX files (256 train, 128 test images)."""
    root = tmp_path_factory.mktemp("fashion-mnist")
    for prefix, n, seed in (("train", 256, 0), ("t10k", 128, 1)):
        images, labels = make_fashion_like(n, seed)
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return root


@pytest.fixture(scope="session")
def imagenet_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small ImageNet-1k folder in the real layout (the 100 ImageNet-100 wnids; 41 tiny
    photograph-like JPEGs per class in train/, 4100 in all, so the paper specs' largest
    global batch (4096) fits; one per class in val/), for planning the paper specs."""
    from dataroom.imagenet100 import IMAGENET100_LIST
    from dataroom.synthetic import write_tree

    root = tmp_path_factory.mktemp("imagenet")
    wnids = IMAGENET100_LIST.read_text().split()[:100]
    write_tree(root, {**{f"train/{w}": 41 for w in wnids}, **{f"val/{w}": 1 for w in wnids}},
               size=(12, 16))
    return root


@pytest.fixture
def imagenet_env(imagenet_tree: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``$SSLBENCH_IMAGENET`` set to :func:`imagenet_tree` (what the paper specs read)."""
    monkeypatch.setenv("SSLBENCH_IMAGENET", str(imagenet_tree))
    return imagenet_tree


@pytest.fixture(scope="module")
def jpeg_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``train/<class>/`` 4 × 16 and ``val/<class>/`` 4 × 4 photograph-like JPEGs (40×48)."""
    from dataroom.synthetic import write_tree

    root = tmp_path_factory.mktemp("jpegs")
    classes = ("apple", "boat", "cloud", "dog")  # tests.test_trainer_files.CLASSES
    write_tree(root, {**{f"train/{c}": 16 for c in classes}, **{f"val/{c}": 4 for c in classes}},
               size=(40, 48))
    return root

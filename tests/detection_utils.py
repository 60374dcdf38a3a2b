"""Fixtures shared by the detection tests (torchvision and Detectron2 backends)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from eval.detection.mini import ensure_mini_coco


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny convolutions: one intra-op thread is several times faster on 2 busy cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_coco(root: Path, fmnist_root: Path, train: int, val: int) -> Path:
    """A mini COCO of ``train``/``val`` 64-px Fashion-MNIST mosaics (2–4 items each) in ``root``."""
    params = {"train": train, "val": val, "canvas": 64, "items": [2, 4], "scale": [0.75, 1.25],
              "threshold": 24, "max_overlap": 0.25, "seed": 0}
    ensure_mini_coco(root, fashion_root=str(fmnist_root), params=params)
    return root

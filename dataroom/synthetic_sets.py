"""Small labelled image sets in the exact CIFAR / STL-10 file formats (tests, ``make cifar-demo``).

Each image is a photograph-like background (:func:`dataroom.synthetic.natural_image`) with
one object whose shape and colour depend on the class: an oriented bar (angle π·c/K) in a
class colour, at a random place, length and thickness. A network has to find and read the
object, as on a real photograph; a pixel average cannot.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dataroom.cifar import write_cifar
from dataroom.stl10 import write_stl10
from dataroom.synthetic import natural_image


def class_colours(num_classes: int) -> np.ndarray:
    """``(K, 3)`` well-separated RGB colours (hues around the circle, alternating value)."""
    hue = np.arange(num_classes) / num_classes * 2 * np.pi
    value = np.where(np.arange(num_classes) % 2, 150.0, 235.0)
    rgb = [0.5 + 0.5 * np.cos(hue - shift) for shift in (0.0, 2.1, 4.2)]
    return (np.stack(rgb, 1) * value[:, None]).clip(0, 255)


def labelled_images(n: int, side: int, num_classes: int, seed: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """``n`` uint8 ``(n, 3, side, side)`` images and their labels (balanced, shuffled)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % num_classes
    rng.shuffle(labels)
    colours = class_colours(num_classes)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float64)
    out = np.empty((n, 3, side, side), dtype=np.uint8)
    for i, c in enumerate(labels):
        img = natural_image(side, side, int(rng.integers(1 << 30))).astype(np.float64)
        angle = np.pi * c / num_classes + rng.normal(0, 0.08)
        cy, cx = rng.uniform(0.3, 0.7, size=2) * side
        along = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
        across = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
        length, width = rng.uniform(0.3, 0.45) * side, rng.uniform(0.06, 0.12) * side
        mask = (np.abs(along) < length) & (np.abs(across) < width)
        shade = rng.uniform(0.85, 1.15)
        img[mask] = 0.15 * img[mask] + 0.85 * colours[c] * shade
        out[i] = np.clip(img, 0, 255).astype(np.uint8).transpose(2, 0, 1)
    return out, labels.astype(np.int64)


def write_tiny_cifar(root: str | Path, name: str = "cifar10", train: int = 500,
                     test: int = 200, seed: int = 0) -> Path:
    """A CIFAR-10/100-format set of ``train`` + ``test`` 32×32 images under ``root``.

    Returns:
        ``root`` (what ``data.root`` / ``$SSLBENCH_CIFAR10`` should name).
    """
    k = 10 if name == "cifar10" else 100
    x_tr, y_tr = labelled_images(train, 32, k, seed)
    x_te, y_te = labelled_images(test, 32, k, seed + 1_000_003)
    write_cifar(root, name, {"train": x_tr, "test": x_te}, {"train": y_tr, "test": y_te})
    return Path(root)


def write_tiny_stl10(root: str | Path, train: int = 50, test: int = 40, unlabeled: int = 60,
                     seed: int = 0) -> Path:
    """An STL-10-format set (96×96) with the given split sizes under ``root``."""
    x_tr, y_tr = labelled_images(train, 96, 10, seed)
    x_te, y_te = labelled_images(test, 96, 10, seed + 1)
    x_un, _ = labelled_images(unlabeled, 96, 10, seed + 2)
    write_stl10(root, {"train": x_tr, "test": x_te, "unlabeled": x_un},
                {"train": y_tr, "test": y_te})
    return Path(root)

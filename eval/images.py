"""Decoding image files into uint8 batches, skipping corrupt files with a count.

Files are decoded by ``dataroom.decode.load_rgb`` (by content, any mode to RGB: the one
decoder of the project). Transforms run on PIL images in the loader workers and return
uint8 ``(3, crop, crop)``; normalisation happens on the device
(``eval.features.normalize_images``), so one loader serves every backbone.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms import functional as TF

from dataroom.decode import DECODE_ERRORS, DecodeError, load_rgb
from dataroom.paths import PathTable

log = logging.getLogger("sslbench.eval")
__all__ = ["DECODE_ERRORS", "EvalTransform", "ImageFiles", "TrainTransform", "iterate_images",
           "warn_corrupt"]


@dataclass(frozen=True)
class EvalTransform:
    """Deterministic test-time transform.

    Attributes:
        resize: Shorter side after resizing (bilinear); 0 skips this resize.
        crop: Output side.
        mode: ``"center_crop"`` (ImageNet/Places/iNat/kNN: Resize 256 → CenterCrop 224) or
            ``"squash"`` (VOC07 SVM: Resize 256 → Resize (224, 224), no crop).
    """

    resize: int
    crop: int
    mode: str = "center_crop"

    def __call__(self, img: Image.Image) -> Tensor:
        """PIL RGB image → uint8 ``(3, crop, crop)``."""
        # NOTE: bilinear, as VICReg/Barlow evaluate.py (torchvision's default); DINO's kNN
        # uses bicubic. The difference is far below the run-to-run noise.
        if self.resize:
            img = TF.resize(img, self.resize, InterpolationMode.BILINEAR, antialias=True)
        if self.mode == "squash":
            img = TF.resize(img, [self.crop, self.crop], InterpolationMode.BILINEAR, antialias=True)
        elif self.mode == "center_crop":
            img = TF.center_crop(img, self.crop)
        else:
            raise ValueError(f"unknown transform mode '{self.mode}'")
        return TF.pil_to_tensor(img)

    def describe(self) -> dict[str, object]:
        """JSON-able description (part of the feature-cache key)."""
        return {"resize": self.resize, "crop": self.crop, "mode": self.mode, "interp": "bilinear"}


@dataclass(frozen=True)
class TrainTransform:
    """RandomResizedCrop (torchvision's default scale (0.08, 1)) + horizontal flip.

    Attributes:
        crop: Output side.
        scale: Area range of the random crop.
    """

    crop: int
    scale: tuple[float, float] = (0.08, 1.0)

    def __call__(self, img: Image.Image) -> Tensor:
        """PIL RGB image → augmented uint8 ``(3, crop, crop)``."""
        tf = v2.Compose([v2.RandomResizedCrop(self.crop, scale=self.scale, antialias=True),
                         v2.RandomHorizontalFlip()])
        return TF.pil_to_tensor(tf(img))


class ImageFiles(Dataset):
    """``(image, index, ok)`` for a list of files; a file that cannot be decoded gives
    ``ok=False`` and a blank image instead of an exception.

    Args:
        paths: Image files.
        transform: PIL → uint8 ``(3, crop, crop)``.
        crop: Side of the blank image returned for corrupt files.
    """

    def __init__(self, paths: Sequence[str], transform: Callable[[Image.Image], Tensor],
                 crop: int) -> None:
        # A PathTable stays one numpy buffer (no per-worker copy-on-access of str objects).
        self.paths = paths if isinstance(paths, PathTable) else list(paths)
        self.transform, self.crop = transform, crop

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Tensor, int, bool]:
        try:
            img = load_rgb(self.paths[i])
        except DecodeError:
            return torch.zeros(3, self.crop, self.crop, dtype=torch.uint8), i, False
        try:
            return self.transform(img), i, True
        except DECODE_ERRORS:
            return torch.zeros(3, self.crop, self.crop, dtype=torch.uint8), i, False


def iterate_images(
    paths: Sequence[str], transform: Callable[[Image.Image], Tensor], crop: int, *,
    batch_size: int, num_workers: int, shuffle: bool = False, seed: int = 0,
    drop_last: bool = False,
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Batches ``(uint8 images, indices, ok mask)`` from a DataLoader."""
    g = torch.Generator().manual_seed(seed)
    loader = DataLoader(ImageFiles(paths, transform, crop), batch_size=batch_size,
                        shuffle=shuffle, num_workers=num_workers, generator=g,
                        drop_last=drop_last, persistent_workers=False,
                        pin_memory=torch.cuda.is_available())
    yield from loader


def warn_corrupt(name: str, num_bad: int, total: int) -> None:
    """Log and warn once about skipped files."""
    if num_bad:
        msg = f"{name}: skipped {num_bad} of {total} images that could not be decoded"
        log.warning(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=2)

"""Crop geometry as a pure function of (seed, epoch, image index, view index, image size).

Every random number a sample needs is ``splitmix64`` of a counter: the key
``mix(mix(mix(mix(seed) ^ epoch) ^ index) ^ (stream << 32 | view))`` starts a splitmix64
sequence whose k-th output is the k-th uniform. No generator state is carried between
samples, so the crop and flip of image i, view v, epoch e are the same whatever the batch
position, the number of loader workers or of ranks, and after a resume. Everything is
vectorised over a batch with numpy ``uint64`` arithmetic (wrapping, as splitmix64 wants).

The RandomResizedCrop arithmetic itself (:func:`rrc_boxes`) is shared with
``trainer.augment.sample_crop_boxes``, which feeds it uniforms from a torch generator.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_MASK64 = (1 << 64) - 1
ATTEMPTS = 10  # torchvision's RandomResizedCrop.get_params
UNIFORMS_PER_VIEW = 2 * ATTEMPTS + 3  # area ×10, log-aspect ×10, top, left, flip
STREAM_CROP, STREAM_SUBSTITUTE = 0, 1


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser of ``x + golden`` (Steele, Lea, Flood 2014), elementwise."""
    with np.errstate(over="ignore"):
        z = np.asarray(x, dtype=np.uint64) + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def sample_keys(seed: int, epoch: int, indices: np.ndarray | Sequence[int], view: int,
                stream: int = STREAM_CROP) -> np.ndarray:
    """uint64 key of each (seed, epoch, index, view, stream)."""
    idx = np.asarray(indices, dtype=np.int64).astype(np.uint64)
    h = splitmix64(np.full(idx.shape, seed & _MASK64, dtype=np.uint64))
    h = splitmix64(h ^ np.uint64(epoch & _MASK64))
    h = splitmix64(h ^ idx)
    return splitmix64(h ^ np.uint64(((stream & 0xFFFFFFFF) << 32) | (view & 0xFFFFFFFF)))


def uniforms(keys: np.ndarray, count: int) -> np.ndarray:
    """float64 ``(len(keys), count)`` uniforms in [0, 1): the splitmix64 sequence of each key."""
    with np.errstate(over="ignore"):
        k = np.arange(1, count + 1, dtype=np.uint64) * _GOLDEN
        bits = splitmix64(np.asarray(keys, dtype=np.uint64)[:, None] + k[None, :] - _GOLDEN)
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def rrc_boxes(u_area: Tensor, u_aspect: Tensor, u_pos: Tensor, height: int | Tensor,
              width: int | Tensor, scale: tuple[float, float],
              ratio: tuple[float, float]) -> Tensor:
    """torchvision's RandomResizedCrop boxes from given uniforms, its attempts vectorised.

    For each row: attempt k takes area ``U(scale)·H·W`` and aspect ``exp(U(log ratio))``,
    rounds width and height, and succeeds when both fit; the first success is placed at
    ``floor(u·(H − h + 1))``, ``floor(u·(W − w + 1))``. When all attempts fail: the
    centred crop of the image clamped to the ratio range (torchvision's fallback).

    Args:
        u_area: float64 (N, A) uniforms in [0, 1), one per attempt.
        u_aspect: float64 (N, A) uniforms for the log-aspect.
        u_pos: float64 (N, 2) uniforms for top and left.
        height: Image height, an int or an (N,) tensor (per sample).
        width: Image width, likewise.
        scale: Area range as a fraction of the image.
        ratio: Aspect (w / h) range.

    Returns:
        int64 (N, 4): top, left, height, width.
    """
    height = torch.as_tensor(height, dtype=torch.float64).reshape(-1, 1)
    width = torch.as_tensor(width, dtype=torch.float64).reshape(-1, 1)
    area = (scale[0] + (scale[1] - scale[0]) * u_area) * (height * width)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u_aspect)
    w = torch.round(torch.sqrt(area * aspect))
    h = torch.round(torch.sqrt(area / aspect))
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = ok.to(torch.uint8).argmax(1, keepdim=True)  # first successful attempt
    height, width = height.squeeze(1), width.squeeze(1)
    # torchvision's three fallback cases (too tall, too wide, in range) in one expression.
    fallback_w = torch.minimum(width, torch.round(height * max(ratio)))
    fallback_h = torch.minimum(height, torch.round(fallback_w / min(ratio)))
    found = ok.any(1)
    w = torch.where(found, w.gather(1, first).squeeze(1), fallback_w)
    h = torch.where(found, h.gather(1, first).squeeze(1), fallback_h)
    top = torch.where(found, torch.floor(u_pos[:, 0] * (height - h + 1)), (height - h) // 2)
    left = torch.where(found, torch.floor(u_pos[:, 1] * (width - w + 1)), (width - w) // 2)
    return torch.stack([top, left, h, w], 1).long()


def view_geometry(seed: int, epoch: int, indices: np.ndarray | Sequence[int], view: int,
                  heights: np.ndarray | Sequence[int], widths: np.ndarray | Sequence[int],
                  scale: tuple[float, float], ratio: tuple[float, float],
                  hflip_p: float) -> tuple[np.ndarray, np.ndarray]:
    """The crop box and flip of view ``view`` of images ``indices`` in ``epoch``.

    Args:
        seed: Run seed.
        epoch: Epoch number.
        indices: Image indices in the file set, (N,).
        view: View number.
        heights: Full-resolution image heights, (N,).
        widths: Full-resolution image widths, (N,).
        scale: RandomResizedCrop area range.
        ratio: RandomResizedCrop aspect range.
        hflip_p: Probability of a horizontal flip.

    Returns:
        ``(boxes, flips)``: int64 (N, 4) top, left, height, width in full-resolution pixels,
        and bool (N,).
    """
    keys = sample_keys(seed, epoch, indices, view)
    u = torch.from_numpy(uniforms(keys, UNIFORMS_PER_VIEW))
    a = ATTEMPTS
    boxes = rrc_boxes(u[:, :a], u[:, a:2 * a], u[:, 2 * a:2 * a + 2],
                      torch.as_tensor(np.asarray(heights, dtype=np.int64)),
                      torch.as_tensor(np.asarray(widths, dtype=np.int64)), scale, ratio)
    flips = u[:, 2 * a + 2].numpy() < hflip_p
    return boxes.numpy(), flips


def substitute_index(seed: int, epoch: int, index: int, attempt: int, num_images: int) -> int:
    """The image that stands in for an unreadable ``index`` at retry ``attempt`` (≥ 1)."""
    key = sample_keys(seed, epoch, [index], attempt, STREAM_SUBSTITUTE)
    return int(uniforms(key, 1)[0, 0] * num_images)

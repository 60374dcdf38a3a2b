"""Photograph-like test images and real image folders written in the exact on-disk formats.

:func:`natural_image` makes an image with a photograph's statistics where they matter to a
decoder and a resampler: a 1/f amplitude spectrum (smooth regions and fine texture), a few
hard-edged shapes, a lighting gradient and sensor-like noise, with correlated colour
channels. Never flat colours: a flat image decodes and resizes unrealistically fast.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def _pink_noise(height: int, width: int, rng: np.random.Generator, exponent: float) -> np.ndarray:
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    radius = np.sqrt(fx * fx + fy * fy)
    radius[0, 0] = 1.0
    spectrum = (rng.normal(size=radius.shape) + 1j * rng.normal(size=radius.shape))
    field = np.fft.irfft2(spectrum / radius ** exponent, s=(height, width))
    field -= field.mean()
    return field / (field.std() + 1e-12)


def natural_image(height: int, width: int, seed: int) -> np.ndarray:
    """A photograph-like uint8 RGB ``(height, width, 3)`` image, a function of ``seed``."""
    rng = np.random.default_rng(seed)
    luma = _pink_noise(height, width, rng, 1.0)
    chroma = [_pink_noise(height, width, rng, 1.4) for _ in range(2)]
    base = rng.uniform(60, 190, size=3)
    tint = rng.normal(0, 1, size=(2, 3))
    img = base + 38 * luma[..., None] + 18 * (chroma[0][..., None] * tint[0]
                                              + chroma[1][..., None] * tint[1])
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    for _ in range(int(rng.integers(3, 7))):  # hard-edged objects: discs and bars
        colour = rng.uniform(0, 255, size=3)
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        if rng.random() < 0.5:
            r = rng.uniform(0.05, 0.3) * min(height, width)
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        else:
            angle = rng.uniform(0, np.pi)
            d = np.abs((xx - cx) * np.sin(angle) - (yy - cy) * np.cos(angle))
            mask = d < rng.uniform(0.02, 0.1) * min(height, width)
        shade = 1 + 0.15 * luma[..., None]
        img = np.where(mask[..., None], 0.3 * img + 0.7 * colour * shade, img)
    gy, gx = rng.normal(0, 0.25, size=2)
    img *= (1 + gy * (yy / height - 0.5) + gx * (xx / width - 0.5))[..., None]
    img += rng.normal(0, 3, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_image(path: str | Path, pixels: np.ndarray, fmt: str = "JPEG", quality: int = 90,
                mode: str = "RGB") -> Path:
    """Write ``pixels`` (H, W, 3) to ``path`` as ``fmt`` (whatever the name says), in ``mode``.

    ``mode="CMYK"`` writes a CMYK JPEG (PIL writes Adobe's inverted form), ``"L"`` a
    grayscale one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(pixels, "RGB")
    if mode != "RGB":
        img = img.convert(mode)
    kwargs = {"quality": quality} if fmt == "JPEG" else {}
    img.save(path, format=fmt, **kwargs)
    return path


def write_tree(root: str | Path, layout: dict[str, int], size: tuple[int, int] = (48, 64),
               seed: int = 0, ext: str = ".JPEG") -> list[Path]:
    """Write ``layout[folder]`` photograph-like JPEGs into each folder under ``root``.

    Args:
        root: Destination folder.
        layout: Relative folder → number of images (``{"train/n01440764": 3, ...}``).
        size: (height, width) of every image.
        seed: Base seed; image k of the whole tree uses ``seed + k``.
        ext: File-name extension.

    Returns:
        The written paths, in ``layout`` order.
    """
    out = []
    k = 0
    for folder, count in layout.items():
        for j in range(count):
            name = f"{Path(folder).name or 'img'}_{j:04d}{ext}"
            out.append(write_image(Path(root) / folder / name, natural_image(*size, seed + k)))
            k += 1
    return out

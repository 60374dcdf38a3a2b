"""Decoding image files: whole images for evaluation, crop-only decodes for pretraining.

:func:`load_rgb` opens a file by its content (a PNG saved as ``.JPEG`` is read as PNG) and
converts any mode to RGB with PIL's ``convert`` (CMYK — including Adobe's inverted CMYK
JPEGs, which PIL's JPEG plugin un-inverts —, grayscale, palette; alpha is dropped), as
torchvision's ``ImageFolder`` loader does.

:func:`cut_views` decodes an image once and cuts every view's crop+flip to ``S×S`` uint8.
With a JPEG it first asks libjpeg-turbo (PIL ``Image.draft``) for the DCT-domain
reduction 1/2, 1/4 or 1/8 that keeps every crop at least ``S`` pixels on both sides,
then crops each view (a view of the decoded array, no copy) and resizes it with PyTorch's
antialiased uint8 kernels (bicubic a = −0.5 or bilinear: PIL's filters, within one level):
torchvision's RandomResizedCrop on a PIL image, which also crops before resizing, at about
a quarter of PIL's resize cost. After a reduced decode the box has fractional edges on the
reduced grid: those views are resized by PIL, which takes a fractional ``box`` (rounding
the edges instead would shift the view by up to half an output pixel).

NOTE: EXIF orientation is ignored, as PIL's ``convert`` in torchvision's loader (every
peer's pretraining), torchvision's ``decode_jpeg`` default and the eval battery do: the
pixels are used as stored. A rotated photograph is a valid SSL sample; honouring the tag
would make our views differ from every baseline's.
"""

from __future__ import annotations

import io
import math
import re
import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

DECODE_ERRORS = (OSError, UnidentifiedImageError, SyntaxError, ValueError, EOFError,
                 Image.DecompressionBombError)
_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
FALLBACK_RGB = (124, 116, 104)  # the ImageNet mean, in uint8 levels: the "mean grey" image


def _reason(e: BaseException) -> str:
    """The decoder's message without object addresses (so reasons compare across runs)."""
    text = re.sub(r" ?<_io\.BytesIO object at 0x[0-9a-f]+>", "", str(e)).strip()
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


class DecodeError(ValueError):
    """A file could not be read or decoded as an image.

    Attributes:
        path: The file.
        reason: What went wrong (the decoder's message).
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


def read_bytes(path: str) -> bytes:
    """The file's bytes; an unreadable or empty file raises :class:`DecodeError`."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DecodeError(path, f"unreadable ({e.strerror or e})") from None
    if not data:
        raise DecodeError(path, "empty file (0 bytes)")
    return data


def open_image(data: bytes, path: str = "<bytes>") -> Image.Image:
    """A lazily decoded image (header parsed, pixels not yet decoded), opened by content."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return Image.open(io.BytesIO(data))
    except DECODE_ERRORS as e:
        raise DecodeError(path, f"not an image ({_reason(e)})") from None


def header(data: bytes, path: str = "<bytes>") -> tuple[int, int, str, str]:
    """``(height, width, format, mode)`` from the header only (no pixel decoding)."""
    img = open_image(data, path)
    width, height = img.size
    if width <= 0 or height <= 0:
        raise DecodeError(path, f"invalid size {width}×{height}")
    return height, width, str(img.format), img.mode


def to_rgb(img: Image.Image, path: str = "<bytes>") -> Image.Image:
    """Decode ``img`` (if still lazy) and convert it to RGB; errors become DecodeError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # EXIF chatter, DecompressionBombWarning
            img.load()
            return img if img.mode == "RGB" else img.convert("RGB")
    except DECODE_ERRORS as e:
        raise DecodeError(path, f"cannot decode ({_reason(e)})") from None


def load_rgb(path: str) -> Image.Image:
    """The whole image at ``path`` as RGB (eval's loader; raises :class:`DecodeError`)."""
    return to_rgb(open_image(read_bytes(path), path), path)


def draft_scale(boxes: np.ndarray, sizes: Sequence[int]) -> int:
    """The largest JPEG reduction in (8, 4, 2, 1) that keeps every box ≥ its output size.

    Args:
        boxes: int (V, 4) top, left, height, width of each view's crop.
        sizes: Each view's output side.
    """
    need = min(min(int(b[2]), int(b[3])) / s for b, s in zip(boxes, sizes))
    for scale in (8, 4, 2):
        if need >= scale:
            return scale
    return 1


def cut_views(img: Image.Image, boxes: np.ndarray, flips: Sequence[bool],
              sizes: Sequence[int], interpolations: Sequence[str],
              outs: Sequence[np.ndarray], path: str = "<bytes>", draft: bool = True) -> int:
    """Decode ``img`` once and write each view's resized, flipped crop into ``outs``.

    Args:
        img: A lazily opened image (``open_image``) of full size H×W.
        boxes: int (V, 4) top, left, height, width in full-resolution pixels.
        flips: Mirror view v horizontally.
        sizes: Output side of each view.
        interpolations: ``"bicubic"`` or ``"bilinear"`` per view.
        outs: uint8 (3, S, S) arrays (rows of a batch) to write.
        path: For error messages.
        draft: Allow DCT-domain reduction (JPEG only).

    Returns:
        The reduction used (1 = full decode).

    Raises:
        DecodeError: The pixels could not be decoded.
    """
    scale = draft_scale(boxes, sizes) if draft and img.format == "JPEG" else 1
    if scale > 1:
        width, height = img.size
        img.draft(None, (width // scale, height // scale))
        scale = int(img.decoderconfig[0]) if img.decoderconfig else 1
    rgb = to_rgb(img, path)
    if scale > 1:
        _cut_fractional(rgb, boxes / scale, flips, sizes, interpolations, outs)
        return scale
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a read-only array: only ever read
        # np.asarray copies once; the crops below are views of that array, no copy.
        pixels = torch.from_numpy(np.asarray(rgb)).permute(2, 0, 1).unsqueeze(0)
    for box, flip, size, interp, out in zip(boxes, flips, sizes, interpolations, outs):
        top, left, h, w = (int(v) for v in box)
        view = resize_crop(pixels, top, left, h, w, size, interp)[0]
        torch.from_numpy(out).copy_(view.flip(-1) if flip else view)
    return scale


def _cut_fractional(rgb: Image.Image, boxes: np.ndarray, flips: Sequence[bool],
                    sizes: Sequence[int], interpolations: Sequence[str],
                    outs: Sequence[np.ndarray]) -> None:
    """Views of fractional boxes (a reduced decode) with PIL: crop to the whole pixels
    around the box, then ``resize(box=...)`` with the box's exact fractional edges."""
    for box, flip, size, interp, out in zip(boxes, flips, sizes, interpolations, outs):
        top, left, h, w = (float(v) for v in box)
        x0, y0 = math.floor(left), math.floor(top)
        x1, y1 = min(math.ceil(left + w), rgb.width), min(math.ceil(top + h), rgb.height)
        region = rgb.crop((x0, y0, x1, y1))
        view = region.resize((size, size), _RESAMPLE[interp],
                             box=(left - x0, top - y0, left - x0 + w, top - y0 + h))
        arr = np.asarray(view).transpose(2, 0, 1)
        out[...] = arr[:, :, ::-1] if flip else arr


def resize_crop(pixels: torch.Tensor, top: int, left: int, height: int, width: int,
                size: int, interpolation: str) -> torch.Tensor:
    """Crop uint8 (1, 3, H, W) ``pixels`` and resize to ``size``² (antialiased), as uint8.

    PyTorch's uint8 antialiased kernels (vectorised for a channels_last input, here the
    decoded HWC array; the output is NCHW) reproduce PIL's
    ``resize`` filters (within one level, from rounding) at about a quarter of its cost.
    """
    region = pixels[:, :, top:top + height, left:left + width]
    if (height, width) == (size, size):
        return region
    return F.interpolate(region, size=(size, size), mode=interpolation, antialias=True,
                         align_corners=False)


def fill_fallback(outs: Sequence[np.ndarray]) -> None:
    """Write the mean-grey image into every view."""
    for out in outs:
        out[...] = np.asarray(FALLBACK_RGB, dtype=np.uint8).reshape(3, 1, 1)

"""Batched multi-view SSL augmentation on the accelerator, random per sample.

Every random parameter is drawn on the CPU from a generator seeded by the caller, for
the *global* batch, and this process's rows are taken: a batch split over W processes
gets exactly the augmentations it gets in one, and a resumed run reproduces them. The
image ops then run batched on the images' device, with torchvision's definitions
(``transforms.v2.functional``) on float images in [0, 1], in the official VICReg order
(methods.md §1.5): crop+flip, jitter, grayscale, blur, solarize, normalise.

NOTE: deviations from the official PIL pipelines, shared by every recipe:
- Images stay float between ops; PIL rounds to uint8 after every op.
- The crop is sampled by ``grid_sample`` (bicubic a = −0.75) from the full image, without
  antialiasing; PIL's resize uses a = −0.5 and antialiases when it shrinks a crop (crops
  are only upsampled when, as for 28 px Fashion-MNIST, crop size = image size).
- Blur: a Gaussian truncated to ``blur_kernel_size(crop)`` taps (23 at 224, as SimCLR's and
  BYOL's code), reflect-padded; PIL's ``GaussianBlur(radius=σ)`` has the same σ but a ±3σ
  box-filter approximation. At 28 px the kernel has 3 taps: σ ≳ 1 is then nearly a box.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from backbones.registry import Registry
from dataroom.geometry import ATTEMPTS, rrc_boxes
from trainer.config import AugConfig, ViewAugConfig

RECIPES: Registry[Callable[[int], tuple[ViewAugConfig, ...]]] = Registry("augmentation recipe")
_LUMA = (0.2989, 0.587, 0.114)  # ITU-R 601-2, the weights torchvision uses
_SOLARIZE_THRESHOLD = 127.5 / 255  # PIL inverts uint8 ≥ 128; halfway ignores float error

# ----------------------------------------------------------------------------- recipes


@RECIPES.register("vicreg")
def vicreg(crop_size: int) -> tuple[ViewAugConfig, ...]:
    """Official VICReg / Barlow Twins views (methods.md §1.5): asymmetric blur and solarize."""
    view_a = ViewAugConfig(crop_size=crop_size)  # the defaults are VICReg's view 1
    return view_a, replace(view_a, blur_p=0.1, solarize_p=0.2)


@RECIPES.register("byol")
def byol(crop_size: int) -> tuple[ViewAugConfig, ...]:
    """BYOL's views (methods.md §4.4): the same probabilities and ranges as ``vicreg``."""
    # NOTE: BYOL's official TF-style colour ops differ in form (methods.md §4.4): brightness
    # is an additive delta U[-0.4, 0.4], not a factor U[0.6, 1.4]. Here they are
    # torchvision's (as VICReg's), since ViewAugConfig has no switch for the op form.
    return vicreg(crop_size)


@RECIPES.register("simclr")
def simclr(crop_size: int) -> tuple[ViewAugConfig, ...]:
    """SimCLR v2 (methods.md §3.4): strength-1.0 jitter, blur p = 0.5 on both views."""
    # NOTE: the official crop uses TF's sample_distorted_bounding_box (min_object_covered
    # 0.1, aspect relative to the image, whole-image fallback), and the official pipeline
    # does not normalise with a mean/std; here it is torchvision's crop and we normalise.
    view = ViewAugConfig(
        crop_size=crop_size, brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2,
        blur_p=0.5, solarize_p=0.0,
    )  # fmt: skip
    return view, view


@RECIPES.register("mocov2")
def mocov2(crop_size: int) -> tuple[ViewAugConfig, ...]:
    """MoCo v2's views, used by SimSiam (methods.md §5.4); bilinear crop of scale ≥ 0.2."""
    view = ViewAugConfig(
        crop_size=crop_size, crop_scale=(0.2, 1.0), interpolation="bilinear",
        saturation=0.4, blur_p=0.5, solarize_p=0.0,
    )  # fmt: skip
    # Official order flips last; flip commutes with every pointwise op and the symmetric blur.
    return view, view


@RECIPES.register("none")
def none(crop_size: int) -> tuple[ViewAugConfig, ...]:
    """Two identical views: the largest centred square, resized; no random op."""
    view = ViewAugConfig(
        crop_size=crop_size, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip_p=0.0,
        jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, solarize_p=0.0,
    )  # fmt: skip
    return view, view


def resolve_views(aug: AugConfig) -> tuple[ViewAugConfig, ...]:
    """``aug.views`` when given, else the recipe ``aug.recipe`` at ``aug.crop_size``."""
    return tuple(aug.views) if aug.views else RECIPES.build(aug.recipe, aug.crop_size)


def blur_kernel_size(crop_size: int) -> int:
    """Blur taps: 10% of the crop, made odd (SimCLR/BYOL code: 224 → radius 11, 23 taps)."""
    return 2 * (crop_size // 20) + 1


# ----------------------------------------------------------------------------- ops
# Each op takes float images (B, 3, H, W) in [0, 1] and one factor per sample.


def rgb_to_grayscale(x: Tensor) -> Tensor:
    """Luma of ``x`` (B, 3, H, W), replicated to 3 channels."""
    r, g, b = x.unbind(1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1).expand_as(x)


def _blend(x: Tensor, other: Tensor, factors: Tensor) -> Tensor:
    # f·x + (1 − f)·other, as torchvision's _blend, in one fused kernel.
    return torch.lerp(other, x, factors.view(-1, 1, 1, 1).to(x.dtype)).clamp_(0, 1)


def adjust_brightness(x: Tensor, factors: Tensor) -> Tensor:
    """Scale pixels by ``factors`` (B,), as torchvision's ``adjust_brightness``."""
    return (x * factors.view(-1, 1, 1, 1).to(x.dtype)).clamp_(0, 1)


def adjust_contrast(x: Tensor, factors: Tensor) -> Tensor:
    """Blend with each image's mean luma, as torchvision's ``adjust_contrast``."""
    return _blend(x, rgb_to_grayscale(x).mean(dim=(1, 2, 3), keepdim=True), factors)


def adjust_saturation(x: Tensor, factors: Tensor) -> Tensor:
    """Blend with the image's luma, as torchvision's ``adjust_saturation``."""
    return _blend(x, rgb_to_grayscale(x), factors)


def adjust_hue(x: Tensor, shifts: Tensor) -> Tensor:
    """Rotate hue by ``shifts`` (B,) in turns, in [−0.5, 0.5], via HSV."""
    r, g, b = x.unbind(1)
    value, low = x.amax(dim=1), x.amin(dim=1)
    chroma = value - low
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    sat = chroma / torch.where(value > 0, value, torch.ones_like(value))
    hue = torch.where(value == g, 2 + (b - r) / safe, 4 + (r - g) / safe)
    hue = torch.where(value == r, (g - b) / safe, hue)  # in sixths of a turn
    hue6 = torch.remainder(hue + 6 * shifts.view(-1, 1, 1).to(x.dtype), 6)
    # HSV → RGB, branch-free: channel n ∈ (5, 3, 1) for (R, G, B).
    n = torch.tensor([5.0, 3.0, 1.0], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    k = torch.remainder(n + hue6.unsqueeze(1), 6)
    ramp = torch.minimum(k, 4 - k).clamp(0, 1)
    return value.unsqueeze(1) * (1 - sat.unsqueeze(1) * ramp)


def gaussian_blur(x: Tensor, sigmas: Tensor, kernel_size: int) -> Tensor:
    """Blur images (B, C, H, W) with σ = ``sigmas`` (B,) pixels and ``kernel_size`` odd taps.

    Separable, reflect-padded: torchvision's ``gaussian_blur``, one σ per sample.
    """
    batch, channels, height, width = x.shape
    radius = kernel_size // 2
    taps = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (taps / sigmas.view(-1, 1).to(x.dtype)) ** 2)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(channels, 0)  # (B*C, K)
    # One group per (sample, channel): every sample convolves with its own kernel.
    y = F.pad(x.reshape(1, batch * channels, height, width), (radius,) * 4, mode="reflect")
    y = F.conv2d(y, kernel.view(-1, 1, 1, kernel_size), groups=batch * channels)
    y = F.conv2d(y, kernel.view(-1, 1, kernel_size, 1), groups=batch * channels)
    return y.view(batch, channels, height, width)


def solarize(x: Tensor, threshold: float = _SOLARIZE_THRESHOLD) -> Tensor:
    """Invert pixels ≥ ``threshold``: PIL's ``ImageOps.solarize(128)`` on uint8 levels."""
    return torch.where(x >= threshold, 1 - x, x)


_JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def resized_crop(x: Tensor, boxes: Tensor, flips: Tensor, size: int, mode: str) -> Tensor:
    """Per-sample crop, resize to ``size``² and mirror, clamped to [0, 1].

    ``boxes`` (B, 4) holds integer top, left, height, width; ``flips`` (B,) is bool.
    """
    batch, channels, height, width = x.shape
    top, left, h, w = boxes.to(torch.float64).unbind(1)
    theta = torch.zeros(batch, 2, 3, dtype=torch.float64)
    # Maps output coords in (−1, 1) onto the box (align_corners=False pixel centres).
    theta[:, 0, 0] = torch.where(flips, -w, w) / width
    theta[:, 0, 2] = (2 * left + w) / width - 1
    theta[:, 1, 1] = h / height
    theta[:, 1, 2] = (2 * top + h) / height - 1
    theta = theta.to(x.device, x.dtype)
    grid = F.affine_grid(theta, [batch, channels, size, size], align_corners=False)
    out = F.grid_sample(x, grid, mode=mode, padding_mode="border", align_corners=False)
    return out.clamp(0, 1)


# ----------------------------------------------------------------------------- parameters


@dataclass
class ViewParams:
    """The random parameters of one view, one row per sample (CPU tensors)."""

    boxes: Tensor  # (B, 4) int64 crop top, left, height, width
    flip: Tensor  # (B,) bool
    jitter: Tensor  # (B,) bool
    factors: Tensor  # (B, 4) brightness, contrast, saturation factors and hue shift
    order: Tensor  # (B, 4) int64: order[i, slot] = jitter op applied in that slot
    grayscale: Tensor  # (B,) bool
    blur: Tensor  # (B,) bool
    sigma: Tensor  # (B,) blur σ in pixels
    solarize: Tensor  # (B,) bool

    def rows(self, start: int, stop: int) -> ViewParams:
        """Rows ``start:stop`` of every field."""
        return ViewParams(*(getattr(self, f.name)[start:stop] for f in fields(self)))


def _uniform(low: float, high: float, shape: tuple[int, ...], gen: torch.Generator) -> Tensor:
    return low + (high - low) * torch.rand(shape, generator=gen, dtype=torch.float64)


def sample_crop_boxes(
    num: int, height: int, width: int, scale: tuple[float, float],
    ratio: tuple[float, float], gen: torch.Generator,
) -> Tensor:  # fmt: skip
    """torchvision's RandomResizedCrop boxes, its 10 attempts vectorised.

    The uniforms come from ``gen`` (area, aspect, then position); the arithmetic is
    ``dataroom.geometry.rrc_boxes``, shared with the image-folder loader.

    Returns int64 (num, 4) top, left, height, width; the centre crop where all attempts fail.
    """
    u_area = torch.rand((num, ATTEMPTS), generator=gen, dtype=torch.float64)
    u_aspect = torch.rand((num, ATTEMPTS), generator=gen, dtype=torch.float64)
    position = torch.rand((num, 2), generator=gen, dtype=torch.float64)
    return rrc_boxes(u_area, u_aspect, position, height, width, scale, ratio)


def sample_view_params(
    view: ViewAugConfig, num: int, height: int, width: int, gen: torch.Generator
) -> ViewParams:
    """Draw one view's parameters for ``num`` samples, in a fixed order from ``gen``."""
    boxes = sample_crop_boxes(num, height, width, view.crop_scale, view.crop_ratio, gen)

    def coin(p: float) -> Tensor:
        return torch.rand(num, generator=gen) < p

    flip, jitter = coin(view.hflip_p), coin(view.jitter_p)
    ranges = [(max(0.0, 1 - s), 1 + s) for s in (view.brightness, view.contrast, view.saturation)]
    ranges.append((-view.hue, view.hue))
    u = torch.rand((num, 4), generator=gen, dtype=torch.float64)
    low, high = torch.tensor(ranges, dtype=torch.float64).unbind(1)
    factors = (low + (high - low) * u).float()
    order = torch.rand((num, 4), generator=gen).argsort(1)  # a random permutation per sample
    grayscale, blur, solar = coin(view.grayscale_p), coin(view.blur_p), coin(view.solarize_p)
    sigma = _uniform(*view.blur_sigma, (num,), gen).float()
    return ViewParams(boxes, flip, jitter, factors, order, grayscale, blur, sigma, solar)


# ----------------------------------------------------------------------------- modules


def _channel_stats(values: Sequence[float], name: str) -> Tensor:
    if len(values) not in (1, 3):
        raise ValueError(f"{name} needs 1 or 3 values, got {list(values)}")
    t = torch.tensor([float(v) for v in values], dtype=torch.float32)
    return t.expand(3).clone().view(1, 3, 1, 1)


def _to_rgb(x: Tensor) -> Tensor:
    if x.shape[1] not in (1, 3):
        raise ValueError(f"expected 1 or 3 channels, got {tuple(x.shape)}")
    return x.expand(-1, 3, -1, -1).contiguous() if x.shape[1] == 1 else x


class MultiViewAugment(nn.Module):
    """Random multi-view augmentation of uint8 batches, batched on their device.

    Args:
        views: One config per view (see ``resolve_views``).
        mean: The dataset's per-channel mean in [0, 1]; one value is used for all 3 channels.
        std: The dataset's per-channel std in [0, 1].
    """

    def __init__(
        self, views: Sequence[ViewAugConfig], mean: Sequence[float], std: Sequence[float]
    ) -> None:
        super().__init__()
        for view in views:
            if view.interpolation not in ("bicubic", "bilinear"):
                raise ValueError(f"interpolation must be bicubic or bilinear, got {view}")
        self.views = tuple(views)
        self.register_buffer("mean", _channel_stats(mean, "mean"), persistent=False)
        self.register_buffer("std", _channel_stats(std, "std"), persistent=False)

    def sample_params(
        self, seed: int, global_batch: int, height: int, width: int
    ) -> list[ViewParams]:
        """Every view's parameters for all ``global_batch`` rows, drawn from ``seed``."""
        gen = torch.Generator(device="cpu").manual_seed(seed)
        return [sample_view_params(v, global_batch, height, width, gen) for v in self.views]

    def forward(
        self, x: Tensor, seed: int, global_batch: int | None = None, offset: int = 0
    ) -> list[Tensor]:
        """Augment ``x``, rows ``offset:offset + B`` of a global batch, once per view.

        Args:
            x: uint8 images (B, C, H, W), C = 1 or 3, on any device.
            seed: Seeds the parameters of the whole global batch (e.g. from run seed and step).
            global_batch: Rows over all processes; defaults to B.
            offset: This process's first row in the global batch.

        Returns:
            One normalised float32 (B, 3, S, S) tensor per view, on ``x``'s device.
        """
        if x.dtype != torch.uint8 or x.dim() != 4:
            raise ValueError(f"expected uint8 (B, C, H, W), got {x.dtype} {tuple(x.shape)}")
        batch, global_batch = x.shape[0], global_batch or x.shape[0]
        if not 0 <= offset <= global_batch - batch:
            raise ValueError(f"rows {offset}:{offset + batch} exceed global batch {global_batch}")
        params = self.sample_params(seed, global_batch, x.shape[2], x.shape[3])
        images = x.float() / 255
        return [
            self._view(images, view, p.rows(offset, offset + batch))
            for view, p in zip(self.views, params)
        ]

    def colour(
        self, views: Sequence[Tensor], seed: int, global_batch: int | None = None,
        offset: int = 0,
    ) -> list[Tensor]:  # fmt: skip
        """Colour, grayscale, blur, solarize and normalise views already cropped and flipped.

        For loaders that cut each view's crop+flip themselves (``dataroom``): view ``v`` of
        ``views`` gets the per-sample jitter/grayscale/blur/solarize draws that ``forward``
        gives it for the same ``seed`` (the crop draws are made and unused, so the two
        paths draw the same colour parameters).

        Args:
            views: One uint8 (B, C, S, S) tensor per view, C = 1 or 3, S = that view's crop.
            seed: As in ``forward``.
            global_batch: Rows over all processes; defaults to B.
            offset: This process's first row in the global batch.

        Returns:
            One normalised float32 (B, 3, S, S) tensor per view, on the views' device.
        """
        if len(views) != len(self.views):
            raise ValueError(f"expected {len(self.views)} views, got {len(views)}")
        for v, cfg in zip(views, self.views):
            if v.dtype != torch.uint8 or v.dim() != 4 or v.shape[-2:] != (cfg.crop_size,) * 2:
                raise ValueError(f"expected uint8 (B, C, {cfg.crop_size}, {cfg.crop_size}), got "
                                 f"{v.dtype} {tuple(v.shape)}")
        batch, global_batch = views[0].shape[0], global_batch or views[0].shape[0]
        if not 0 <= offset <= global_batch - batch:
            raise ValueError(f"rows {offset}:{offset + batch} exceed global batch {global_batch}")
        size = self.views[0].crop_size
        params = self.sample_params(seed, global_batch, size, size)
        return [
            self._colour(_to_rgb(v.float() / 255), cfg, p.rows(offset, offset + batch))
            for v, cfg, p in zip(views, self.views, params)
        ]

    def _view(self, images: Tensor, view: ViewAugConfig, p: ViewParams) -> Tensor:
        # Crop before replicating grey to RGB: 3× less interpolation work.
        x = _to_rgb(resized_crop(images, p.boxes, p.flip, view.crop_size, view.interpolation))
        return self._colour(x, view, p)

    def _colour(self, x: Tensor, view: ViewAugConfig, p: ViewParams) -> Tensor:
        device, size = x.device, view.crop_size
        # Which samples each op touches is known on the CPU: index lists, one transfer.
        active = [s > 0 for s in (view.brightness, view.contrast, view.saturation, view.hue)]
        groups = [
            (p.jitter & (p.order[:, slot] == k)).nonzero().view(-1)
            for slot in range(4) for k in range(4)
        ]  # fmt: skip
        groups += [m.nonzero().view(-1) for m in (p.grayscale, p.blur, p.solarize)]
        sizes = [len(g) for g in groups]
        index = torch.cat(groups).to(device, non_blocking=True).split(sizes)
        values = torch.cat([p.factors, p.sigma[:, None]], 1).to(device, non_blocking=True)
        for slot_k, idx in enumerate(index[:16]):
            k = slot_k % 4
            if len(idx) and active[k]:
                x.index_copy_(0, idx, _JITTER_OPS[k](x[idx], values[idx, k]))
        gray, blur, sol = index[16:]
        if len(gray):
            x.index_copy_(0, gray, rgb_to_grayscale(x[gray]))
        if len(blur):
            x.index_copy_(0, blur, gaussian_blur(x[blur], values[blur, 4], blur_kernel_size(size)))
        if len(sol):
            x.index_copy_(0, sol, solarize(x[sol]))
        return (x - self.mean.to(device)) / self.std.to(device)


class EvalTransform(nn.Module):
    """Deterministic resize (shorter side) + centre crop + normalise of uint8 batches.

    Args:
        resize: Target of the shorter side; the longer keeps the aspect (torchvision rule).
        crop_size: Side of the centre crop.
        mean: The dataset's per-channel mean in [0, 1]; one value is used for all 3 channels.
        std: The dataset's per-channel std in [0, 1].
        interpolation: ``"bicubic"`` or ``"bilinear"`` (antialiased when shrinking).
    """

    def __init__(
        self, resize: int, crop_size: int, mean: Sequence[float], std: Sequence[float],
        interpolation: str = "bicubic",
    ) -> None:  # fmt: skip
        super().__init__()
        if interpolation not in ("bicubic", "bilinear"):
            raise ValueError(f"interpolation must be bicubic or bilinear, got {interpolation}")
        if crop_size > resize:
            raise ValueError(f"crop_size {crop_size} exceeds resize {resize}")
        self.resize, self.crop_size, self.interpolation = resize, crop_size, interpolation
        self.register_buffer("mean", _channel_stats(mean, "mean"), persistent=False)
        self.register_buffer("std", _channel_stats(std, "std"), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """Map uint8 (B, C, H, W), C = 1 or 3, to normalised float32 (B, 3, crop, crop)."""
        if x.dtype != torch.uint8 or x.dim() != 4:
            raise ValueError(f"expected uint8 (B, C, H, W), got {x.dtype} {tuple(x.shape)}")
        height, width = x.shape[2:]
        short, long = min(height, width), max(height, width)
        new_long = int(self.resize * long / short)
        size = (self.resize, new_long) if height <= width else (new_long, self.resize)
        images = x.float() / 255
        if size != (height, width):
            images = F.interpolate(
                images, size=size, mode=self.interpolation, align_corners=False, antialias=True
            ).clamp(0, 1)
        top, left = (int(round((n - self.crop_size) / 2)) for n in size)
        images = images[:, :, top : top + self.crop_size, left : left + self.crop_size]
        return (_to_rgb(images) - self.mean.to(x.device)) / self.std.to(x.device)

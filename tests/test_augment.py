"""Batched per-sample augmentation: determinism, distributed slicing, and each op vs torchvision."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor
from torchvision.transforms import InterpolationMode

from trainer.augment import (
    RECIPES,
    EvalTransform,
    MultiViewAugment,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    blur_kernel_size,
    gaussian_blur,
    resized_crop,
    resolve_views,
    rgb_to_grayscale,
    sample_crop_boxes,
    solarize,
)
from trainer.config import AugConfig, ViewAugConfig

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
MEAN3, STD3 = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
NONE = RECIPES.build("none", 28)[0]  # a view with every random op off


def uint8_images(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)


def smooth_rgb(batch: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    """Float RGB images in [0, 1] with varied hue and saturation."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, size, size, generator=g)


def normalised(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    x = x.float().div(255).expand(-1, 3, -1, -1)
    return (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


# ----------------------------------------------------------------------------- module


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("recipe", ["vicreg", "byol", "simclr", "mocov2", "none"])
def test__shapes_dtype_device(recipe: str, device: str) -> None:
    grey = MultiViewAugment(RECIPES.build(recipe, 28), (0.3,), (0.35,))
    views = grey(uint8_images((6, 1, 28, 28)).to(device), seed=1)
    colour = MultiViewAugment(RECIPES.build(recipe, 32), MEAN3, STD3)
    views += colour(uint8_images((3, 3, 40, 52)).to(device), seed=1)
    assert [tuple(v.shape) for v in views] == [(6, 3, 28, 28)] * 2 + [(3, 3, 32, 32)] * 2
    for v in views:
        assert v.dtype == torch.float32 and v.device.type == device and torch.isfinite(v).all()


def test__seed_determines_output() -> None:
    aug = MultiViewAugment(RECIPES.build("vicreg", 28), (0.3,), (0.35,))
    x = uint8_images((8, 1, 28, 28))
    a, b, c = aug(x, seed=5), aug(x, seed=5), aug(x, seed=6)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.allclose(a[0], c[0]) and not torch.allclose(a[1], c[1])
    assert not torch.allclose(a[0], a[1])  # the two views differ


def test__rows_of_a_global_batch_match_the_single_process_call() -> None:
    aug = MultiViewAugment(RECIPES.build("vicreg", 28), (0.3,), (0.35,))
    x = uint8_images((8, 1, 28, 28))
    whole = aug(x, seed=11)
    first = aug(x[:4], seed=11, global_batch=8, offset=0)
    second = aug(x[4:], seed=11, global_batch=8, offset=4)
    for w, a, b in zip(whole, first, second):
        torch.testing.assert_close(a, w[:4], atol=1e-6, rtol=0)
        torch.testing.assert_close(b, w[4:], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="exceed"):
        aug(x[4:], seed=11, global_batch=8, offset=5)


@pytest.mark.parametrize("channels,mean,std", [(1, (0.3,), (0.35,)), (3, MEAN3, STD3)])
def test__recipe_none_at_full_size_is_the_normalised_input(
    channels: int, mean: tuple[float, ...], std: tuple[float, ...]
) -> None:
    x = uint8_images((5, channels, 28, 28))
    for view in MultiViewAugment(RECIPES.build("none", 28), mean, std)(x, seed=3):
        torch.testing.assert_close(view, normalised(x, mean, std), atol=1e-5, rtol=0)


def test__flip_only_view_is_torch_flip() -> None:
    aug = MultiViewAugment([replace(NONE, hflip_p=0.5)], (0.3,), (0.35,))
    x = uint8_images((16, 1, 28, 28))
    (out,) = aug(x, seed=2)
    flips = aug.sample_params(2, 16, 28, 28)[0].flip
    assert 0 < flips.sum() < 16
    expected = torch.where(flips.view(-1, 1, 1, 1), torch.flip(x, dims=[3]), x)
    torch.testing.assert_close(out, normalised(expected, (0.3,), (0.35,)), atol=1e-5, rtol=0)


def test__jitter_applies_each_sample_s_own_order_and_factors() -> None:
    view = replace(NONE, jitter_p=0.7, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)
    aug = MultiViewAugment([view], (0.0,), (1.0,))
    x = uint8_images((12, 3, 28, 28), seed=4)
    (out,) = aug(x, seed=9)
    p = aug.sample_params(9, 12, 28, 28)[0]
    assert 0 < p.jitter.sum() < 12
    assert torch.equal(p.order.sort(1).values, torch.arange(4).expand(12, 4))
    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    for i in range(12):
        ref = x[i].float() / 255
        if p.jitter[i]:
            for k in p.order[i].tolist():
                ref = ops[k](ref, p.factors[i, k].item())
        torch.testing.assert_close(out[i], ref, atol=2e-5, rtol=0)


def test__blur_and_solarize_hit_exactly_the_drawn_samples() -> None:
    view = replace(NONE, blur_p=0.5, blur_sigma=(0.5, 1.5), solarize_p=0.5)
    aug = MultiViewAugment([view], (0.0,), (1.0,))
    x = uint8_images((10, 3, 28, 28), seed=6)
    (out,) = aug(x, seed=4)
    p = aug.sample_params(4, 10, 28, 28)[0]
    for i in range(10):
        ref = x[i].float() / 255
        if p.blur[i]:
            ref = TF.gaussian_blur(ref, [3, 3], [p.sigma[i].item()] * 2)
        if p.solarize[i]:  # PIL's uint8 threshold 128, as a float threshold between levels
            ref = TF.solarize(ref, 127.5 / 255)
        torch.testing.assert_close(out[i], ref, atol=1e-5, rtol=0)


def test__probabilities_match_the_config() -> None:
    aug = MultiViewAugment(RECIPES.build("vicreg", 28), (0.3,), (0.35,))
    view_a, view_b = aug.sample_params(0, 20000, 28, 28)
    tolerance = 0.015  # > 4 standard errors at n = 20000
    expected = [(view_a.flip, 0.5), (view_a.jitter, 0.8), (view_a.grayscale, 0.2),
                (view_a.blur, 1.0), (view_a.solarize, 0.0), (view_b.blur, 0.1),
                (view_b.solarize, 0.2), (view_b.grayscale, 0.2)]  # fmt: skip
    for mask, p in expected:
        assert abs(mask.float().mean().item() - p) < tolerance
    assert 0.1 <= view_a.sigma.min() and view_a.sigma.max() <= 2.0
    low, high = view_a.factors.min(0).values, view_a.factors.max(0).values
    torch.testing.assert_close(low, torch.tensor([0.6, 0.6, 0.8, -0.1]), atol=2e-3, rtol=0)
    torch.testing.assert_close(high, torch.tensor([1.4, 1.4, 1.2, 0.1]), atol=2e-3, rtol=0)


def test__grayscale_fraction_on_images() -> None:
    aug = MultiViewAugment([replace(NONE, crop_size=4, grayscale_p=0.2)], (0.0,), (1.0,))
    (out,) = aug(uint8_images((2000, 3, 4, 4), seed=1), seed=0)
    grey = (out.amax(1) - out.amin(1)).amax(dim=(1, 2)) < 1e-6
    assert abs(grey.float().mean().item() - 0.2) < 0.04


def test__input_checks() -> None:
    aug = MultiViewAugment(RECIPES.build("none", 28), (0.3,), (0.35,))
    with pytest.raises(ValueError, match="uint8"):
        aug(torch.zeros(2, 1, 28, 28), seed=0)
    with pytest.raises(ValueError, match="1 or 3"):
        MultiViewAugment(RECIPES.build("none", 28), (0.3, 0.3), (0.35,))


# ----------------------------------------------------------------------------- recipes


def test__recipes() -> None:
    assert set(RECIPES.names()) >= {"vicreg", "byol", "simclr", "mocov2", "none"}
    a, b = RECIPES.build("vicreg", 224)
    assert (a.blur_p, b.blur_p, a.solarize_p, b.solarize_p) == (1.0, 0.1, 0.0, 0.2)
    assert (a.brightness, a.contrast, a.saturation, a.hue, a.jitter_p) == (0.4, 0.4, 0.2, 0.1, 0.8)
    assert a.interpolation == "bicubic" and a.crop_scale == (0.08, 1.0)
    assert RECIPES.build("byol", 96) == RECIPES.build("vicreg", 96)
    s = RECIPES.build("simclr", 224)[0]
    assert (s.brightness, s.contrast, s.saturation, s.hue, s.blur_p) == (0.8, 0.8, 0.8, 0.2, 0.5)
    m = RECIPES.build("mocov2", 224)[1]
    assert (m.crop_scale, m.saturation, m.interpolation, m.solarize_p) == (
        (0.2, 1.0), 0.4, "bilinear", 0.0)  # fmt: skip
    assert all(v.crop_size == 28 for r in RECIPES.names() for v in RECIPES.build(r, 28))


def test__resolve_views() -> None:
    assert resolve_views(AugConfig(recipe="simclr", crop_size=64)) == RECIPES.build("simclr", 64)
    custom = (ViewAugConfig(crop_size=32),) * 3
    assert resolve_views(AugConfig(recipe="simclr", views=custom)) == custom


def test__blur_kernel_size() -> None:
    assert [blur_kernel_size(s) for s in (224, 28, 32, 96, 64)] == [23, 3, 3, 9, 7]


# ----------------------------------------------------------------------------- ops


@pytest.mark.parametrize(
    "ours,theirs,factors",
    [
        (adjust_brightness, TF.adjust_brightness, [0.6, 1.0, 1.4, 1.8]),
        (adjust_contrast, TF.adjust_contrast, [0.2, 0.6, 1.0, 1.8]),
        (adjust_saturation, TF.adjust_saturation, [0.0, 0.6, 1.2, 1.8]),
        (adjust_hue, TF.adjust_hue, [-0.5, -0.1, 0.05, 0.3]),
    ],
)
def test__jitter_ops_match_torchvision(
    ours: Callable[[Tensor, Tensor], Tensor], theirs: Callable[..., Tensor], factors: list[float]
) -> None:
    x = smooth_rgb(4)
    x[1, :, :4] = 0.5  # grey pixels: hue undefined, saturation 0
    out = ours(x, torch.tensor(factors))
    for i, f in enumerate(factors):
        torch.testing.assert_close(out[i], theirs(x[i], f), atol=1e-5, rtol=0)


def test__grayscale_and_solarize_match_torchvision() -> None:
    x = smooth_rgb(3)
    ref = TF.rgb_to_grayscale(x, num_output_channels=3)
    torch.testing.assert_close(rgb_to_grayscale(x), ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(solarize(x, 0.3), TF.solarize(x, 0.3), atol=0, rtol=0)
    levels = torch.arange(256).float().div(255).view(1, 1, 16, 16).expand(1, 3, 16, 16)
    torch.testing.assert_close(solarize(levels), TF.solarize(levels, 128 / 255), atol=0, rtol=0)


@pytest.mark.parametrize("kernel_size", [3, 7])
def test__blur_matches_torchvision(kernel_size: int) -> None:
    x, sigmas = smooth_rgb(3, 12), [0.1, 0.8, 2.0]
    out = gaussian_blur(x, torch.tensor(sigmas), kernel_size)
    for i, s in enumerate(sigmas):
        ref = TF.gaussian_blur(x[i], [kernel_size, kernel_size], [s, s])
        torch.testing.assert_close(out[i], ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("mode", ["bicubic", "bilinear"])
def test__crop_matches_torchvision_inside_the_box(mode: str) -> None:
    x = smooth_rgb(1, 28)
    box = torch.tensor([[3, 5, 14, 10]])  # top, left, height, width
    out = resized_crop(x, box, torch.tensor([False]), 28, mode)
    ref = TF.resized_crop(x, 3, 5, 14, 10, [28, 28], InterpolationMode(mode), antialias=False)
    # Near the box edge torchvision replicates the box border; we read the real neighbours.
    m = 5
    torch.testing.assert_close(out[..., m:-m, m:-m], ref.clamp(0, 1)[..., m:-m, m:-m])


def test__crop_boxes_follow_torchvision_rules() -> None:
    g = torch.Generator().manual_seed(0)
    boxes = sample_crop_boxes(5000, 40, 52, (0.08, 1.0), (3 / 4, 4 / 3), g)
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 40).all()
    assert (left + w <= 52).all() and (h > 0).all() and (w > 0).all()
    area = (h * w).float() / (40 * 52)
    assert area.min() > 0.06 and area.max() <= 1.0 and 0.45 < area.mean() < 0.6
    fallback = sample_crop_boxes(3, 40, 52, (1.0, 1.0), (1.0, 1.0), g)  # no 52×40 square fits
    assert fallback.tolist() == [[0, 6, 40, 40]] * 3


# ----------------------------------------------------------------------------- eval


@pytest.mark.parametrize("mode", ["bicubic", "bilinear"])
def test__eval_transform_matches_torchvision(mode: str) -> None:
    x = uint8_images((2, 3, 40, 52), seed=3)
    out = EvalTransform(32, 28, MEAN3, STD3, interpolation=mode)(x)
    images = x.float() / 255
    ref = TF.resize(images, [32], InterpolationMode(mode), antialias=True).clamp(0, 1)
    ref = TF.normalize(TF.center_crop(ref, [28, 28]), list(MEAN3), list(STD3))
    assert out.shape == (2, 3, 28, 28) and out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test__eval_transform_identity_on_grey() -> None:
    x = uint8_images((4, 1, 28, 28))
    out = EvalTransform(28, 28, (0.3,), (0.35,))(x)
    torch.testing.assert_close(out, normalised(x, (0.3,), (0.35,)), atol=1e-6, rtol=0)

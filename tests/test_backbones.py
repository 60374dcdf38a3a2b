"""Contract tests for every registered backbone, plus torchvision compatibility of ResNets.

Every test is parametrized over ``BACKBONES.names()`` (or its ResNet subset), so
registering a backbone adds its tests with no edit here.
"""

from __future__ import annotations

import copy
import inspect
import typing
from collections.abc import Iterator

import pytest
import torch
import torchvision
from torch import Tensor, nn

from backbones import BACKBONES, build_backbone
from backbones.resnet import ARCHS, SMALL_SUFFIX

IMG_SIZE = 32  # small enough for the whole file to run in seconds on 2 CPU cores
BATCH_SIZE = 2
CONFIG_TYPES = (int, float, bool, str)  # what the config system can validate
RESNET_NAMES = [n for n in BACKBONES.names() if n.removesuffix(SMALL_SUFFIX) in ARCHS]


def _build(name: str) -> nn.Module:
    """Build ``name`` deterministically, for ``IMG_SIZE`` inputs where the size is fixed."""
    # ViTs fix their input size at build time; other backbones take any size.
    params = inspect.signature(BACKBONES.get(name).factory).parameters
    kwargs = {"img_size": IMG_SIZE} if "img_size" in params else {}
    torch.manual_seed(0)
    return build_backbone(name, **kwargs)


def _images(batch_size: int = BATCH_SIZE, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch_size, 3, IMG_SIZE, IMG_SIZE, generator=g)


def _torchvision_resnet(name: str) -> torchvision.models.ResNet:
    """torchvision's model for ``name``, with the same stem surgery for ``_small`` names."""
    # On the meta device: skips torchvision's random init (most of this file's
    # runtime otherwise); every tensor it uses is later assigned from ours.
    with torch.device("meta"):
        model = getattr(torchvision.models, name.removesuffix(SMALL_SUFFIX))(weights=None)
        if name.endswith(SMALL_SUFFIX):
            model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            model.maxpool = nn.Identity()
    return model


def _randomize_batchnorm(model: nn.Module) -> None:
    """Give every BN distinct affine params and realistic running stats.

    At init all BNs are identical (weight 1, bias 0, mean 0, var 1), so a
    mis-mapped BN key would not change the output; after this it would.
    """
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.uniform_(-0.2, 0.2, generator=g)
            m.reset_running_stats()
            m.momentum = None  # cumulative average: one pass sets the batch statistics
    model.train()
    with torch.no_grad():
        model(_images(batch_size=4, seed=2))
    model.eval()


@pytest.fixture(scope="module", autouse=True)
def _single_thread() -> Iterator[None]:
    """Run this file on one intra-op thread, restoring the previous setting after."""
    # On 2 CPU cores shared with other jobs, a second thread mostly spin-waits for
    # a busy core: measured 17 s with one thread against 57-99 s with two.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def backbone(name: str) -> nn.Module:
    """One build per name, shared by that name's tests; a test that changes it uses a copy."""
    # Building (random init of up to 70M parameters) dominates this file's
    # runtime; module-scoped parametrization makes pytest group tests by name,
    # so only one model is alive at a time.
    return _build(name)


@pytest.mark.parametrize("name", BACKBONES.names())
def test__factory_signature_is_a_config_schema(name: str) -> None:
    factory = BACKBONES.get(name).factory
    hints = typing.get_type_hints(factory)
    for param in inspect.signature(factory).parameters.values():
        assert param.kind is param.KEYWORD_ONLY, param.name
        assert hints.get(param.name) in CONFIG_TYPES, param.name
        assert isinstance(param.default, hints[param.name]), param.name


@pytest.mark.parametrize("name", BACKBONES.names(), scope="module")
def test__forward_gives_finite_pooled_features_and_gradients(backbone: nn.Module) -> None:
    model = copy.deepcopy(backbone).train()
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear))

    h = model(_images())

    assert isinstance(model.num_features, int)
    assert h.shape == (BATCH_SIZE, model.num_features)
    assert torch.isfinite(h).all()
    # A random projection, not h.sum(): the sum of a LayerNorm output (ViT) is
    # constant, so its gradient would be zero however the graph is wired.
    (h * torch.randn(h.shape, generator=torch.Generator().manual_seed(3))).sum().backward()
    assert first.weight.grad is not None
    assert first.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", RESNET_NAMES, scope="module")
def test__resnet_state_dict_round_trips_through_torchvision(name: str, backbone: nn.Module) -> None:
    ours = copy.deepcopy(backbone)
    _randomize_batchnorm(ours)
    reference = _torchvision_resnet(name)
    sd = ours.state_dict()
    expected = {k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")}

    assert list(sd) == list(expected)
    shapes = {k: v.shape for k, v in sd.items()}
    expected_shapes = {k: v.shape for k, v in expected.items()}
    if name.endswith(SMALL_SUFFIX):
        assert shapes.pop("conv1.weight") == (64, 3, 3, 3)
        expected_shapes.pop("conv1.weight")
    assert shapes == expected_shapes

    result = reference.load_state_dict(sd, strict=False, assign=True)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"]
    assert result.unexpected_keys == []
    reference.fc = nn.Identity()
    x = _images()
    with torch.no_grad():
        torch.testing.assert_close(reference.eval()(x), ours.eval()(x))


@pytest.mark.parametrize("name", RESNET_NAMES, scope="module")
def test__resnet_taps_are_the_unpooled_last_two_stages(name: str, backbone: nn.Module) -> None:
    model = backbone.eval()
    x = _images()
    with torch.no_grad():
        taps = model.forward_taps(x)
        h = model(x)

    # The small stem drops two stride-2 steps (conv1 and the max-pool).
    res4_stride, res5_stride = (4, 8) if name.endswith(SMALL_SUFFIX) else (16, 32)
    res4_size, res5_size = IMG_SIZE // res4_stride, IMG_SIZE // res5_stride
    assert set(taps) == {"res4", "res5"}
    assert taps["res4"].shape == (BATCH_SIZE, model.num_features // 2, res4_size, res4_size)
    assert taps["res5"].shape == (BATCH_SIZE, model.num_features, res5_size, res5_size)
    torch.testing.assert_close(taps["res5"].mean(dim=(2, 3)), h)


def test__stride2_small_stem_halves_the_maps_and_keeps_the_keys() -> None:
    torch.manual_seed(0)
    stride1 = build_backbone("resnet18_small", width=16).eval()
    torch.manual_seed(0)
    stride2 = build_backbone("resnet18_small", width=16, stem_stride=2).eval()
    x = _images()
    with torch.no_grad():
        taps1, taps2 = stride1.forward_taps(x), stride2.forward_taps(x)
        h2 = stride2(x)

    # Same keys and shapes: the stride is not in the weights, only in the checkpoint metadata.
    sd1, sd2 = stride1.state_dict(), stride2.state_dict()
    assert {k: v.shape for k, v in sd1.items()} == {k: v.shape for k, v in sd2.items()}
    assert stride2.conv1.stride == (2, 2)
    assert taps1["res5"].shape[-1] == IMG_SIZE // 8
    assert taps2["res4"].shape[-1] == IMG_SIZE // 8 and taps2["res5"].shape[-1] == IMG_SIZE // 16
    torch.testing.assert_close(taps2["res5"].mean(dim=(2, 3)), h2)
    with pytest.raises(ValueError, match="stem_stride must be 1 or 2"):
        build_backbone("resnet18_small", stem_stride=4)
    with pytest.raises(TypeError):  # the 7×7 stem has no such option
        build_backbone("resnet18", stem_stride=2)


def test__resnet50_taps_have_detectron2_widths() -> None:
    x = torch.zeros(BATCH_SIZE, 3, 64, 64)
    with torch.no_grad():
        taps = build_backbone("resnet50").eval().forward_taps(x)

    assert taps["res4"].shape == (BATCH_SIZE, 1024, 4, 4)
    assert taps["res5"].shape == (BATCH_SIZE, 2048, 2, 2)


def test__duplicate_name_raises_and_keeps_the_original() -> None:
    name = BACKBONES.names()[0]
    original = BACKBONES.get(name).factory

    with pytest.raises(KeyError, match="already registered"):
        BACKBONES.register(name)(lambda: nn.Identity())

    assert BACKBONES.get(name).factory is original


def test__unknown_name_lists_available_names() -> None:
    with pytest.raises(KeyError) as info:
        build_backbone("resnet51")

    message = str(info.value)
    assert "resnet51" in message
    assert all(name in message for name in BACKBONES.names())


def test__unknown_kwarg_raises() -> None:
    with pytest.raises(TypeError):
        build_backbone(BACKBONES.names()[0], not_a_kwarg=1)

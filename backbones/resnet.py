"""ResNet backbones whose state dicts use torchvision's key names.

Key compatibility is the point of this module. ``ResNetBackbone`` subclasses
``torchvision.models.ResNet`` and only swaps the classifier for a parameter-free
``nn.Identity``, so ``state_dict()`` is torchvision's minus ``fc.weight`` and
``fc.bias``. A pretrained encoder therefore loads into
``torchvision.models.<arch>()`` with ``strict=False`` (only ``fc.*`` missing),
and the usual torchvision → Detectron2 conversion scripts apply unchanged.

Registered names: every architecture in ``ARCHS`` (``resnet18`` … ``resnet152``,
``wide_resnet50_2``, ``resnext50_32x4d``), plus a ``<arch>_small`` variant of
each for 28–64 px inputs. The small variants use the usual CIFAR-style stem: a
3×3 stride-1 ``conv1`` and no max-pool (Chen et al. 2020, SimCLR, appendix
B.9), with the same key names; only ``conv1.weight``'s shape differs.

Reference: [0] He, Zhang, Ren, Sun. Deep Residual Learning for Image
Recognition. CVPR 2016. https://arxiv.org/abs/1512.03385
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from backbones.base import BACKBONES


@dataclass(frozen=True)
class ResNetArch:
    """The hyperparameters torchvision's builder passes to ``ResNet`` for one arch."""

    block: type[BasicBlock | Bottleneck]
    layers: tuple[int, int, int, int]  # blocks per stage, layer1..layer4
    groups: int = 1
    width_per_group: int = 64


# Keys are torchvision builder names, so ``getattr(torchvision.models, arch)``
# builds the reference model; read-only because only registries may be mutable.
ARCHS: Mapping[str, ResNetArch] = MappingProxyType(
    {
        "resnet18": ResNetArch(BasicBlock, (2, 2, 2, 2)),
        "resnet34": ResNetArch(BasicBlock, (3, 4, 6, 3)),
        "resnet50": ResNetArch(Bottleneck, (3, 4, 6, 3)),
        "resnet101": ResNetArch(Bottleneck, (3, 4, 23, 3)),
        "resnet152": ResNetArch(Bottleneck, (3, 8, 36, 3)),
        "wide_resnet50_2": ResNetArch(Bottleneck, (3, 4, 6, 3), width_per_group=128),
        "resnext50_32x4d": ResNetArch(Bottleneck, (3, 4, 6, 3), groups=32, width_per_group=4),
    }
)

SMALL_SUFFIX = "_small"


class ResNetBackbone(ResNet):
    """torchvision's ResNet without a classifier; ``forward`` returns pooled features.

    Args:
        arch: A key of ``ARCHS``.
        small_stem: Use a 3×3 stride-1 ``conv1`` and no max-pool, for 28–64 px inputs.
        zero_init_residual: Zero the last BN weight of each residual branch, so that
            every block starts as the identity (Goyal et al. 2017). torchvision
            defaults to False; we default to True as the official VICReg and
            Barlow Twins code does.
        width: Channels of the stem and layer1 (torchvision: 64); the stages have
            width × (1, 2, 4, 8). Keys are unchanged; a width other than 64 only
            changes shapes. Narrow ResNets make CPU-scale experiments practical.
        stem_stride: Stride of the small stem's 3×3 ``conv1`` (1, the CIFAR stem, or 2:
            layer1 at half the input size, ~4× fewer FLOPs — at 28 px, 14×14 maps into
            layer1 instead of 28×28). Only with ``small_stem``; keys and shapes unchanged.
    """

    num_features: int

    def __init__(
        self, arch: str, *, small_stem: bool = False, zero_init_residual: bool = True,
        width: int = 64, stem_stride: int = 1,
    ) -> None:
        spec = ARCHS[arch]
        if stem_stride not in (1, 2) or (stem_stride != 1 and not small_stem):
            raise ValueError(f"stem_stride must be 1 or 2, and 2 only for the {SMALL_SUFFIX} "
                             f"variants (3×3 stem); got {stem_stride} for {arch}"
                             f"{SMALL_SUFFIX if small_stem else ''}")
        super().__init__(
            spec.block,
            list(spec.layers),
            zero_init_residual=zero_init_residual,
            groups=spec.groups,
            width_per_group=spec.width_per_group,
        )
        self.arch = arch
        if width != 64:
            self._rebuild_with_width(spec, width, zero_init_residual)
        self.num_features = 8 * width * spec.block.expansion
        # Parameter-free, so the state dict is torchvision's minus exactly fc.*.
        self.fc = nn.Identity()
        if small_stem:
            # At 32 px the 7×7/2 conv plus max-pool would leave 8×8 maps before layer1.
            self.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=stem_stride, padding=1,
                                   bias=False)
            # Same init torchvision applies to every conv in ResNet.__init__.
            nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
            self.maxpool = nn.Identity()

    def _rebuild_with_width(self, spec: ResNetArch, width: int, zero_init_residual: bool) -> None:
        """Rebuild stem and stages with ``width`` base channels, initialised as torchvision."""
        if width <= 0:
            raise ValueError(f"width must be positive, got {width}")
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = self._make_layer(spec.block, width, spec.layers[0])
        for i, name in enumerate(("layer2", "layer3", "layer4"), start=1):
            setattr(self, name, self._make_layer(spec.block, width * 2**i, spec.layers[i],
                                                 stride=2))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def forward_taps(self, x: Tensor) -> dict[str, Tensor]:
        """Unpooled stage outputs, named as in Detectron2.

        Args:
            x: Images ``(B, 3, H, W)``.

        Returns:
            ``"res4"``: layer3 output ``(B, num_features // 2, H/16, W/16)`` and
            ``"res5"``: layer4 output ``(B, num_features, H/32, W/32)``; both 4× larger
            in each spatial dimension with the small stem (2× with ``stem_stride=2``).
        """
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        res4 = self.layer3(x)
        res5 = self.layer4(res4)
        return {"res4": res4, "res5": res5}

    def forward(self, x: Tensor) -> Tensor:
        """Map images ``(B, 3, H, W)`` to pooled features ``(B, num_features)``."""
        h = self.avgpool(self.forward_taps(x)["res5"])  # (B, num_features, 1, 1)
        return torch.flatten(h, 1)  # (B, num_features)


def _make_factory(arch: str, small_stem: bool) -> Callable[..., ResNetBackbone]:
    """One registry entry point; a closure so the seven archs share one body."""

    if small_stem:
        def factory(*, zero_init_residual: bool = True, width: int = 64,
                    stem_stride: int = 1) -> ResNetBackbone:
            return ResNetBackbone(arch, small_stem=True, zero_init_residual=zero_init_residual,
                                  width=width, stem_stride=stem_stride)
    else:
        def factory(*, zero_init_residual: bool = True, width: int = 64) -> ResNetBackbone:
            return ResNetBackbone(arch, zero_init_residual=zero_init_residual, width=width)

    name = arch + SMALL_SUFFIX if small_stem else arch
    stem = "3×3 stem (stride 1, or 2), no max-pool" if small_stem else "standard 7×7 stem"
    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = (
        f"torchvision ``{arch}`` without ``fc`` ({stem}).\n\n"
        "Args:\n"
        "    zero_init_residual: Start every residual block as the identity.\n"
        "    width: Base channel width (torchvision: 64); stages are width × (1, 2, 4, 8).\n"
        + ("    stem_stride: 1 (CIFAR stem) or 2 (layer1 at half the input size, ~4× fewer "
           "FLOPs).\n" if small_stem else "")
    )
    return factory


def _register_all() -> None:
    for arch in ARCHS:
        for small_stem in (False, True):
            factory = _make_factory(arch, small_stem)
            BACKBONES.register(factory.__name__)(factory)


_register_all()

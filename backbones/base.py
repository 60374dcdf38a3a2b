"""The backbone registry and the contract every registered backbone follows.

``BACKBONES`` lives here rather than in ``backbones/__init__.py`` so that the
plugin modules (``resnet``, ``vit``, ``tiny``) can import it without importing
the package ``__init__``, which itself imports those plugins.

The contract (timm's ``num_classes=0`` feature-extractor contract, reduced):

- A registered factory is a plain function whose arguments are all
  keyword-only, have defaults, and are annotated with a simple type (``int``,
  ``float``, ``bool`` or ``str``). The config system checks user kwargs against
  ``inspect.signature`` and ``typing.get_type_hints`` of the factory, so the
  signature *is* the backbone's config schema.
- The factory returns an ``nn.Module`` with an ``int`` attribute
  ``num_features``.
- ``forward(x)`` maps a float batch ``(B, 3, H, W)`` to pooled features
  ``(B, num_features)``; there is no classifier head.
- ResNets also have ``forward_taps(x)``, returning the unpooled feature maps
  ``{"res4": layer3 output, "res5": layer4 output}`` for multi-layer evals
  (Detectron2's stage names).
- A backbone's ``state_dict`` keys are those of the upstream implementation it
  wraps (torchvision for ResNets, timm for ViTs), so checkpoints convert to and
  from those libraries without renaming.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from torch import Tensor, nn

from backbones.registry import Registry

BACKBONES: Registry[Callable[..., nn.Module]] = Registry("backbone")


@runtime_checkable
class Backbone(Protocol):
    """What callers may rely on in a built backbone (for type hints and checks)."""

    num_features: int  # width of forward()'s output

    def __call__(self, x: Tensor) -> Tensor:
        """Map images ``(B, 3, H, W)`` to pooled features ``(B, num_features)``."""
        ...


@runtime_checkable
class TapBackbone(Backbone, Protocol):
    """A backbone that also exposes unpooled intermediate feature maps."""

    def forward_taps(self, x: Tensor) -> dict[str, Tensor]:
        """Map images ``(B, 3, H, W)`` to named feature maps ``(B, C, h, w)``."""
        ...

"""Feature-extractor backbones, built by name from ``BACKBONES``.

See ``backbones/base.py`` for the contract every backbone follows. Adding a
backbone family is one file that registers its factories plus one import line
below; the contract tests pick it up with no test edit.
"""

from __future__ import annotations

from typing import Any

from torch import nn

# The plugin modules are imported for their side effect: each fills BACKBONES.
from backbones import resnet, tiny, vit  # noqa: F401
from backbones.base import BACKBONES, Backbone, TapBackbone

__all__ = ["BACKBONES", "Backbone", "TapBackbone", "build_backbone"]


def build_backbone(name: str, **kwargs: Any) -> nn.Module:
    """Build the backbone registered under ``name``.

    Args:
        name: A registered name, e.g. ``"resnet50"`` or ``"resnet18_small"``.
        **kwargs: Keyword arguments of that backbone's factory.

    Returns:
        A module whose ``forward`` maps ``(B, 3, H, W)`` to ``(B, num_features)``.

    Raises:
        KeyError: ``name`` is not registered; the message lists the available names.
        TypeError: A kwarg is unknown to the factory, or the factory broke the contract.
    """
    model = BACKBONES.build(name, **kwargs)
    # Catch a contract break here, where the name is known, rather than as a
    # shape error deep inside a method or eval.
    if not isinstance(getattr(model, "num_features", None), int):
        raise TypeError(f"backbone '{name}' has no int attribute 'num_features'")
    return model

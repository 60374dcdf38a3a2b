"""A tiny CNN for fast tests and smoke runs, not for results.

It is registered like any other backbone so that method, trainer and eval tests
run the real code paths in milliseconds. It has BatchNorm on purpose: the
trainer's SyncBN conversion and BN-in-train-mode behaviour must be exercised by
those tests, which a BN-free toy would silently skip.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from backbones.base import BACKBONES


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        # No conv bias: the following BatchNorm's shift makes it redundant.
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class TinyCNN(nn.Module):
    """Three 3×3 conv-BN-ReLU layers (strides 1, 2, 2) and global average pooling.

    Args:
        width: Channels of the first layer; the later two have ``2 * width``.
    """

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.num_features = 2 * width
        self.layers = nn.Sequential(
            _conv_bn_relu(3, width, stride=1),
            _conv_bn_relu(width, 2 * width, stride=2),
            _conv_bn_relu(2 * width, 2 * width, stride=2),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Map images ``(B, 3, H, W)`` to pooled features ``(B, num_features)``."""
        h = self.layers(x)  # (B, num_features, H/4, W/4)
        return torch.flatten(nn.functional.adaptive_avg_pool2d(h, 1), 1)  # (B, num_features)


@BACKBONES.register("tiny_cnn")
def tiny_cnn(*, width: int = 16) -> nn.Module:
    """A three-layer CNN with BatchNorm for tests; ``num_features`` = ``2 * width``.

    Args:
        width: Channels of the first conv layer.
    """
    return TinyCNN(width)

"""Vision Transformers from timm, returned as timm models (not wrapped).

Returning timm's own ``VisionTransformer`` keeps its state-dict keys
(``cls_token``, ``patch_embed.proj.weight``, ``blocks.0.attn.qkv.weight`` …), so
checkpoints move to and from timm without renaming. With ``num_classes=0`` timm
already satisfies our contract: ``forward`` returns the pooled (class-token)
features ``(B, num_features)``, and ``num_features`` is an int attribute.

Reference: [0] Dosovitskiy et al. An Image is Worth 16x16 Words: Transformers
for Image Recognition at Scale. ICLR 2021. https://arxiv.org/abs/2010.11929
"""

from __future__ import annotations

import timm
from torch import nn

from backbones.base import BACKBONES


def _create(timm_name: str, img_size: int, drop_path_rate: float) -> nn.Module:
    # pretrained=False: weights come only from our own checkpoints, and building
    # must never touch the network.
    return timm.create_model(
        timm_name,
        pretrained=False,
        num_classes=0,
        img_size=img_size,
        drop_path_rate=drop_path_rate,
    )


@BACKBONES.register("vit_small_patch16")
def vit_small_patch16(*, img_size: int = 224, drop_path_rate: float = 0.0) -> nn.Module:
    """ViT-S/16 (timm ``vit_small_patch16_224`` architecture); ``num_features`` = 384.

    Args:
        img_size: Input height and width; inputs must have exactly this size and
            it should be a multiple of the 16 px patch.
        drop_path_rate: Stochastic-depth rate of the last block (linear ramp from 0).
    """
    return _create("vit_small_patch16_224", img_size, drop_path_rate)


@BACKBONES.register("vit_base_patch16")
def vit_base_patch16(*, img_size: int = 224, drop_path_rate: float = 0.0) -> nn.Module:
    """ViT-B/16 (timm ``vit_base_patch16_224`` architecture); ``num_features`` = 768.

    Args:
        img_size: Input height and width; inputs must have exactly this size and
            it should be a multiple of the 16 px patch.
        drop_path_rate: Stochastic-depth rate of the last block (linear ramp from 0).
    """
    return _create("vit_base_patch16_224", img_size, drop_path_rate)

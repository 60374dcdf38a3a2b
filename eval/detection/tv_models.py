"""Faster / Mask R-CNN on ``torchvision.models.detection`` with our ResNet, from a d2-style config.

Two layouts, chosen by ``MODEL.BACKBONE.NAME`` as in Detectron2:

- ``build_resnet_backbone`` (C4): the trunk is stem + res2–res4 (stride 16, or 4 with a
  3×3 stem); proposals are ROI-aligned on res4 and res5 (``layer4``, with its stride-2
  first block) is the ROI head, then global average pooling and the box predictor, as
  Detectron2's ``Res5ROIHeads``. ``Res5ROIHeadsExtraNorm`` (MoCo) adds a norm after res5.
  The mask branch is Detectron2's C4 ``MaskRCNNConvUpsampleHead`` with no conv: a 2×2
  stride-2 deconvolution to 256 channels, ReLU, and a 1×1 class-specific predictor.
- ``build_resnet_fpn_backbone``: torchvision's FPN on res2–res5 with P6 by max-pool, the
  2-fc box head and the 4-conv mask head.

Norms follow ``MODEL.RESNETS.NORM``: ``BN`` / ``SyncBN`` / ``naiveSyncBN`` train BatchNorm
(SyncBN over one process is BN), ``FrozenBN`` freezes statistics and affine parameters.
``MODEL.BACKBONE.FREEZE_AT`` = k freezes the stem and the first k − 1 stages.

NOTE: the torchvision backend is the same protocol, not the same implementation, which is
why its numbers are recorded with ``backend = "torchvision"`` and never share a column
with Detectron2's. Known differences: ROIAlign without the half-pixel alignment of
Detectron2's ``ROIAlignV2``; smooth-L1 box losses (β = 1/9) where Detectron2's defaults
use L1 (``SMOOTH_L1_BETA`` 0); a box regressor for the background class too; no
aspect-ratio grouping of batches; one process (no SyncBN across GPUs); and the C4 mask
branch recomputes res5 (see ``_build_c4``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.models.resnet import ResNet
from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from eval.detection.configs import ConfigError, get

TRAINED_NORMS = ("BN", "SyncBN", "naiveSyncBN")
_STAGES = ("layer1", "layer2", "layer3", "layer4")


class NotAResNetError(ValueError):
    """The backbone is not a torchvision-style ResNet (``conv1``, ``bn1``, ``layer1..4``)."""


def require_resnet(backbone: nn.Module, name: str = "") -> ResNet:
    """``backbone`` if it is a torchvision-style ResNet, else a clear :class:`NotAResNetError`."""
    if isinstance(backbone, ResNet) and all(hasattr(backbone, s) for s in _STAGES):
        return backbone
    label = name or type(backbone).__name__
    raise NotAResNetError(
        f"detection transfer needs a ResNet backbone (torchvision keys conv1, bn1, layer1..4, "
        f"as Detectron2's C4/FPN models are built on res2..res5); '{label}' is a "
        f"{type(backbone).__name__}, which has no such stages")


def _stage_channels(resnet: ResNet) -> list[int]:
    out = []
    for stage in _STAGES:
        last = getattr(resnet, stage)[-1]
        out.append((last.bn3 if hasattr(last, "bn3") else last.bn2).num_features)
    return out


class Res5Head(nn.Module):
    """res5 (+ an optional norm) on ROI features; pooled for the box head, maps for masks.

    Args:
        res5: The backbone's ``layer4`` (shared between the box and mask heads).
        norm: MoCo's extra norm after res5, or ``nn.Identity``.
        pool: Global-average-pool and flatten (box head) or return maps (mask head).
    """

    def __init__(self, res5: nn.Module, norm: nn.Module, pool: bool) -> None:
        super().__init__()
        self.res5, self.norm, self.pool = res5, norm, pool

    def forward(self, x: Tensor) -> Tensor:
        """ROI features ``(R, C4, P, P)`` → ``(R, C5)`` pooled or ``(R, C5, P/2, P/2)``."""
        h = self.norm(self.res5(x))
        return torch.flatten(h.mean(dim=(2, 3)), 1) if self.pool else h


def _box_predictor(in_channels: int, num_classes: int) -> FastRCNNPredictor:
    predictor = FastRCNNPredictor(in_channels, num_classes + 1)
    # Detectron2's FastRCNNOutputLayers initialisation.
    nn.init.normal_(predictor.cls_score.weight, std=0.01)
    nn.init.normal_(predictor.bbox_pred.weight, std=0.001)
    for layer in (predictor.cls_score, predictor.bbox_pred):
        nn.init.zeros_(layer.bias)
    return predictor


def _freeze(module: nn.Module) -> nn.Module:
    """Frozen copy semantics of Detectron2's ``FrozenBatchNorm2d.convert_frozen_batchnorm``."""
    for p in module.parameters():
        p.requires_grad_(False)
    return _frozen_bn(module)


def _frozen_bn(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.BatchNorm2d):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        frozen.weight.copy_(module.weight.detach())
        frozen.bias.copy_(module.bias.detach())
        frozen.running_mean.copy_(module.running_mean)
        frozen.running_var.copy_(module.running_var)
        return frozen
    for name, child in module.named_children():
        new = _frozen_bn(child)
        if new is not child:
            setattr(module, name, new)
    return module


def _apply_norm_and_freeze(resnet: ResNet, cfg: Mapping[str, Any]) -> None:
    norm = get(cfg, "MODEL.RESNETS.NORM")
    if norm == "FrozenBN":
        _frozen_bn(resnet)
    elif norm not in TRAINED_NORMS:
        raise ConfigError(f"MODEL.RESNETS.NORM={norm!r}: the torchvision backend supports "
                          f"{', '.join((*TRAINED_NORMS, 'FrozenBN'))}")
    freeze_at = int(get(cfg, "MODEL.BACKBONE.FREEZE_AT"))
    if freeze_at >= 1:
        for name in ("conv1", "bn1"):
            setattr(resnet, name, _freeze(getattr(resnet, name)))
    for stage in _STAGES[: max(0, freeze_at - 1)]:
        setattr(resnet, stage, _freeze(getattr(resnet, stage)))


def _norm_layer(kind: str, channels: int) -> nn.Module:
    if kind == "":
        return nn.Identity()
    if kind in TRAINED_NORMS:
        return nn.BatchNorm2d(channels)
    if kind == "FrozenBN":
        return FrozenBatchNorm2d(channels)
    raise ConfigError(f"norm {kind!r} is not supported by the torchvision backend")


def _common_kwargs(cfg: Mapping[str, Any], mean: list[float], std: list[float]) -> dict[str, Any]:
    rpn, roi = get(cfg, "MODEL.RPN"), get(cfg, "MODEL.ROI_HEADS")
    return dict(
        min_size=tuple(get(cfg, "INPUT.MIN_SIZE_TRAIN")), max_size=get(cfg, "INPUT.MAX_SIZE_TRAIN"),
        image_mean=mean, image_std=std,
        rpn_pre_nms_top_n_train=rpn["PRE_NMS_TOPK_TRAIN"],
        rpn_pre_nms_top_n_test=rpn["PRE_NMS_TOPK_TEST"],
        rpn_post_nms_top_n_train=rpn["POST_NMS_TOPK_TRAIN"],
        rpn_post_nms_top_n_test=rpn["POST_NMS_TOPK_TEST"], rpn_nms_thresh=rpn["NMS_THRESH"],
        rpn_bg_iou_thresh=rpn["IOU_THRESHOLDS"][0], rpn_fg_iou_thresh=rpn["IOU_THRESHOLDS"][-1],
        rpn_batch_size_per_image=rpn["BATCH_SIZE_PER_IMAGE"],
        rpn_positive_fraction=rpn["POSITIVE_FRACTION"],
        box_score_thresh=roi["SCORE_THRESH_TEST"], box_nms_thresh=roi["NMS_THRESH_TEST"],
        box_detections_per_img=get(cfg, "TEST.DETECTIONS_PER_IMAGE"),
        box_fg_iou_thresh=roi["IOU_THRESHOLDS"][0], box_bg_iou_thresh=roi["IOU_THRESHOLDS"][0],
        box_batch_size_per_image=roi["BATCH_SIZE_PER_IMAGE"],
        box_positive_fraction=roi["POSITIVE_FRACTION"])


def _anchors(cfg: Mapping[str, Any], num_levels: int) -> AnchorGenerator:
    sizes = [tuple(level) for level in get(cfg, "MODEL.ANCHOR_GENERATOR.SIZES")]
    ratios = [tuple(r) for r in get(cfg, "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS")]
    if len(sizes) == 1 and num_levels > 1:
        sizes *= num_levels
    if len(sizes) != num_levels:
        raise ConfigError(f"MODEL.ANCHOR_GENERATOR.SIZES has {len(sizes)} levels, the model "
                          f"{num_levels}")
    return AnchorGenerator(tuple(sizes), tuple(ratios * num_levels if len(ratios) == 1
                                               else ratios))


def _build_c4(resnet: ResNet, cfg: Mapping[str, Any], num_classes: int,
              kwargs: dict[str, Any]) -> GeneralizedRCNN:
    channels = _stage_channels(resnet)
    trunk = nn.Sequential(OrderedDict(
        (n, getattr(resnet, n)) for n in ("conv1", "bn1", "relu", "maxpool", *_STAGES[:3])))
    trunk.out_channels = channels[2]  # type: ignore[assignment]
    extra = get(cfg, "MODEL.ROI_HEADS.NAME") == "Res5ROIHeadsExtraNorm"
    norm = _norm_layer(get(cfg, "MODEL.RESNETS.NORM"), channels[3]) if extra else nn.Identity()
    resolution = get(cfg, "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION")
    anchors = _anchors(cfg, 1)
    kwargs.update(
        rpn_anchor_generator=anchors,
        rpn_head=RPNHead(channels[2], anchors.num_anchors_per_location()[0]),
        box_roi_pool=MultiScaleRoIAlign(["0"], resolution, sampling_ratio=0),
        box_head=Res5Head(resnet.layer4, norm, pool=True),
        box_predictor=_box_predictor(channels[3], num_classes))
    if not get(cfg, "MODEL.MASK_ON"):
        return FasterRCNN(trunk, None, **kwargs)
    # NOTE: Detectron2's Res5ROIHeads reuses the box branch's res5 output of the foreground
    # proposals for masks; torchvision's RoIHeads pools them again and runs the same res5
    # weights a second time. Same function; train-mode BN sees a different batch.
    return MaskRCNN(
        trunk, None, mask_roi_pool=MultiScaleRoIAlign(["0"], resolution, sampling_ratio=0),
        mask_head=Res5Head(resnet.layer4, norm, pool=False),
        mask_predictor=MaskRCNNPredictor(channels[3], get(cfg, "MODEL.ROI_MASK_HEAD.CONV_DIM"),
                                         num_classes + 1), **kwargs)


def _build_fpn(resnet: ResNet, cfg: Mapping[str, Any], num_classes: int,
               kwargs: dict[str, Any]) -> GeneralizedRCNN:
    channels = _stage_channels(resnet)
    out_channels = get(cfg, "MODEL.FPN.OUT_CHANNELS")
    fpn_norm = get(cfg, "MODEL.FPN.NORM")
    body = BackboneWithFPN(
        resnet, {s: str(i) for i, s in enumerate(_STAGES)}, channels, out_channels,
        extra_blocks=LastLevelMaxPool(),
        norm_layer=(lambda c: _norm_layer(fpn_norm, c)) if fpn_norm else None)
    box, mask = get(cfg, "MODEL.ROI_BOX_HEAD"), get(cfg, "MODEL.ROI_MASK_HEAD")
    if box["NUM_CONV"] or box["NORM"]:
        raise ConfigError("the torchvision backend's FPN box head is the 2-fc head "
                          "(ROI_BOX_HEAD.NUM_CONV 0, NORM '')")
    anchors = _anchors(cfg, 5)
    levels = ["0", "1", "2", "3"]
    kwargs.update(
        rpn_anchor_generator=anchors,
        rpn_head=RPNHead(out_channels, anchors.num_anchors_per_location()[0]),
        box_roi_pool=MultiScaleRoIAlign(levels, box["POOLER_RESOLUTION"], sampling_ratio=0),
        box_head=TwoMLPHead(out_channels * box["POOLER_RESOLUTION"] ** 2, box["FC_DIM"]),
        box_predictor=_box_predictor(box["FC_DIM"], num_classes))
    if not get(cfg, "MODEL.MASK_ON"):
        return FasterRCNN(body, None, **kwargs)
    return MaskRCNN(
        body, None,
        mask_roi_pool=MultiScaleRoIAlign(levels, mask["POOLER_RESOLUTION"], sampling_ratio=0),
        mask_head=MaskRCNNHeads(out_channels, [mask["CONV_DIM"]] * mask["NUM_CONV"], 1),
        mask_predictor=MaskRCNNPredictor(mask["CONV_DIM"], mask["CONV_DIM"], num_classes + 1),
        **kwargs)


def build_detector(backbone: nn.Module, cfg: Mapping[str, Any],
                   name: str = "") -> GeneralizedRCNN:
    """Faster R-CNN (``MODEL.MASK_ON`` False) or Mask R-CNN around ``backbone``.

    Args:
        backbone: One of our ResNets, with its pretrained weights; it becomes part of the
            detector (pass a copy to keep the original).
        cfg: A config from ``eval.detection.configs.build_config``.
        name: The backbone's registry name, for error messages.

    Raises:
        NotAResNetError: ``backbone`` is not a ResNet.
        ConfigError: The config asks for something this backend does not build.
    """
    resnet = require_resnet(backbone, name)
    _apply_norm_and_freeze(resnet, cfg)
    num_classes = int(get(cfg, "MODEL.ROI_HEADS.NUM_CLASSES"))
    mean = [m / 255.0 for m in get(cfg, "MODEL.PIXEL_MEAN")]
    std = [s / 255.0 for s in get(cfg, "MODEL.PIXEL_STD")]
    if get(cfg, "INPUT.FORMAT") != "RGB":
        raise ConfigError("the torchvision backend reads RGB images (INPUT.FORMAT RGB)")
    kwargs = _common_kwargs(cfg, mean, std)
    arch = get(cfg, "MODEL.BACKBONE.NAME")
    if arch == "build_resnet_backbone":
        return _build_c4(resnet, cfg, num_classes, kwargs)
    if arch == "build_resnet_fpn_backbone":
        return _build_fpn(resnet, cfg, num_classes, kwargs)
    raise ConfigError(f"MODEL.BACKBONE.NAME={arch!r}: the torchvision backend builds "
                      "build_resnet_backbone (C4) and build_resnet_fpn_backbone (FPN)")


def set_input_sizes(model: GeneralizedRCNN, cfg: Mapping[str, Any], train: bool) -> None:
    """Detectron2's train (random choice of ``MIN_SIZE_TRAIN``) or test input sizes."""
    t = model.transform
    if train:
        t.min_size = tuple(get(cfg, "INPUT.MIN_SIZE_TRAIN"))
        t.max_size = get(cfg, "INPUT.MAX_SIZE_TRAIN")
    else:
        t.min_size = (get(cfg, "INPUT.MIN_SIZE_TEST"),)
        t.max_size = get(cfg, "INPUT.MAX_SIZE_TEST")

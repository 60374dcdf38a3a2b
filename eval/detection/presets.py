"""Detection protocol presets as diffs over Detectron2's defaults (eval-protocols §7.2–§7.3).

Presets (``PRESETS``):

- ``voc_R50_C4_24k``: MoCo's VOC recipe: Faster R-CNN R50-C4 with an extra norm after
  res5, SyncBN, nothing frozen, precise BN, VOC07+12 trainval → VOC07 test, 24k
  iterations at batch 16 / lr 0.02 on 8 GPUs, steps 18k/22k, warm-up 100, 480–800 px.
- ``coco_R50_C4_1x`` / ``coco_R50_C4_2x``: the same C4 recipe with masks on COCO 2017,
  90k (60k/80k) or 180k (120k/160k, MoCo's ``coco_R_50_C4_2x``) iterations, 640–800 px.
- ``coco_R50_FPN_1x``: stock Base-RCNN-FPN Mask R-CNN 1× with the MoCo input settings,
  SyncBN backbone, nothing frozen, precise BN.
- ``mini_voc_C4`` / ``mini_coco_C4`` / ``mini_coco_FPN``: the same models sized for the
  64 px Fashion-MNIST mosaics on a CPU (``eval.detection.mini``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

IMAGENET_MEAN_255 = [123.675, 116.280, 103.530]  # RGB, eval-protocols §1.2
IMAGENET_STD_255 = [58.395, 57.120, 57.375]

# Detectron2's defaults for every key our presets or the torchvision backend read
# (d2: detectron2/config/defaults.py). A test compares them with get_cfg() where d2 imports.
D2_DEFAULTS: dict[str, Any] = {
    "MODEL": {
        "META_ARCHITECTURE": "GeneralizedRCNN",
        "MASK_ON": False,
        "WEIGHTS": "",
        "PIXEL_MEAN": [103.530, 116.280, 123.675],
        "PIXEL_STD": [1.0, 1.0, 1.0],
        "BACKBONE": {"NAME": "build_resnet_backbone", "FREEZE_AT": 2},
        "RESNETS": {"DEPTH": 50, "OUT_FEATURES": ["res4"], "NUM_GROUPS": 1, "NORM": "FrozenBN",
                    "WIDTH_PER_GROUP": 64, "STRIDE_IN_1X1": True, "RES5_DILATION": 1,
                    "RES2_OUT_CHANNELS": 256, "STEM_OUT_CHANNELS": 64},
        "FPN": {"IN_FEATURES": [], "OUT_CHANNELS": 256, "NORM": "", "FUSE_TYPE": "sum"},
        "ANCHOR_GENERATOR": {"SIZES": [[32, 64, 128, 256, 512]],
                             "ASPECT_RATIOS": [[0.5, 1.0, 2.0]]},
        "RPN": {"IN_FEATURES": ["res4"], "IOU_THRESHOLDS": [0.3, 0.7],
                "BATCH_SIZE_PER_IMAGE": 256, "POSITIVE_FRACTION": 0.5,
                "PRE_NMS_TOPK_TRAIN": 12000, "PRE_NMS_TOPK_TEST": 6000,
                "POST_NMS_TOPK_TRAIN": 2000, "POST_NMS_TOPK_TEST": 1000, "NMS_THRESH": 0.7},
        "ROI_HEADS": {"NAME": "Res5ROIHeads", "NUM_CLASSES": 80, "IN_FEATURES": ["res4"],
                      "IOU_THRESHOLDS": [0.5], "BATCH_SIZE_PER_IMAGE": 512,
                      "POSITIVE_FRACTION": 0.25, "SCORE_THRESH_TEST": 0.05,
                      "NMS_THRESH_TEST": 0.5},
        "ROI_BOX_HEAD": {"NAME": "", "NUM_FC": 0, "FC_DIM": 1024, "NUM_CONV": 0,
                         "CONV_DIM": 256, "NORM": "", "POOLER_RESOLUTION": 14,
                         "POOLER_SAMPLING_RATIO": 0, "POOLER_TYPE": "ROIAlignV2"},
        "ROI_MASK_HEAD": {"NAME": "MaskRCNNConvUpsampleHead", "POOLER_RESOLUTION": 14,
                          "POOLER_SAMPLING_RATIO": 0, "NUM_CONV": 0, "CONV_DIM": 256,
                          "NORM": "", "POOLER_TYPE": "ROIAlignV2"},
    },
    "INPUT": {"MIN_SIZE_TRAIN": [800], "MIN_SIZE_TRAIN_SAMPLING": "choice",
              "MAX_SIZE_TRAIN": 1333, "MIN_SIZE_TEST": 800, "MAX_SIZE_TEST": 1333,
              "RANDOM_FLIP": "horizontal", "FORMAT": "BGR", "MASK_FORMAT": "polygon"},
    "DATASETS": {"TRAIN": [], "TEST": []},
    "DATALOADER": {"NUM_WORKERS": 4, "ASPECT_RATIO_GROUPING": True,
                   "FILTER_EMPTY_ANNOTATIONS": True},
    "SOLVER": {"LR_SCHEDULER_NAME": "WarmupMultiStepLR", "MAX_ITER": 40000, "BASE_LR": 0.001,
               "MOMENTUM": 0.9, "NESTEROV": False, "WEIGHT_DECAY": 0.0001,
               "WEIGHT_DECAY_NORM": 0.0, "GAMMA": 0.1, "STEPS": [30000],
               "WARMUP_FACTOR": 1.0 / 1000, "WARMUP_ITERS": 1000, "WARMUP_METHOD": "linear",
               "CHECKPOINT_PERIOD": 5000, "IMS_PER_BATCH": 16, "REFERENCE_WORLD_SIZE": 0},
    "TEST": {"EVAL_PERIOD": 0, "DETECTIONS_PER_IMAGE": 100,
             "PRECISE_BN": {"ENABLED": False, "NUM_ITER": 200}},
    "OUTPUT_DIR": "./output",
    "SEED": -1,
    "VERSION": 2,
}


def merge(base: Mapping[str, Any], *diffs: Mapping[str, Any]) -> dict[str, Any]:
    """Deep copy of ``base`` with each diff merged in (nested dicts merged, others replaced)."""
    out = copy.deepcopy(dict(base))
    for diff in diffs:
        for key, value in diff.items():
            if isinstance(value, Mapping) and isinstance(out.get(key), dict):
                out[key] = merge(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
    return out


# NOTE: eval-protocols §7.2: torchvision-format weights need RGB input, ImageNet mean/std
# in 0–255 units and the stride in the 3×3 conv (STRIDE_IN_1X1 False).
_MOCO_INPUT = {"MODEL": {"PIXEL_MEAN": IMAGENET_MEAN_255, "PIXEL_STD": IMAGENET_STD_255,
                         "RESNETS": {"STRIDE_IN_1X1": False}},
               "INPUT": {"FORMAT": "RGB"}}
# d2 Base-RCNN-C4.yaml + moco detection/configs/Base-RCNN-C4-BN.yaml (§7.3).
# NOTE: MoCo moved SyncBN → naiveSyncBN (d00ef73, "SyncBN seems to cause larger variance");
# we keep SyncBN as the issue and VISSL's cvpr21 config do (MODEL.RESNETS.NORM=naiveSyncBN
# switches). With one process SyncBN is plain BN.
_C4_BN = {"MODEL": {"RPN": {"PRE_NMS_TOPK_TEST": 6000, "POST_NMS_TOPK_TEST": 1000},
                    "ROI_HEADS": {"NAME": "Res5ROIHeadsExtraNorm"},
                    "BACKBONE": {"FREEZE_AT": 0}, "RESNETS": {"NORM": "SyncBN"}},
          "TEST": {"PRECISE_BN": {"ENABLED": True}},
          "SOLVER": {"IMS_PER_BATCH": 16, "BASE_LR": 0.02}}
_COCO = {"MODEL": {"MASK_ON": True},
         "INPUT": {"MIN_SIZE_TRAIN": [640, 672, 704, 736, 768, 800], "MIN_SIZE_TEST": 800},
         "DATASETS": {"TRAIN": ["coco_2017_train"], "TEST": ["coco_2017_val"]}}
_1X = {"SOLVER": {"STEPS": [60000, 80000], "MAX_ITER": 90000}}
_FPN = {"MODEL": {
    "BACKBONE": {"NAME": "build_resnet_fpn_backbone"},
    "RESNETS": {"OUT_FEATURES": ["res2", "res3", "res4", "res5"]},
    "FPN": {"IN_FEATURES": ["res2", "res3", "res4", "res5"]},
    "ANCHOR_GENERATOR": {"SIZES": [[32], [64], [128], [256], [512]]},
    "RPN": {"IN_FEATURES": ["p2", "p3", "p4", "p5", "p6"], "PRE_NMS_TOPK_TRAIN": 2000,
            "PRE_NMS_TOPK_TEST": 1000, "POST_NMS_TOPK_TRAIN": 1000, "POST_NMS_TOPK_TEST": 1000},
    "ROI_HEADS": {"NAME": "StandardROIHeads", "IN_FEATURES": ["p2", "p3", "p4", "p5"]},
    "ROI_BOX_HEAD": {"NAME": "FastRCNNConvFCHead", "NUM_FC": 2, "POOLER_RESOLUTION": 7},
    "ROI_MASK_HEAD": {"NAME": "MaskRCNNConvUpsampleHead", "NUM_CONV": 4,
                      "POOLER_RESOLUTION": 14}}}
# Mini: 64 px mosaics of 28 px items. Anchors and ROI work scaled down so that a few
# hundred CPU iterations learn; the models are the paper ones.
_MINI = {
    "MODEL": {"ANCHOR_GENERATOR": {"SIZES": [[8, 16, 32]]},
              "RPN": {"PRE_NMS_TOPK_TRAIN": 1000, "POST_NMS_TOPK_TRAIN": 200,
                      "PRE_NMS_TOPK_TEST": 500, "POST_NMS_TOPK_TEST": 100,
                      "BATCH_SIZE_PER_IMAGE": 64},
              "ROI_HEADS": {"BATCH_SIZE_PER_IMAGE": 32},
              "ROI_BOX_HEAD": {"POOLER_RESOLUTION": 6}, "ROI_MASK_HEAD": {"POOLER_RESOLUTION": 6}},
    "INPUT": {"MIN_SIZE_TRAIN": [56, 64, 72], "MAX_SIZE_TRAIN": 128, "MIN_SIZE_TEST": 64,
              "MAX_SIZE_TEST": 128},
    "SOLVER": {"IMS_PER_BATCH": 4, "BASE_LR": 0.02, "MAX_ITER": 200, "STEPS": [140, 180],
               "WARMUP_ITERS": 50, "CHECKPOINT_PERIOD": 100000},
    "TEST": {"PRECISE_BN": {"NUM_ITER": 10}},
    "DATALOADER": {"NUM_WORKERS": 0},
}
_MINI_FPN = {"MODEL": {"ANCHOR_GENERATOR": {"SIZES": [[4], [8], [16], [32], [64]]},
                       "ROI_BOX_HEAD": {"POOLER_RESOLUTION": 7, "FC_DIM": 256},
                       "ROI_MASK_HEAD": {"POOLER_RESOLUTION": 14, "NUM_CONV": 2},
                       "FPN": {"OUT_CHANNELS": 64}}}


@dataclass(frozen=True)
class Preset:
    """A named protocol.

    Attributes:
        name: Key in :data:`PRESETS`.
        task: ``"voc"`` or ``"coco"``.
        d2: The diff over :data:`D2_DEFAULTS`.
        reference_gpus: GPUs the recipe's batch and schedule were written for.
        mini: Sized for the Fashion-MNIST mosaics (inputs scaled 4× for a 7×7-stem backbone).
    """

    name: str
    task: str
    d2: dict[str, Any] = field(repr=False)
    reference_gpus: int = 8
    mini: bool = False


_VOC_C4 = merge(_C4_BN, _MOCO_INPUT, {
    "MODEL": {"MASK_ON": False, "ROI_HEADS": {"NUM_CLASSES": 20}},
    "INPUT": {"MIN_SIZE_TRAIN": list(range(480, 801, 32)), "MIN_SIZE_TEST": 800},
    "DATASETS": {"TRAIN": ["voc_2007_trainval", "voc_2012_trainval"], "TEST": ["voc_2007_test"]},
    "SOLVER": {"STEPS": [18000, 22000], "MAX_ITER": 24000, "WARMUP_ITERS": 100}})
_COCO_C4_1X = merge(_C4_BN, _MOCO_INPUT, _COCO, _1X)
# NOTE: VISSL's FPN config uses BASE_LR 0.001 (eval-protocols §7.3); we keep the stock
# Base-RCNN-FPN 0.02 (its "SyncBN on the backbone only, FREEZE_AT 0, PRECISE_BN" otherwise).
_COCO_FPN_1X = merge(_FPN, _MOCO_INPUT, _COCO, _1X, {
    "MODEL": {"BACKBONE": {"FREEZE_AT": 0}, "RESNETS": {"NORM": "SyncBN"}},
    "TEST": {"PRECISE_BN": {"ENABLED": True}}, "SOLVER": {"IMS_PER_BATCH": 16, "BASE_LR": 0.02}})
PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("voc_R50_C4_24k", "voc", _VOC_C4),
    Preset("coco_R50_C4_1x", "coco", _COCO_C4_1X),
    Preset("coco_R50_C4_2x", "coco", merge(_COCO_C4_1X, {
        "SOLVER": {"STEPS": [120000, 160000], "MAX_ITER": 180000}})),
    Preset("coco_R50_FPN_1x", "coco", _COCO_FPN_1X),
    Preset("mini_voc_C4", "voc", merge(_VOC_C4, _MINI, {
        "DATASETS": {"TRAIN": ["voc_2007_trainval"]}}), reference_gpus=1, mini=True),
    Preset("mini_coco_C4", "coco", merge(_COCO_C4_1X, _MINI, {
        "INPUT": {"MASK_FORMAT": "bitmask"}}), reference_gpus=1, mini=True),
    Preset("mini_coco_FPN", "coco", merge(_COCO_FPN_1X, _MINI, _MINI_FPN, {
        "INPUT": {"MASK_FORMAT": "bitmask"}}), reference_gpus=1, mini=True),
)}

"""Detection protocols as Detectron2 configs built in code (eval-protocols §7.2–§7.3).

A config is a plain nested dict whose keys mirror Detectron2's ``CfgNode`` (``MODEL.RPN.
NMS_THRESH`` …). :data:`D2_DEFAULTS` restates the part of ``detectron2/config/defaults.py``
that the protocols and the torchvision backend read; a preset is a diff over it; the
backbone, the dataset's class count, the GPU count (linear scaling rule) and ``key=value``
overrides are applied by :func:`build_config`. Both backends read the same dict: Detectron2
through :func:`to_cfgnode` (only where ``detectron2`` imports), the torchvision backend
directly (``eval.detection.tv_models``).

The presets and the mirror of Detectron2's defaults are in ``eval.detection.presets``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import yaml

from backbones.resnet import ARCHS, SMALL_SUFFIX
from eval.detection.presets import D2_DEFAULTS, PRESETS, Preset, merge

__all__ = ["D2_DEFAULTS", "PRESETS", "ConfigError", "Preset", "apply_overrides", "build_config",
           "check_detectron2_compatible", "flatten", "get", "merge", "resnet_settings",
           "scale_to_gpus", "to_cfgnode", "to_yaml"]


class ConfigError(ValueError):
    """A protocol cannot be built as asked (unknown key, unsupported backbone)."""


def get(cfg: Mapping[str, Any], key: str) -> Any:
    """``cfg["A"]["B"]["C"]`` for ``key = "A.B.C"``."""
    node: Any = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _set(cfg: dict[str, Any], key: str, value: Any) -> None:
    *parents, last = key.split(".")
    node = cfg
    for part in parents:
        node = node[part]
    node[last] = value


def flatten(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"A.B": value}`` for every leaf."""
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _coerce(value: Any, like: Any, key: str) -> Any:
    """``value`` with the type of the default ``like`` (int → float allowed, tuple → list)."""
    if isinstance(like, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if isinstance(like, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(like, list):
        return list(value) if isinstance(value, (list, tuple)) else [value]
    if like is not None and not isinstance(value, type(like)):
        raise ConfigError(f"{key}: expected {type(like).__name__}, got {value!r}")
    return value


def parse_overrides(items: Iterable[str]) -> list[tuple[str, Any, str]]:
    """``["SOLVER.BASE_LR=0.01"]`` → ``[(key, YAML-parsed value, raw text)]``."""
    out = []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not KEY=VALUE (e.g. SOLVER.BASE_LR=0.01)")
        key, text = item.split("=", 1)
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"override '{item}': value is not YAML ({e})") from None
        out.append((key.strip(), value, text))
    return out


def apply_overrides(cfg: dict[str, Any], overrides: Iterable[str]
                    ) -> tuple[dict[str, Any], list[str]]:
    """Apply ``KEY=VALUE`` overrides to ``cfg`` in place.

    Keys of :data:`D2_DEFAULTS` are type-checked here. Other keys are returned unapplied
    (``"KEY=VALUE"``): Detectron2 validates them against its full defaults
    (:func:`to_cfgnode`); the torchvision backend refuses them.

    Raises:
        ConfigError: Not ``KEY=VALUE``, a group instead of a key, or a wrong value type.
    """
    known = flatten(cfg)
    rest = []
    for key, value, text in parse_overrides(overrides):
        if key in known:
            _set(cfg, key, _coerce(value, known[key], key))
        elif any(k.startswith(key + ".") for k in known):
            raise ConfigError(f"override '{key}' names a group; set one of its keys: "
                              + ", ".join(k for k in known if k.startswith(key + ".")))
        else:
            rest.append(f"{key}={text}")
    return cfg, rest


def resnet_settings(backbone: str, backbone_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``MODEL.RESNETS`` values for one of our ResNets, and whether its stem is 3×3.

    Raises:
        ConfigError: ``backbone`` is not one of our ResNets.
    """
    arch = backbone.removesuffix(SMALL_SUFFIX)
    if arch not in ARCHS:
        raise ConfigError(f"detection needs a ResNet backbone ({', '.join(ARCHS)}, or their "
                          f"{SMALL_SUFFIX} variants); '{backbone}' is not one")
    spec = ARCHS[arch]
    width = int(backbone_kwargs.get("width", 64))
    bottleneck = spec.block.expansion == 4
    depth = {(2, 2, 2, 2): 18, (3, 4, 6, 3): 50 if bottleneck else 34, (3, 4, 23, 3): 101,
             (3, 8, 36, 3): 152}[spec.layers]
    per_group = width * spec.width_per_group
    if per_group % 64:
        raise ConfigError(f"{backbone} width {width}: no integer WIDTH_PER_GROUP")
    return {"DEPTH": depth, "NUM_GROUPS": spec.groups, "WIDTH_PER_GROUP": per_group // 64,
            "STEM_OUT_CHANNELS": width,
            "RES2_OUT_CHANNELS": width * spec.block.expansion,
            "STRIDE_IN_1X1": False, "_small_stem": backbone.endswith(SMALL_SUFFIX)}


def scale_to_gpus(cfg: dict[str, Any], num_gpus: int, reference_gpus: int) -> dict[str, Any]:
    """The linear scaling rule (Goyal et al. 2017), as Detectron2's ``auto_scale_workers``.

    Images per GPU stay fixed: batch and learning rate × ``num_gpus / reference_gpus``,
    iteration counts (schedule, warm-up, checkpoint period) ÷ the same factor.
    """
    if num_gpus < 1:
        raise ConfigError(f"num_gpus must be ≥ 1, got {num_gpus}")
    solver = cfg["SOLVER"]
    if num_gpus == reference_gpus:
        solver["REFERENCE_WORLD_SIZE"] = 0
        return cfg
    factor = num_gpus / reference_gpus
    batch = solver["IMS_PER_BATCH"] * factor
    if batch != int(batch) or batch < 1:
        raise ConfigError(f"IMS_PER_BATCH {solver['IMS_PER_BATCH']} on {reference_gpus} GPUs "
                          f"does not scale to {num_gpus} GPUs")
    solver["IMS_PER_BATCH"] = int(batch)
    solver["BASE_LR"] = solver["BASE_LR"] * factor
    for key in ("MAX_ITER", "WARMUP_ITERS", "CHECKPOINT_PERIOD"):
        solver[key] = int(round(solver[key] / factor))
    solver["STEPS"] = [int(round(s / factor)) for s in solver["STEPS"]]
    cfg["TEST"]["EVAL_PERIOD"] = int(round(cfg["TEST"]["EVAL_PERIOD"] / factor))
    solver["REFERENCE_WORLD_SIZE"] = 0  # already scaled: Detectron2 must not scale again
    return cfg


def _scale_inputs(cfg: dict[str, Any], factor: int) -> None:
    """Mini presets on a 7×7-stem backbone: images and anchors ``factor``× larger."""
    inp = cfg["INPUT"]
    inp["MIN_SIZE_TRAIN"] = [s * factor for s in inp["MIN_SIZE_TRAIN"]]
    for key in ("MAX_SIZE_TRAIN", "MIN_SIZE_TEST", "MAX_SIZE_TEST"):
        inp[key] *= factor
    anchors = cfg["MODEL"]["ANCHOR_GENERATOR"]
    anchors["SIZES"] = [[s * factor for s in level] for level in anchors["SIZES"]]


def build_config(preset: str, *, backbone: str, backbone_kwargs: Mapping[str, Any] | None = None,
                 num_classes: int | None = None, num_gpus: int | None = None,
                 overrides: Iterable[str] = (), weights: str = "", output_dir: str = "",
                 pixel_mean_std: tuple[list[float], list[float]] | None = None,
                 ) -> tuple[dict[str, Any], list[str]]:
    """The full config of one run.

    Args:
        preset: A key of :data:`PRESETS`.
        backbone: Our registered backbone name (``resnet50``).
        backbone_kwargs: Its factory kwargs (``width``).
        num_classes: ``ROI_HEADS.NUM_CLASSES`` (default: the preset's).
        num_gpus: Scale batch, lr and schedule from the preset's reference GPU count;
            None keeps the recipe as written.
        overrides: ``KEY=VALUE`` strings, applied last.
        weights: ``MODEL.WEIGHTS``.
        output_dir: ``OUTPUT_DIR``.
        pixel_mean_std: RGB mean and std in [0, 1] units (default: the preset's ImageNet values).

    Returns:
        ``(config, unknown_overrides)``: overrides of keys outside :data:`D2_DEFAULTS`
        (for Detectron2 to validate and apply).
    """
    if preset not in PRESETS:
        raise ConfigError(f"unknown detection preset '{preset}'; valid: {', '.join(PRESETS)}")
    spec = PRESETS[preset]
    cfg = merge(D2_DEFAULTS, spec.d2)
    resnets = resnet_settings(backbone, backbone_kwargs or {})
    small_stem = resnets.pop("_small_stem")
    cfg["MODEL"]["RESNETS"].update(resnets)
    if spec.mini and not small_stem:
        # NOTE: a 7×7/2 stem + max-pool leaves res4 at 4×4 on 64 px mosaics; upsample 4×.
        _scale_inputs(cfg, 4)
    if num_classes is not None:
        cfg["MODEL"]["ROI_HEADS"]["NUM_CLASSES"] = int(num_classes)
    if pixel_mean_std is not None:
        cfg["MODEL"]["PIXEL_MEAN"] = [round(255.0 * m, 4) for m in pixel_mean_std[0]]
        cfg["MODEL"]["PIXEL_STD"] = [round(255.0 * s, 4) for s in pixel_mean_std[1]]
    if num_gpus is not None:
        scale_to_gpus(cfg, num_gpus, spec.reference_gpus)
    cfg["MODEL"]["WEIGHTS"] = weights
    cfg["OUTPUT_DIR"] = output_dir or cfg["OUTPUT_DIR"]
    return apply_overrides(cfg, overrides)


def check_detectron2_compatible(cfg: Mapping[str, Any], backbone: str) -> None:
    """Raise :class:`ConfigError` where Detectron2 cannot build our backbone as configured."""
    if backbone.endswith(SMALL_SUFFIX):
        raise ConfigError(f"{backbone}: Detectron2's ResNet stem is 7×7/2 + max-pool; a "
                          f"{SMALL_SUFFIX} (3×3 stem) backbone runs on the torchvision "
                          "backend only")
    depth = get(cfg, "MODEL.RESNETS.DEPTH")
    if depth < 50 and get(cfg, "MODEL.ROI_HEADS.NAME").startswith("Res5ROIHeads"):
        raise ConfigError(f"{backbone}: Detectron2's Res5ROIHeads builds bottleneck res5 blocks; "
                          "a C4 model needs ResNet-50 or deeper (use an FPN preset or the "
                          "torchvision backend)")


def to_yaml(cfg: Mapping[str, Any]) -> str:
    """The config as YAML (``detectron2``'s ``merge_from_file`` reads it)."""
    return yaml.safe_dump(_plain(cfg), sort_keys=True, default_flow_style=None)


def _plain(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def to_cfgnode(cfg: Mapping[str, Any], extra_overrides: Iterable[str] = ()) -> Any:
    """A Detectron2 ``CfgNode``: ``get_cfg()`` ← our dict ← the extra ``KEY=VALUE`` overrides.

    Raises:
        ImportError: detectron2 is not installed.
    """
    from detectron2.config import CfgNode, get_cfg

    node = get_cfg()
    node.merge_from_other_cfg(CfgNode(_plain(cfg)))
    pairs: list[str] = []
    for item in extra_overrides:
        key, value = item.split("=", 1)
        pairs += [key, value]
    if pairs:
        node.merge_from_list(pairs)
    return node


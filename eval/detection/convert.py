"""Convert a torchvision-format ResNet to Detectron2's weight format (eval-protocols §7.2).

Usage::

    python -m eval.detection.convert IN.pth OUT.pkl [--backbone NAME] [--allow-partial]

``IN`` is any checkpoint ``eval/run_all.py`` accepts (read by ``eval.checkpoint.
load_backbone``, which strips the MoCo / VICReg / SimSiam / … prefixes and the classifier
head). Every key is renamed by the documented rules, applied in order:

1. a key without ``layer`` gets the prefix ``stem.`` (``conv1.weight`` → ``stem.conv1.weight``);
2. ``layer1..4`` → ``res2..5``;
3. ``bn1/2/3`` → ``conv1/2/3.norm`` (``stem.bn1.*`` → ``stem.conv1.norm.*``);
4. ``downsample.0`` → ``shortcut``, ``downsample.1`` → ``shortcut.norm``.

BN ``running_mean`` / ``running_var`` are kept; ``num_batches_tracked`` has no Detectron2
counterpart and is dropped and reported; a classifier ``fc.*`` is dropped and reported. Any
other key that does not land on a Detectron2 ResNet name is an error. The output is a
pickle of ``{"model": {name: numpy array}, "__author__": "sslbench", "matching_heuristics":
True, "sslbench": {...provenance}}``, which ``DetectionCheckpointer`` loads with its
suffix matching (``backbone.res2.0.conv1.weight`` and, for C4, ``roi_heads.res5.*``).
"""

from __future__ import annotations

import argparse
import pickle
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

_NORM = r"norm\.(weight|bias|running_mean|running_var)"
D2_RESNET_KEY = re.compile(
    rf"stem\.conv1\.(weight|{_NORM})|res[2-5]\.\d+\.(conv[123]|shortcut)\.(weight|{_NORM})")
AUTHOR = "sslbench"


class ConversionError(ValueError):
    """The state dict is not a torchvision ResNet, or a key has no Detectron2 name."""


@dataclass
class ConversionReport:
    """What the conversion did.

    Attributes:
        converted: ``{torchvision key: Detectron2 key}``.
        dropped_num_batches_tracked: BN counters (no Detectron2 counterpart).
        dropped_head: Classifier keys (``fc.*``).
        shapes: ``{Detectron2 key: shape}``.
    """

    converted: dict[str, str] = field(default_factory=dict)
    dropped_num_batches_tracked: list[str] = field(default_factory=list)
    dropped_head: list[str] = field(default_factory=list)
    shapes: dict[str, list[int]] = field(default_factory=dict)

    def summary(self) -> str:
        """One line per category."""
        return (f"converted {len(self.converted)} tensors; dropped "
                f"{len(self.dropped_num_batches_tracked)} num_batches_tracked and "
                f"{len(self.dropped_head)} classifier keys"
                + (f" ({', '.join(self.dropped_head)})" if self.dropped_head else ""))


def d2_name(key: str) -> str:
    """The Detectron2 name of one torchvision ResNet key (rules 1–4 of the module docstring)."""
    new = key if "layer" in key else "stem." + key
    new = re.sub(r"(^|\.)layer([1-4])\.", lambda m: f"{m.group(1)}res{int(m.group(2)) + 1}.", new)
    new = re.sub(r"(^|\.)bn([123])\.", r"\1conv\2.norm.", new)
    return new.replace(".downsample.0.", ".shortcut.").replace(".downsample.1.", ".shortcut.norm.")


def torchvision_to_detectron2(state_dict: Mapping[str, Tensor]
                              ) -> tuple[dict[str, np.ndarray], ConversionReport]:
    """Rename a torchvision ResNet state dict to Detectron2's ResNet names.

    Raises:
        ConversionError: No ``layer1..4`` keys (not a ResNet), a key that maps to no
            Detectron2 ResNet name, or two keys that map to one name.
    """
    if not any(k.startswith(f"layer{i}.") for k in state_dict for i in range(1, 5)):
        sample = ", ".join(list(state_dict)[:4])
        raise ConversionError("not a torchvision ResNet state dict (no layer1..layer4 keys; "
                              f"first keys: {sample}); detection transfer needs a ResNet")
    out: dict[str, np.ndarray] = {}
    report, unmapped = ConversionReport(), []
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked"):
            report.dropped_num_batches_tracked.append(key)
            continue
        if key.startswith("fc."):
            report.dropped_head.append(key)
            continue
        new = d2_name(key)
        if not D2_RESNET_KEY.fullmatch(new):
            unmapped.append(f"{key} → {new}")
            continue
        if new in out:
            raise ConversionError(f"two keys map to {new}")
        out[new] = value.detach().cpu().numpy()
        report.converted[key] = new
        report.shapes[new] = list(out[new].shape)
    if unmapped:
        raise ConversionError(f"{len(unmapped)} key(s) have no Detectron2 ResNet name: "
                              + "; ".join(unmapped[:10]))
    return out, report


def save_detectron2(weights: Mapping[str, np.ndarray], path: str | Path,
                    provenance: Mapping[str, Any] | None = None) -> Path:
    """Pickle ``{"model", "__author__", "matching_heuristics", "sslbench"}`` to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"model": dict(weights), "__author__": AUTHOR, "matching_heuristics": True,
            "sslbench": dict(provenance or {})}
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        pickle.dump(body, f, protocol=4)
    tmp.replace(path)
    return path


def convert_checkpoint(src: str | Path, dst: str | Path, backbone: str | None = None,
                       allow_partial: bool = False) -> ConversionReport:
    """Load any supported checkpoint, check it is a ResNet, and write Detectron2 weights.

    Raises:
        eval.checkpoint.CheckpointError: The checkpoint cannot be loaded.
        ConversionError: It is not a ResNet, or a key does not convert.
    """
    from eval.checkpoint import file_sha256, load_backbone
    from eval.detection.configs import ConfigError, resnet_settings

    model, meta = load_backbone(src, backbone=backbone, allow_partial=allow_partial)
    try:
        settings = resnet_settings(meta["backbone"], meta.get("backbone_kwargs") or {})
    except ConfigError as e:
        raise ConversionError(str(e)) from None
    weights, report = torchvision_to_detectron2(model.state_dict())
    provenance = {"source": str(src), "source_sha256": file_sha256(src),
                  "backbone": meta["backbone"], "backbone_kwargs": meta.get("backbone_kwargs"),
                  "method": meta.get("method"), "d2_resnets": settings,
                  "dropped": report.dropped_num_batches_tracked + report.dropped_head}
    save_detectron2(weights, dst, provenance)
    return report


def main(argv: list[str] | None = None) -> int:
    """CLI; exit status 2 on an unreadable or non-ResNet checkpoint."""
    from eval.checkpoint import CheckpointError

    p = argparse.ArgumentParser(description="Convert a checkpoint to Detectron2 weights (.pkl).")
    p.add_argument("src", help="any checkpoint eval/run_all.py accepts")
    p.add_argument("dst", help="output .pkl")
    p.add_argument("--backbone", default=None, help="backbone name for files without metadata")
    p.add_argument("--allow-partial", action="store_true")
    args = p.parse_args(argv)
    try:
        report = convert_checkpoint(args.src, args.dst, args.backbone, args.allow_partial)
    except (CheckpointError, ConversionError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.dst}: {report.summary()}")
    with open(args.dst, "rb") as f:
        backbone_name = pickle.load(f)["sslbench"].get("backbone", "")
    if str(backbone_name).endswith("_small"):
        print(f"  note: {backbone_name} has a 3×3 stem; Detectron2's stem is 7×7/2 + max-pool, "
              "so its stem.conv1.weight would be skipped there (shape mismatch): use the "
              "torchvision backend for this backbone")
    if report.dropped_num_batches_tracked:
        print("  dropped (no Detectron2 counterpart): "
              + ", ".join(report.dropped_num_batches_tracked[:3])
              + (f", … (+{len(report.dropped_num_batches_tracked) - 3})"
                 if len(report.dropped_num_batches_tracked) > 3 else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

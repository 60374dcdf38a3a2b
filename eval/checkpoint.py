"""Load a frozen backbone from our checkpoints or from the official SSL releases.

Accepted files (all read with ``torch.load(..., weights_only=True)``):

- ``backbone.pth`` written by the trainer: ``{"format": "sslbench.backbone/1",
  "state_dict", "meta"}``;
- a training ``checkpoint.pth`` (``{"step", "module": {"method.backbone.<key>": …}, …}``)
  with the run's ``config.yaml`` beside it, which names the backbone;
- official releases: VICReg / Barlow Twins ``resnet50.pth`` (plain torchvision keys,
  no ``fc``), their full checkpoints (``{"model": {"module.backbone.<key>": …}}``),
  SimSiam (``state_dict`` with ``module.encoder.`` and a projection MLP in
  ``module.encoder.fc``), MoCo v1/v2 (``module.encoder_q.``), MoCo v3
  (``module.base_encoder.``), DINO (``teacher`` / ``student``), and plain torchvision or
  timm state dicts (classifier ``fc.*`` / ``head.*`` dropped).

Without metadata, the backbone is ``--backbone NAME`` or inferred: every registered
backbone is built on the meta device and the one whose keys *and shapes* match best
is taken, so resnet18 / resnet50 / wide_resnet50_2 / ``*_small`` are told apart.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor, nn

from backbones import BACKBONES, build_backbone
from trainer.io import DamagedFileError, load_torch_file

log = logging.getLogger("sslbench.eval")

OUR_FORMAT = "sslbench.backbone/1"

# Backbone prefixes, most specific first. The first one under which the most keys
# match the target architecture wins (ties: earlier in this list).
PREFIXES: tuple[tuple[str, str], ...] = (
    ("method.backbone.", "sslbench.checkpoint"),
    ("module.encoder_q.", "moco"),
    ("encoder_q.", "moco"),
    ("module.base_encoder.", "moco_v3"),
    ("module.encoder.", "simsiam"),
    ("encoder.", "simsiam"),
    ("module.backbone.", "fair_full"),  # VICReg / Barlow Twins full checkpoints, DINO student
    ("backbone.", "backbone_prefixed"),  # DINO teacher
    ("module.", "data_parallel"),
    ("model.", "model_prefixed"),
    ("", "state_dict"),
)
# Keys (after the prefix) that belong to a classifier or projection head: dropped and
# reported, never "unexpected".
HEAD_PREFIXES = ("fc.", "head.", "head_drop.", "heads.", "classifier.")
# Containers that hold the state dict inside a checkpoint, in lookup order.
CONTAINER_KEYS = ("state_dict", "model", "teacher", "module", "student")


class CheckpointError(RuntimeError):
    """The file cannot be turned into the requested backbone (partial, mismatched)."""


@dataclass
class KeyReport:
    """How the checkpoint's keys mapped onto the backbone's.

    Attributes:
        prefix: The prefix stripped from the checkpoint keys.
        matched: Number of backbone keys loaded from the checkpoint.
        missing: Backbone keys absent from the checkpoint (``num_batches_tracked`` excluded).
        unexpected: Checkpoint keys under ``prefix`` that are neither backbone nor head keys.
        shape_mismatch: ``"key: ckpt_shape vs model_shape"`` entries.
        dropped_head: Classifier/projection keys under ``prefix`` (``fc.*``, ``head.*``).
        ignored: Number of checkpoint keys outside ``prefix`` (other networks, queues).
    """

    prefix: str
    matched: int
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatch: list[str] = field(default_factory=list)
    dropped_head: list[str] = field(default_factory=list)
    ignored: int = 0

    @property
    def complete(self) -> bool:
        """True when every backbone weight came from the file and nothing was unknown."""
        return not (self.missing or self.unexpected or self.shape_mismatch)

    def summary(self) -> str:
        """One human-readable line per category."""
        lines = [
            f"prefix '{self.prefix}': matched {self.matched}, missing {len(self.missing)}, "
            f"unexpected {len(self.unexpected)}, shape mismatch {len(self.shape_mismatch)}, "
            f"dropped head {len(self.dropped_head)}, ignored (outside prefix) {self.ignored}"
        ]
        for name, items in (("missing", self.missing), ("unexpected", self.unexpected),
                            ("shape mismatch", self.shape_mismatch),
                            ("dropped head", self.dropped_head)):
            if items:
                more = f", … (+{len(items) - 12})" if len(items) > 12 else ""
                shown = ", ".join(items[:12]) + more
                lines.append(f"  {name}: {shown}")
        return "\n".join(lines)


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    """SHA-256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_run_config(run_dir: Path) -> dict[str, Any] | None:
    """The ``config`` mapping of ``run_dir/config.yaml``, or None if there is none."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return None
    try:
        body = yaml.safe_load(path.read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: the run's config.yaml beside the checkpoint is "
                              f"unreadable ({first}); repair or remove it") from None
    config = body.get("config", body) if isinstance(body, dict) else None
    return config if isinstance(config, dict) else None


def _tensors(mapping: Mapping[str, Any]) -> dict[str, Tensor]:
    return {k: v for k, v in mapping.items() if isinstance(k, str) and isinstance(v, Tensor)}


def _unwrap(obj: Any, path: Path) -> tuple[dict[str, Tensor], str]:
    """The flat ``{key: tensor}`` state dict inside a loaded object and its container name."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a dict, got {type(obj).__name__}")
    flat = _tensors(obj)
    if flat and len(flat) >= len(obj) / 2:
        return flat, ""
    for key in CONTAINER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and _tensors(inner):
            return _tensors(inner), key
    raise CheckpointError(
        f"{path}: no state dict found (top-level keys: {', '.join(map(str, list(obj)[:20]))}); "
        f"expected tensors at the top level or under one of {', '.join(CONTAINER_KEYS)}"
    )


def _model_shapes(name: str, kwargs: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = build_backbone(name, **kwargs)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _infer_kwargs(name: str, sd: Mapping[str, Tensor], prefix: str) -> dict[str, Any]:
    """Size kwargs readable from the weights: a ViT's ``img_size`` from ``pos_embed``."""
    params = inspect.signature(BACKBONES.get(name).factory).parameters
    pos = sd.get(prefix + "pos_embed")
    if "img_size" in params and pos is not None and pos.dim() == 3:
        # NOTE: assumes one class token and 16 px patches (every ViT we register).
        side = math.isqrt(pos.shape[1] - 1)
        if side * side == pos.shape[1] - 1:
            return {"img_size": side * 16}
    return {}


def _match(sd: Mapping[str, Tensor], prefix: str,
           shapes: Mapping[str, tuple[int, ...]]) -> KeyReport:
    report = KeyReport(prefix=prefix, matched=0)
    seen = set()
    for key, value in sd.items():
        if not key.startswith(prefix):
            report.ignored += 1
            continue
        short = key[len(prefix):]
        if short in shapes:
            seen.add(short)
            if tuple(value.shape) == shapes[short]:
                report.matched += 1
            else:
                report.shape_mismatch.append(f"{short}: {tuple(value.shape)} vs {shapes[short]}")
        elif short.startswith(HEAD_PREFIXES):
            report.dropped_head.append(short)
        else:
            report.unexpected.append(short)
    report.missing = sorted(
        k for k in shapes if k not in seen and not k.endswith("num_batches_tracked")
    )
    return report


def _score(report: KeyReport) -> tuple[int, int]:
    problems = len(report.missing) + len(report.unexpected) + len(report.shape_mismatch)
    return report.matched, -problems


def _best_prefix(sd: Mapping[str, Tensor],
                 shapes: Mapping[str, tuple[int, ...]]) -> tuple[KeyReport, str]:
    best: tuple[KeyReport, str] | None = None
    for prefix, fmt in PREFIXES:
        if prefix and not any(k.startswith(prefix) for k in sd):
            continue
        report = _match(sd, prefix, shapes)
        if best is None or _score(report) > _score(best[0]):
            best = (report, fmt)
    assert best is not None  # the empty prefix always applies
    return best


def _infer_backbone(sd: Mapping[str, Tensor]) -> tuple[str, dict[str, Any], KeyReport, str]:
    """The registered backbone whose keys and shapes match ``sd`` best."""
    best: tuple[str, dict[str, Any], KeyReport, str] | None = None
    for name in BACKBONES.names():
        kwargs = {}
        for prefix, _ in PREFIXES:
            kwargs = _infer_kwargs(name, sd, prefix)
            if kwargs:
                break
        try:
            shapes = _model_shapes(name, kwargs)
        except Exception as e:  # noqa: BLE001 (a plugin that cannot build on meta is skipped)
            log.debug("cannot build %s on meta: %s", name, e)
            continue
        report, fmt = _best_prefix(sd, shapes)
        if best is None or _score(report) > _score(best[2]):
            best = (name, kwargs, report, fmt)
    if best is None or best[2].matched == 0:
        raise CheckpointError("no registered backbone matches any key of the checkpoint; "
                              "pass --backbone NAME")
    return best


def _our_metadata(obj: Mapping[str, Any], path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """State dict and metadata of our own two formats (empty metadata otherwise)."""
    run_dir = path.parent
    run_config = read_run_config(run_dir)
    meta: dict[str, Any] = {"run_dir": str(run_dir) if run_config is not None else None}
    if run_config is not None:
        train = run_config.get("train", {}) or {}
        meta.update(seed=train.get("seed"), epochs=train.get("epochs"))
    if obj.get("format") == OUR_FORMAT:
        meta.update(obj.get("meta", {}), format="sslbench.backbone")
        return _tensors(obj["state_dict"]), meta
    if isinstance(obj.get("module"), Mapping) and "step" in obj:
        meta.update(format="sslbench.checkpoint", config_hash=obj.get("config_hash"),
                    steps_done=int(obj["step"]))
        if run_config is None:
            raise CheckpointError(
                f"{path}: a training checkpoint needs the run's config.yaml beside it "
                "(it names the backbone); export backbone.pth or pass --backbone NAME"
            )
        bb = dict(run_config.get("backbone", {}) or {})
        meta.update(backbone=bb.pop("name", None), backbone_kwargs=bb,
                    method=(run_config.get("method") or {}).get("name"))
        return _tensors(obj["module"]), meta
    return {}, meta


def load_backbone(
    path: str | Path,
    backbone: str | None = None,
    allow_partial: bool = False,
    backbone_kwargs: Mapping[str, Any] | None = None,
    map_location: str | torch.device = "cpu",
) -> tuple[nn.Module, dict[str, Any]]:
    """Build a backbone and load its weights from any supported checkpoint format.

    Args:
        path: The checkpoint file.
        backbone: Registered backbone name; overrides the file's metadata and inference.
        allow_partial: Load even when backbone keys are missing or checkpoint keys are unknown.
        backbone_kwargs: Factory kwargs; default: the file's metadata, or inferred sizes.
        map_location: Where ``torch.load`` puts the tensors.

    Returns:
        ``(module, meta)``: the module in eval mode on the CPU, and metadata with at least
        ``backbone``, ``backbone_kwargs``, ``format``, ``method``, ``num_features``,
        ``run_dir``, ``seed``, ``epochs``, ``config_hash`` and ``key_report`` (a dict).

    Raises:
        CheckpointError: The file is missing, a folder, empty or not a readable torch file;
            the load would be partial (and ``allow_partial`` is False), shapes disagree, or
            no backbone can be determined. The message starts with the file.
    """
    path = Path(path)
    try:
        obj = load_torch_file(path, "checkpoint", map_location)
    except DamagedFileError as e:
        raise CheckpointError(str(e)) from None
    sd, meta = _our_metadata(obj, path) if isinstance(obj, Mapping) else ({}, {})
    if not sd:
        sd, container = _unwrap(obj, path)
        meta["container"] = container
    name = backbone or meta.get("backbone")
    kwargs = dict(backbone_kwargs if backbone_kwargs is not None
                  else meta.get("backbone_kwargs") or {})
    if backbone and meta.get("backbone") not in (None, backbone):
        log.warning("%s: metadata says backbone %s, using %s as asked", path, meta["backbone"],
                    backbone)
        kwargs = dict(backbone_kwargs or {})
    if name is None:
        try:
            name, kwargs, report, fmt = _infer_backbone(sd)
        except CheckpointError as e:
            raise CheckpointError(f"{path}: {e}") from None
        log.info("%s: inferred backbone %s %s", path, name, kwargs or "")
    else:
        if not kwargs:
            kwargs = next((kw for p, _ in PREFIXES if (kw := _infer_kwargs(name, sd, p))), {})
        report, fmt = _best_prefix(sd, _model_shapes(name, kwargs))
    if fmt == "state_dict":  # name the plain layouts after the library whose keys they use
        keys = " ".join(list(sd)[:50])
        fmt = "timm" if "patch_embed" in keys else "torchvision" if "layer1." in keys else fmt
    meta.setdefault("format", fmt)
    if report.shape_mismatch or (not report.complete and not allow_partial) or report.matched == 0:
        raise CheckpointError(
            f"{path}: refusing to load into {name}{f' {kwargs}' if kwargs else ''}"
            + (" (pass --allow-partial to load anyway)" if not report.shape_mismatch else "")
            + f"\n{report.summary()}"
        )
    model = build_backbone(name, **kwargs)
    state = {k[len(report.prefix):]: v for k, v in sd.items() if k.startswith(report.prefix)}
    model_keys = set(model.state_dict())
    model.load_state_dict({k: v for k, v in state.items() if k in model_keys}, strict=False)
    model.eval()
    meta.update(
        backbone=name,
        backbone_kwargs=kwargs,
        num_features=int(model.num_features),
        key_report=asdict(report),
        method=meta.get("method") or "external",
    )
    for key in ("run_dir", "seed", "epochs", "config_hash", "git_sha"):
        meta.setdefault(key, None)
    log.info("loaded %s as %s (%s)\n%s", path, name, meta["format"], report.summary())
    return model, meta

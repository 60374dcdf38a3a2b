"""Typed run configuration: frozen dataclasses, YAML diffs and ``key=value`` overrides.

The merge order is DINOv2's: ``RunConfig()`` defaults ← experiment YAML files (diffs)
← command-line ``key=value`` overrides, over a *typed* schema. An unknown key or a
value of the wrong type raises :class:`ConfigError` naming the valid keys.

Two sections are plugins, typed by the registry entry they name:

- ``method``: ``{name: vicreg, <fields of the method's config dataclass>}``;
- ``backbone``: ``{name: resnet18_small, <keyword arguments of the factory>}``;
- ``backbone_b``: view b's own backbone when the branches do not share weights (VICReg
  Table 5): ``backbone_b=resnet101``, or ``backbone_b=same`` for a second, independently
  initialised copy of ``backbone``. Empty (the default) = one shared network.

Changing ``method.name`` resets that section to the new method's paper defaults
before the remaining diffs apply, so ``method.name=simsiam`` never inherits
VICReg's fields. Derived values (the effective lr) are computed by functions and
logged, never written back into the config.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config key is unknown, or a value has the wrong type."""


@dataclass(frozen=True)
class ViewAugConfig:
    """Augmentation of one view (defaults: VICReg/BYOL view 1, official code)."""

    crop_size: int = 224
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    interpolation: str = "bicubic"  # bicubic | bilinear
    hflip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    grayscale_p: float = 0.2
    blur_p: float = 1.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0


@dataclass(frozen=True)
class AugConfig:
    """Multi-view augmentation: a registered recipe, or explicit ``views``."""

    recipe: str = "vicreg"  # see trainer.augment.RECIPES
    crop_size: int = 224  # overrides the recipe's crop size
    views: tuple[ViewAugConfig, ...] = ()  # non-empty: used instead of the recipe


@dataclass(frozen=True)
class DataConfig:
    """Pretraining dataset (a registered name; the trainer never names one)."""

    name: str = "fashion_mnist"
    root: str = ""  # "" = the dataset's default search path
    num_samples: int = 0  # 0 = all training images; N = a fixed first-N subset
    val_samples: int = 2000  # held-out images for the online probe / diagnostics


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer and learning-rate schedule (VICReg's paper defaults)."""

    name: str = "lars"  # lars | sgd | adamw
    base_lr: float = 0.2  # lr = base_lr × global_batch / 256 (lr_scaling=linear)
    lr_scaling: str = "linear"  # linear | sqrt | none
    weight_decay: float = 1e-6
    momentum: float = 0.9
    lars_eta: float = 0.001
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_epochs: float = 10.0
    final_lr_fraction: float = 0.001  # cosine ends at this fraction of the peak lr
    schedule: str = "warmup_cosine"  # warmup_cosine | cosine_per_epoch | constant


@dataclass(frozen=True)
class TrainConfig:
    """Loop, precision, distributed and logging settings."""

    epochs: int = 100
    batch_size: int = 2048  # global, over all processes
    seed: int = 0
    max_steps: int = 0  # 0 = full schedule; N = stop after N steps (schedule unchanged)
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16 | fp16
    channels_last: bool | str = "auto"  # auto (on GPU) | true | false
    compile: bool = False
    sync_bn: bool = True
    ckpt_every_steps: int = 500  # plus one at every epoch end; 0 = epoch ends only
    log_every_steps: int = 20
    probe_lr: float = 0.1  # online linear probe (SGD, momentum 0.9, no wd)
    diag_samples: int = 2048  # embeddings used for the collapse diagnostics
    tensorboard: bool = True
    progress: bool = True


@dataclass(frozen=True)
class PluginConfig:
    """A registered plugin's name and its validated settings."""

    name: str
    cfg: Any  # the plugin's config dataclass instance, or a kwargs dict

    def to_dict(self) -> dict[str, Any]:
        body = _plain(self.cfg) if self.cfg is not None else {}
        return {"name": self.name, **body}


@dataclass(frozen=True)
class RunConfig:
    """Everything one pretraining run needs; written to ``run_dir/config.yaml``."""

    method: PluginConfig = field(default_factory=lambda: PluginConfig("vicreg", None))
    backbone: PluginConfig = field(default_factory=lambda: PluginConfig("resnet50", {}))
    # view b's own backbone (unshared branches); name "" = shared weights (the default)
    backbone_b: PluginConfig = field(default_factory=lambda: PluginConfig("", {}))
    data: DataConfig = field(default_factory=DataConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run_dir: str = ""  # "" = runs/<method>-<backbone>-s<seed>-<hash8>

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = v.to_dict() if isinstance(v, PluginConfig) else _plain(v)
        return out


# Fields that do not change what a run computes; left out of the config hash.
# ``train.max_steps`` only says where this invocation stops (the schedule is unchanged),
# so a run stopped early and resumed with a later stop is the same run.
_UNHASHED = {("run_dir",), ("train", "progress"), ("train", "tensorboard"), ("train", "max_steps"),
             ("train", "log_every_steps")}


def _plain(v: Any) -> Any:
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {f.name: _plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


# ----------------------------------------------------------------------------- typing


def _check_value(value: Any, tp: Any, path: str) -> Any:
    """Coerce ``value`` to the annotated type ``tp`` or raise ConfigError."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in typing.get_args(tp):
            if arg is type(None):
                if value is None:
                    return None
                continue
            try:
                return _check_value(value, arg, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{path}: {value!r} matches none of {tp}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, path)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_check_value(v, args[0], f"{path}.{i}") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{path}: expected {len(args)} values, got {list(value)!r}")
        return tuple(_check_value(v, a, f"{path}.{i}") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        (arg,) = typing.get_args(tp) or (Any,)
        return [_check_value(v, arg, f"{path}.{i}") for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads "1e-6" as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{path}: expected true/false, got {value!r}")
    if tp in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{path}: expected {tp.__name__}, got {value!r}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{path}: expected {tp.__name__}, got {value!r} ({type(value).__name__})")
    return value


def from_dict(cls: type, data: dict[str, Any], path: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        where = f" in '{path}'" if path else ""
        raise ConfigError(
            f"unknown config key(s) {', '.join(unknown)}{where}; valid keys: {', '.join(names)}"
        )
    kwargs = {k: _check_value(v, hints[k], f"{path}.{k}" if path else k) for k, v in data.items()}
    return cls(**kwargs)


def _check_kwargs(factory: Any, kwargs: dict[str, Any], path: str) -> dict[str, Any]:
    """Validate backbone kwargs against the factory's signature and annotations."""
    sig = inspect.signature(factory)
    params = {n: p for n, p in sig.parameters.items() if p.kind is p.KEYWORD_ONLY or
              p.kind is p.POSITIONAL_OR_KEYWORD}
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(unknown)} in '{path}'; "
            f"valid keys: name, {', '.join(params)}"
        )
    hints = typing.get_type_hints(factory)
    return {k: _check_value(v, hints.get(k, Any), f"{path}.{k}") for k, v in kwargs.items()}


# ----------------------------------------------------------------------------- merge


def parse_overrides(items: list[str]) -> list[dict[str, Any]]:
    """``["a.b=1", "c=[1, 2]"]`` → one nested-dict diff per item (YAML-parsed values)."""
    diffs: list[dict[str, Any]] = []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else ""
        parts = key.strip().split(".")
        diff: dict[str, Any] = {parts[-1]: value}
        for p in reversed(parts[:-1]):
            diff = {p: diff}
        diffs.append(diff)
    return diffs


def _deep_merge(base: Any, diff: Any, path: str = "") -> Any:
    if isinstance(base, dict) and isinstance(diff, dict):
        out = dict(base)
        for k, v in diff.items():
            out[k] = _deep_merge(base[k], v, f"{path}.{k}") if k in base else v
        return out
    indices = isinstance(diff, dict) and all(str(k).isdigit() for k in diff)
    if isinstance(base, list) and indices:
        out_list = list(base)  # aug.views.1.blur_p=0.5 edits one element of a list
        for k, v in diff.items():
            i = int(k)
            if i >= len(out_list):
                raise ConfigError(f"{path}.{i}: index out of range (length {len(out_list)})")
            out_list[i] = _deep_merge(out_list[i], v, f"{path}.{i}")
        return out_list
    return diff


def _plugin_defaults(section: str, name: str) -> dict[str, Any]:
    if section == "method":
        import methods  # noqa: F401  (fills the registry)
        from methods.base import METHODS

        try:
            entry = METHODS.get(name)
        except KeyError as e:
            raise ConfigError(f"method.name: {e.args[0]}") from None
        return {"name": name, **_plain(entry.config_cls())}
    return {"name": name}


def load_config(yaml_files: list[str | Path] = (), overrides: list[str] = ()) -> RunConfig:
    """Resolve defaults ← YAML diffs ← ``key=value`` overrides into a RunConfig."""
    diffs: list[dict[str, Any]] = []
    for f in yaml_files:
        text = Path(f).read_text()
        d = yaml.safe_load(text) or {}
        if not isinstance(d, dict):
            raise ConfigError(f"{f}: expected a mapping at top level")
        diffs.append(d)
    diffs.extend(parse_overrides(list(overrides)))
    return resolve(diffs)


def resolve(diffs: list[dict[str, Any]]) -> RunConfig:
    """Merge a list of nested-dict diffs over the defaults and validate the result."""
    base = RunConfig().to_dict()
    for section in ("method", "backbone", "backbone_b"):
        name = base[section]["name"]
        for d in diffs:
            sec = d.get(section)
            if sec is None and section in d:  # backbone_b: null = shared
                d[section] = sec = {"name": ""}
            if isinstance(sec, str):  # shorthand: method: vicreg
                d[section] = sec = {"name": sec}
            if isinstance(sec, dict) and "name" in sec:
                name = sec["name"]
        base[section] = _plugin_defaults(section, name)
    merged: Any = base
    for d in diffs:
        merged = _deep_merge(merged, d)
    return _build(merged)


def _build(data: dict[str, Any]) -> RunConfig:
    import methods  # noqa: F401
    from backbones import BACKBONES
    from methods.base import METHODS

    data = dict(data)
    names = [f.name for f in dataclasses.fields(RunConfig)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(unknown)}; "
                          f"valid keys: {', '.join(names)}")
    m = dict(data.pop("method"))
    try:
        entry = METHODS.get(m.pop("name"))
    except KeyError as e:
        raise ConfigError(f"method.name: {e.args[0]}") from None
    method = PluginConfig(entry.name, from_dict(entry.config_cls, m, "method"))
    b = dict(data.pop("backbone"))
    try:
        bentry = BACKBONES.get(b.pop("name"))
    except KeyError as e:
        raise ConfigError(f"backbone.name: {e.args[0]}") from None
    backbone = PluginConfig(bentry.name, _check_kwargs(bentry.factory, b, "backbone"))
    backbone_b = _build_backbone_b(dict(data.pop("backbone_b")), backbone)
    rest = from_dict(_RestOfRun, data)
    return RunConfig(method=method, backbone=backbone, backbone_b=backbone_b,
                     **{f.name: getattr(rest, f.name) for f in dataclasses.fields(rest)})


def _build_backbone_b(b: dict[str, Any], backbone: PluginConfig) -> PluginConfig:
    """``""`` = shared; ``same`` = backbone's name and kwargs (own keys override)."""
    from backbones import BACKBONES

    name = b.pop("name", "") or ""
    if not name:
        if b:
            raise ConfigError(f"backbone_b: settings {sorted(b)} given without "
                              f"backbone_b.name (a backbone name, or 'same')")
        return PluginConfig("", {})
    if name == "same":
        name, b = backbone.name, {**backbone.cfg, **b}
    try:
        entry = BACKBONES.get(name)
    except KeyError as e:
        raise ConfigError(f"backbone_b.name: {e.args[0]} (or 'same', or empty for "
                          f"shared weights)") from None
    return PluginConfig(entry.name, _check_kwargs(entry.factory, b, "backbone_b"))


@dataclass(frozen=True)
class _RestOfRun:
    data: DataConfig = field(default_factory=DataConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run_dir: str = ""


def config_hash(cfg: RunConfig) -> str:
    """sha256 of the canonical JSON of the settings that change what a run computes."""
    d = cfg.to_dict()
    if not cfg.backbone_b.name:  # shared weights: hashes match configs that predate the key
        d.pop("backbone_b")
    for path in _UNHASHED:
        node = d
        for p in path[:-1]:
            node = node[p]
        node.pop(path[-1], None)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


def default_run_dir(cfg: RunConfig, root: str | Path = "runs") -> Path:
    """``runs/<method>-<backbone>-s<seed>-<hash8>``: deterministic from the config."""
    arch = cfg.backbone.name + (f"+{cfg.backbone_b.name}" if cfg.backbone_b.name else "")
    name = f"{cfg.method.name}-{arch}-s{cfg.train.seed}-{config_hash(cfg)[:8]}"
    return Path(root) / name


def save_config(cfg: RunConfig, path: Path, extra: dict[str, Any]) -> None:
    """Write the resolved config plus provenance (git SHA, hash) as YAML, atomically."""
    from trainer.io import atomic_write_text

    body = {**extra, "config": cfg.to_dict()}
    atomic_write_text(path, yaml.safe_dump(body, sort_keys=False))


def load_saved_config(path: Path) -> RunConfig:
    """Rebuild the RunConfig stored in a run folder's ``config.yaml``."""
    body = yaml.safe_load(Path(path).read_text())
    return resolve([body["config"]])

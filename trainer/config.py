"""Typed run configuration: frozen dataclasses, YAML diffs and ``key=value`` overrides.

The merge order is DINOv2's: ``RunConfig()`` defaults ← experiment YAML files (diffs)
← command-line ``key=value`` overrides, over a *typed* schema. An unknown key or a
value of the wrong type raises :class:`ConfigError` naming the valid keys; a value outside
what its field allows (a closed set, a range, a registry's names: declared next to the
field, see :mod:`trainer.schema`) raises one naming the key, the value and what is allowed.
:func:`preflight` adds what the schema cannot know: the device exists on this machine, and
the backbone and method factories accept the settings.

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
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from trainer.schema import (  # noqa: F401  (ConfigError, from_dict: re-exported)
    ConfigError,
    _check_kwargs,
    at_least,
    between,
    bookkeeping,
    from_dict,
    one_of,
    positive,
    registry_names,
    unhashed_fields,
)


def _dataset_names() -> list[str]:
    from trainer.datasets import DATASETS

    return DATASETS.names()


def _recipe_names() -> list[str]:
    from trainer.augment import RECIPES

    return RECIPES.names()


def _check_device(value: str) -> None:
    if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
        return
    raise ValueError("expected auto, cpu, cuda or cuda:N")


def _check_channels_last(value: bool | str) -> None:
    if not isinstance(value, bool) and value != "auto":
        raise ValueError("expected auto, true or false")


@dataclass(frozen=True)
class ViewAugConfig:
    """Augmentation of one view (defaults: VICReg/BYOL view 1, official code)."""

    crop_size: int = field(default=224, metadata=at_least(1))
    crop_scale: tuple[float, float] = field(default=(0.08, 1.0),
                                            metadata={"gt": 0, "le": 1, "each": True,
                                                      "ordered": True})
    crop_ratio: tuple[float, float] = field(default=(3 / 4, 4 / 3),
                                            metadata=positive(each=True, ordered=True))
    interpolation: str = field(default="bicubic", metadata=one_of("bicubic", "bilinear"))
    hflip_p: float = field(default=0.5, metadata=between(0, 1))
    jitter_p: float = field(default=0.8, metadata=between(0, 1))
    brightness: float = field(default=0.4, metadata=at_least(0))
    contrast: float = field(default=0.4, metadata=at_least(0))
    saturation: float = field(default=0.2, metadata=at_least(0))
    hue: float = field(default=0.1, metadata=between(0, 0.5))
    grayscale_p: float = field(default=0.2, metadata=between(0, 1))
    blur_p: float = field(default=1.0, metadata=between(0, 1))
    blur_sigma: tuple[float, float] = field(default=(0.1, 2.0),
                                            metadata=at_least(0, each=True, ordered=True))
    solarize_p: float = field(default=0.0, metadata=between(0, 1))


@dataclass(frozen=True)
class AugConfig:
    """Multi-view augmentation: a registered recipe, or explicit ``views``."""

    recipe: str = field(default="vicreg", metadata=registry_names(_recipe_names))
    crop_size: int = field(default=224, metadata=at_least(1))  # overrides the recipe's
    views: tuple[ViewAugConfig, ...] = ()  # non-empty: used instead of the recipe


@dataclass(frozen=True)
class DataConfig:
    """Pretraining dataset (a registered name; the trainer never names one)."""

    name: str = field(default="fashion_mnist", metadata=registry_names(_dataset_names))
    # "" = the dataset's default search path. Bookkeeping: a path to the same data; the
    # number of images (steps_per_epoch) is compared on resume instead.
    root: str = field(default="", metadata=bookkeeping())
    # 0 = all training images; N = a fixed first-N subset
    num_samples: int = field(default=0, metadata=at_least(0))
    # held-out images for the online probe / diagnostics
    val_samples: int = field(default=2000, metadata=at_least(1))
    # --- image-file datasets (imagenet, imagenet100, image_folder, unlabeled_folder; shards) ---
    # a labelled <val_root>/<class>/<images> folder for the online probe ("" = the set's own
    # val split; an unlabeled_folder without one trains with the probe off)
    val_root: str = field(default="", metadata=bookkeeping())
    # a file of class-folder names (ImageNet-100 style subset)
    class_list: str = ""
    # loader processes per rank; -1 = this rank's share of the CPU cores minus one
    num_workers: int = field(default=-1, metadata=bookkeeping(ge=-1))
    # where JPEGs are decoded: cpu (loader workers) or gpu (nvJPEG, on the training device)
    decode: str = field(default="cpu", metadata=one_of("cpu", "gpu"))
    # stop when more than this fraction of an epoch's images cannot be decoded
    max_bad_fraction: float = field(default=1e-3, metadata=bookkeeping(ge=0, le=1))


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer and learning-rate schedule (VICReg's paper defaults)."""

    name: str = field(default="lars", metadata=one_of("lars", "sgd", "adamw"))
    # lr = base_lr × global_batch / 256 (lr_scaling=linear)
    base_lr: float = field(default=0.2, metadata=positive())
    lr_scaling: str = field(default="linear", metadata=one_of("linear", "sqrt", "none"))
    weight_decay: float = field(default=1e-6, metadata=at_least(0))
    momentum: float = field(default=0.9, metadata={"ge": 0, "lt": 1})
    lars_eta: float = field(default=0.001, metadata=positive())
    betas: tuple[float, float] = field(default=(0.9, 0.999),
                                       metadata={"ge": 0, "lt": 1, "each": True})
    warmup_epochs: float = field(default=10.0, metadata=at_least(0))
    # cosine ends at this fraction of the peak lr
    final_lr_fraction: float = field(default=0.001, metadata=between(0, 1))
    schedule: str = field(default="warmup_cosine",
                          metadata=one_of("warmup_cosine", "cosine_per_epoch", "constant"))


@dataclass(frozen=True)
class TrainConfig:
    """Loop, precision, distributed and logging settings.

    ``bookkeeping()`` fields do not change what a run computes: they are left out of the
    config hash (the experiment's identity), so changing them resumes the same run.
    """

    epochs: int = field(default=100, metadata=at_least(1))
    batch_size: int = field(default=2048, metadata=at_least(1))  # global, over all processes
    seed: int = field(default=0, metadata=at_least(0))
    # 0 = full schedule; N = stop after N steps (schedule unchanged)
    max_steps: int = field(default=0, metadata=at_least(0, identity=False))
    # auto | cpu | cuda | cuda:N. Bookkeeping: the resolved precision (what changes the
    # numbers) is compared on resume instead.
    device: str = field(default="auto", metadata=bookkeeping(check=_check_device))
    # auto (bf16 on GPU and on CPUs with bf16 matrix units, trainer.hardware; else fp32)
    # | fp32 | bf16 | fp16
    precision: str = field(default="auto", metadata=one_of("auto", "fp32", "bf16", "fp16"))
    # auto (where precision=auto picks bf16) | true | false
    channels_last: bool | str = field(default="auto", metadata={"check": _check_channels_last})
    compile: bool = False
    sync_bn: bool = True
    # plus one at every epoch end; 0 = epoch ends only
    ckpt_every_steps: int = field(default=500, metadata=at_least(0, identity=False))
    log_every_steps: int = field(default=20, metadata=at_least(1, identity=False))
    # online linear probe (SGD, momentum 0.9, no wd)
    probe_lr: float = field(default=0.1, metadata=positive())
    # embeddings used for the collapse diagnostics
    diag_samples: int = field(default=2048, metadata=at_least(2))
    tensorboard: bool = field(default=True, metadata=bookkeeping())
    progress: bool = field(default=True, metadata=bookkeeping())


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
    # "" = runs/<method>-<backbone>-s<seed>-<hash8>
    run_dir: str = field(default="", metadata=bookkeeping())

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = v.to_dict() if isinstance(v, PluginConfig) else _plain(v)
        return out


# The fields that do not change what a run computes are declared next to them
# (``bookkeeping()`` / ``identity=False`` metadata) and collected here; ``config_hash``
# leaves them out. ``train.max_steps`` only says where this invocation stops (the schedule
# is unchanged), so a run stopped early and resumed with a later stop is the same run.
# To exclude a new setting, mark its field; nothing else changes.
# These were dropped from the hash from the start; every later one is set to its default in
# the hashed copy instead, so the hash of a config that kept the default is unchanged.
_DROPPED = {("run_dir",), ("train", "progress"), ("train", "tensorboard"), ("train", "max_steps"),
            ("train", "log_every_steps")}


# The image-file settings came later; at their defaults they are left out of the hash.
_FILE_DATA_KEYS = ("val_root", "class_list", "num_workers", "decode", "max_bad_fraction")


def _plain(v: Any) -> Any:
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {f.name: _plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


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
        d = read_yaml(f, "config file")
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
    run_dir: str = field(default="", metadata=bookkeeping())


def unhashed_keys() -> list[str]:
    """Dotted keys that are not part of a run's identity (``bookkeeping()`` fields)."""
    return [".".join(p) for p in unhashed_fields(RunConfig)]


def config_hash(cfg: RunConfig) -> str:
    """sha256 of the canonical JSON of the settings that change what a run computes.

    Bookkeeping fields (:func:`unhashed_keys`) are left out: the historic ones are dropped,
    the others are set to their defaults, so existing hashes stay what they were.
    """
    d = cfg.to_dict()
    if not cfg.backbone_b.name:  # shared weights: hashes match configs that predate the key
        d.pop("backbone_b")
    defaults = RunConfig().to_dict()
    for path in unhashed_fields(RunConfig):
        node, default = d, defaults
        for p in path[:-1]:
            node, default = node[p], default[p]
        if path in _DROPPED:
            node.pop(path[-1], None)
        else:
            node[path[-1]] = default[path[-1]]
    for key in _FILE_DATA_KEYS:  # at their defaults: hashes match configs that predate them
        if d["data"].get(key) == defaults["data"][key]:
            d["data"].pop(key, None)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


def identity_diff(a: RunConfig, b: RunConfig) -> tuple[dict[str, tuple[Any, Any]],
                                                       dict[str, tuple[Any, Any]]]:
    """What differs between two configs: ``(experiment, bookkeeping)`` as
    ``{dotted key: (value in a, value in b)}``."""
    fa, fb = _flat(a.to_dict()), _flat(b.to_dict())
    unhashed = set(unhashed_keys())
    exp: dict[str, tuple[Any, Any]] = {}
    book: dict[str, tuple[Any, Any]] = {}
    for k in sorted(set(fa) | set(fb)):
        va, vb = fa.get(k), fb.get(k)
        if va != vb:
            (book if k in unhashed else exp)[k] = (va, vb)
    return exp, book


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


class DataRootError(ConfigError):
    """The dataset's files are missing or malformed (the message names the layout)."""


def check_data(cfg: RunConfig) -> None:
    """The dataset options apply to ``data.name``; a streamed (image-file) set's folder
    exists and holds its layout (indexed: cached for the run). In-memory sets are read
    when the run starts.

    Raises:
        ConfigError: An option that does not apply.
        DataRootError: Missing, empty or malformed folder.
    """
    from dataroom import DatasetError
    from trainer.datasets import build_train_set, dataset_kwargs, is_streamed

    dataset_kwargs(cfg.data)
    if is_streamed(cfg.data.name):
        if cfg.data.num_samples:
            raise ConfigError(f"data.num_samples applies to in-memory datasets, not to the "
                              f"image files of data.name={cfg.data.name} (select classes with "
                              "data.class_list)")
        try:
            images = len(build_train_set(cfg.data))
        except DatasetError as e:
            raise DataRootError(f"data.name={cfg.data.name}: {e}") from None
        check_batch(cfg, images)
    elif cfg.data.num_samples:
        check_batch(cfg, cfg.data.num_samples)  # at most this many; the set is read at start


def check_batch(cfg: RunConfig, images: int) -> None:
    """A global batch no larger than the training set (an epoch drops its last partial batch).

    Raises:
        ConfigError: ``train.batch_size`` > ``images``.
    """
    if cfg.train.batch_size > images:
        raise ConfigError(f"train.batch_size={cfg.train.batch_size} exceeds the {images} "
                          f"training images of data.name={cfg.data.name}: lower the batch "
                          "(or give more images)")


def preflight(cfg: RunConfig, *, device: bool = True, data: bool = True) -> None:
    """Checks beyond the schema, made before anything is written (``--dry-run`` too).

    Args:
        cfg: A resolved config.
        device: Check that ``train.device`` exists on this machine (False for a sweep
            planned on a SLURM login node for other machines).
        data: Check the dataset's folder (:func:`check_data`).

    Raises:
        ConfigError: No CUDA device for ``train.device=cuda``, or a factory refuses the
            settings (the backbone and method are built on the meta device: no memory).
        DataRootError: The dataset's folder is missing or malformed.
    """
    import torch

    import methods  # noqa: F401
    from backbones import BACKBONES
    from methods.base import METHODS

    dev = cfg.train.device
    if device and dev.startswith("cuda"):
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(dev[5:]) if dev.startswith("cuda:") else 0
        if index >= n:
            raise ConfigError(f"train.device={dev}: this machine has "
                              f"{n or 'no'} CUDA device(s); use train.device=auto or cpu")
    try:
        with torch.device("meta"):
            backbone = BACKBONES.build(cfg.backbone.name, **cfg.backbone.cfg)
            method = METHODS.get(cfg.method.name).factory(backbone, cfg.method.cfg)
            if cfg.backbone_b.name:
                method.set_branch_b(BACKBONES.build(cfg.backbone_b.name, **cfg.backbone_b.cfg))
    except (ValueError, TypeError, AssertionError, NotImplementedError) as e:
        raise ConfigError(f"{cfg.method.name} with backbone {cfg.backbone.name}"
                          f"{'+' + cfg.backbone_b.name if cfg.backbone_b.name else ''}: "
                          f"{e}") from None
    if data:
        check_data(cfg)


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


def read_yaml(path: str | Path, what: str = "file") -> Any:
    """Parse a YAML file; a missing, unreadable or malformed file is one ConfigError line
    naming it (``what`` says what kind of file it should have been)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder, not a {what}")
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such {what}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the {what} ({e})") from None
    try:
        return yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{at}: {problem}") from None


def read_saved(path: Path) -> dict[str, Any]:
    """The body of a run folder's ``config.yaml`` (provenance keys and ``config``)."""
    body = read_yaml(path, "run config (config.yaml)")
    if not isinstance(body, dict) or not isinstance(body.get("config"), dict):
        raise ConfigError(f"{path}: not a run's config.yaml (no 'config:' mapping)")
    return body


def load_saved_config(path: Path) -> RunConfig:
    """Rebuild the RunConfig stored in a run folder's ``config.yaml``."""
    body = read_saved(Path(path))
    try:
        return resolve([body["config"]])
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None

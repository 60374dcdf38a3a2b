"""Typed settings of the eval battery and ``key=value`` overrides.

Every benchmark has a frozen dataclass of protocol settings (registered with it in
``eval.registry.BENCHMARKS``); a suite (``eval.suites``) picks benchmarks and their
settings. Overrides are dotted: ``knn.ks=20,200``, ``imagenet_linear.epochs=10``,
``data.voc07=/data/VOC2007``, ``run.device=cuda`` (or just ``device=cuda``). Values are
parsed as YAML and checked against the field's type; an unknown key is an error naming
the valid ones; a value outside what the setting allows (:data:`RULES`: ``knn.ks=0``, a
negative lr, an unknown mode) is an error naming the key, the value and what is allowed.

Record identity (:func:`identity`): the settings that change a benchmark's value, so a
record made with other settings is neither reused nor overwritten. Paths, threads,
workers, the device, caches and logging cadence are not part of it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from trainer.schema import check_value

DEFAULT_MINI_ROOT = "~/.cache/sslbench/mini"


def _presets() -> list[str]:
    from eval.detection.presets import PRESETS

    return sorted(PRESETS)


def _check_device(value: str) -> None:
    if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
        return
    raise ValueError("expected auto, cpu, cuda or cuda:N")


# What a setting may hold, by field name in any benchmark config or RunSettings
# ("Class.field" refines a name for one class), in trainer.schema's metadata keys. Checked
# when a suite is resolved, defaults included (tests check every suite's own settings).
RULES: dict[str, dict[str, Any]] = {
    "ks": {"ge": 1, "each": True, "nonempty": True},
    "temperature": {"gt": 0},
    "epochs": {"ge": 1}, "grid_epochs": {"ge": 1}, "eval_every": {"ge": 1},
    "batch_size": {"ge": 1}, "grid_batch_size": {"ge": 1},
    "folds": {"ge": 2}, "num_samples": {"ge": 1},
    "resize": {"ge": 0}, "crop": {"ge": 1},
    "lr": {"gt": 0}, "lr_head": {"gt": 0}, "lr_backbone": {"ge": 0},
    "lrs": {"gt": 0, "each": True, "nonempty": True},
    "wds": {"ge": 0, "each": True, "nonempty": True},
    "costs": {"gt": 0, "each": True, "nonempty": True},
    "milestones": {"ge": 1, "each": True},
    "weight_decay": {"ge": 0}, "momentum": {"ge": 0, "lt": 1},
    "holdout_fraction": {"gt": 0, "lt": 1},
    "taps": {"nonempty": True},
    "schedule": {"choices": ("cosine", "multistep")},
    "solver": {"choices": ("batched", "liblinear")},
    "dtype": {"choices": ("float64", "float32")},
    "LinearConfig.mode": {"choices": ("augmented", "features")},
    "VOCSVMConfig.mode": {"choices": ("squash", "center_crop")},
    "LowShotConfig.mode": {"choices": ("squash", "center_crop")},
    "backend": {"choices": ("auto", "detectron2", "torchvision")},
    "preset": {"choices": _presets},
    "num_gpus": {"ge": 0}, "cpu_threads": {"ge": 0},
    "RunSettings.device": {"check": _check_device},
    "num_workers": {"ge": 0}, "threads": {"ge": 0}, "seed": {"ge": 0},
    "std": {"gt": 0, "each": True, "nonempty": True}, "mean": {"nonempty": True},
}
# Settings that do not change a benchmark's value (left out of a record's identity).
RUN_IDENTITY = ("seed", "mean", "std")  # of RunSettings; the rest is how, not what
# ``backend``: the backend a detection run resolved to is the record's ``extra["backend"]``,
# already part of its id and compared on reuse (``auto`` and the backend it picks are alike).
NOT_IDENTITY = frozenset({"output_dir", "reuse", "cpu_threads", "voc_root", "coco_root",
                          "eval_every", "backend"})
# Settings that choose which records a benchmark writes, each record keeping its own value
# (``extra["k"]``): part of what a run must match to be reused, not of a record's variant.
PER_RECORD = frozenset({"ks"})


def check_settings(obj: Any, prefix: str) -> None:
    """Raise a ValueError (one line) for a setting of ``obj`` outside :data:`RULES`."""
    name = type(obj).__name__
    for f in dataclasses.fields(obj):
        rule = RULES.get(f"{name}.{f.name}", RULES.get(f.name))
        if rule is not None:
            check_value(getattr(obj, f.name), rule, f"{prefix}.{f.name}")


def identity(benchmark: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    """The settings that change a record's value, from ``as_dict`` of a benchmark config and
    of the RunSettings (or the ``config`` a record stores), in canonical JSON form."""
    body = {"benchmark": {k: v for k, v in (benchmark or {}).items() if k not in NOT_IDENTITY},
            "run": {k: (run or {}).get(k) for k in RUN_IDENTITY}}
    return json.loads(json.dumps(body, sort_keys=True))


def variant(current: dict[str, Any], default: dict[str, Any]) -> str:
    """``"temperature=0.5"``: the identity settings that differ from the suite's own,
    leaving out :data:`PER_RECORD` ones ("" = the suite's settings)."""
    parts = []
    for section in ("benchmark", "run"):
        cur, base = current.get(section, {}), default.get(section, {})
        for k in sorted(set(cur) | set(base)):
            if k not in PER_RECORD and cur.get(k) != base.get(k):
                v = cur.get(k)
                text = ",".join(map(str, v)) if isinstance(v, list) else str(v)
                parts.append(f"{'' if section == 'benchmark' else 'run.'}{k}={text}")
    return " ".join(parts)


@dataclass(frozen=True)
class RunSettings:
    """Settings shared by every benchmark of one invocation."""

    device: str = "auto"  # auto | cpu | cuda | cuda:N
    batch_size: int = 256  # feature-extraction batch
    num_workers: int = min(8, os.cpu_count() or 1)  # image-decoding processes
    cache_dir: str = "~/.cache/sslbench/features"  # "" disables the feature cache
    seed: int = 0
    threads: int = 0  # torch CPU threads; 0 = torch's default
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)  # RGB normalisation, [0, 1] units
    std: tuple[float, ...] = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DataPaths:
    """Where each dataset lives; ``{root}`` is ``--data-root``, ``{imagenet}`` the ImageNet path."""

    imagenet: str = "{root}/imagenet"
    imagenet_subsets: str = "{imagenet}/imagenet_subsets"  # holds 1percent.txt, 10percent.txt
    places205: str = "{root}/places205"
    voc07: str = "{root}/VOCdevkit/VOC2007"
    inat18: str = "{root}/inat2018"
    # pixel-array sets (eval.arrays): also found through the run's data.root or $SSLBENCH_*
    cifar10: str = "{root}/cifar10"  # holds cifar-10-batches-py/
    cifar100: str = "{root}/cifar100"  # holds cifar-100-python/
    stl10: str = "{root}/stl10"  # holds stl10_binary/
    imagenet100: str = "{imagenet}"  # the ImageNet-1k folder; the 100 classes are read in place

    def resolve(self, root: str) -> DataPaths:
        """Fill the templates; returns absolute, user-expanded paths."""
        out: dict[str, str] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name).format(root=root, **out)
            out[f.name] = str(Path(value).expanduser().absolute())
        return DataPaths(**out)


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def coerce(value: Any, hint: Any, key: str) -> Any:
    """Check/convert a parsed YAML value to the annotated type, or raise ValueError."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in typing.get_args(hint):
            if arg is type(None) and value is None:
                return None
            try:
                return coerce(value, arg, key)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError("; ".join(errors))
    if origin is tuple:
        items = value if isinstance(value, (list, tuple)) else [value]
        args = typing.get_args(hint)
        inner = args[0] if args else str
        return tuple(coerce(v, inner, key) for v in items)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{key}: expected true/false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError(f"{key}: expected an int, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ValueError(f"{key}: expected a number, got {value!r}")
    if hint is str:
        return "" if value is None else str(value)  # `key=` means the empty string
    raise ValueError(f"{key}: unsupported field type {hint}")


def parse_value(text: str) -> Any:
    """YAML scalar or list; a bare ``a,b,c`` is a list."""
    if "," in text and not text.strip().startswith(("[", "{", "'", '"')):
        return [yaml.safe_load(t) for t in text.split(",")]
    return yaml.safe_load(text)


def apply_overrides(obj: Any, pairs: dict[str, str], prefix: str) -> Any:
    """``dataclasses.replace`` with type-checked values parsed from strings."""
    if not pairs:
        return obj
    types_ = _field_types(type(obj))
    changes = {}
    for name, text in pairs.items():
        if name not in types_:
            raise KeyError(f"unknown key '{prefix}.{name}'; valid: "
                           + ", ".join(f"{prefix}.{k}" for k in types_))
        changes[name] = coerce(parse_value(text), types_[name], f"{prefix}.{name}")
    out = dataclasses.replace(obj, **changes)
    check_settings(out, prefix)
    return out


def split_overrides(items: list[str]) -> dict[str, dict[str, str]]:
    """``["knn.k=5", "device=cpu"]`` → ``{"knn": {"k": "5"}, "run": {"device": "cpu"}}``."""
    run_keys = {f.name for f in dataclasses.fields(RunSettings)}
    out: dict[str, dict[str, str]] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"override '{item}' is not key=value")
        key, value = item.split("=", 1)
        if "." in key:
            section, name = key.split(".", 1)
        elif key in run_keys:
            section, name = "run", key
        else:
            raise KeyError(f"unknown key '{key}'; use <benchmark>.<field>, data.<dataset>, "
                           f"or one of {', '.join(sorted(run_keys))}")
        out.setdefault(section, {})[name] = value
    return out


def as_dict(obj: Any) -> dict[str, Any]:
    """A dataclass as plain JSON-able data (tuples → lists)."""
    return json.loads(json.dumps(dataclasses.asdict(obj)))

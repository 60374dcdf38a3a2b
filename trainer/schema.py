"""What a config field may hold, declared next to the field, and checked when a config is built.

A dataclass field states its allowed values in ``dataclasses.field(metadata=...)`` with
plain keys, so packages that must not import the trainer (``methods/``) declare theirs
without importing this module:

- ``choices``: a tuple of allowed values, or a zero-argument callable returning them
  (a registry's names, read when the check runs);
- ``ge`` / ``gt`` / ``le`` / ``lt``: bounds of a number (``each``: of every element of a
  tuple; ``nonempty``: a tuple needs at least one element; ``ordered``: a ``(low, high)``
  pair must have ``low <= high``);
- ``check``: a callable that raises ``ValueError`` (its message says what is allowed);
- ``identity``: ``False`` for a setting that does not change what a run computes (a
  path to the same data, logging cadence); see :func:`trainer.config.config_hash`.

:func:`check_fields` runs every check of a built dataclass instance and raises
:class:`ConfigError` with one line naming the key, the value and what is allowed.
This module imports neither torch nor any of our packages.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any


class ConfigError(ValueError):
    """A config key is unknown, or a value has the wrong type or is not allowed."""


def one_of(*values: Any, **meta: Any) -> dict[str, Any]:
    """Metadata: the value must be one of ``values``."""
    return {"choices": tuple(values), **meta}


def registry_names(names: Callable[[], Iterable[str]], **meta: Any) -> dict[str, Any]:
    """Metadata: the value must be a name ``names()`` returns (a registry, read lazily)."""
    return {"choices": names, **meta}


def at_least(bound: float, **meta: Any) -> dict[str, Any]:
    """Metadata: ``value >= bound`` (``each=True``: every element of a tuple)."""
    return {"ge": bound, **meta}


def positive(**meta: Any) -> dict[str, Any]:
    """Metadata: ``value > 0``."""
    return {"gt": 0, **meta}


def between(low: float, high: float, **meta: Any) -> dict[str, Any]:
    """Metadata: ``low <= value <= high``."""
    return {"ge": low, "le": high, **meta}


def bookkeeping(**meta: Any) -> dict[str, Any]:
    """Metadata: the setting is not part of the experiment's identity (config hash)."""
    return {"identity": False, **meta}


def _choices(meta: dict[str, Any]) -> tuple[Any, ...] | None:
    choices = meta.get("choices")
    if choices is None:
        return None
    return tuple(choices() if callable(choices) else choices)


def _bounds(meta: dict[str, Any]) -> str:
    parts = []
    for key, sign in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
        if key in meta:
            parts.append(f"{sign} {meta[key]:g}" if isinstance(meta[key], (int, float))
                         else f"{sign} {meta[key]}")
    return " and ".join(parts)


def _in_bounds(x: Any, meta: dict[str, Any]) -> bool:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return True  # the type check reports a non-number
    return not (("gt" in meta and not x > meta["gt"]) or ("ge" in meta and not x >= meta["ge"])
                or ("lt" in meta and not x < meta["lt"]) or ("le" in meta and not x <= meta["le"]))


def allowed(meta: dict[str, Any]) -> str:
    """A short description of what ``meta`` allows (for messages and docs)."""
    choices = _choices(meta)
    if choices is not None:
        return "one of " + ", ".join(str(c) for c in choices)
    bounds = _bounds(meta)
    if bounds:
        return ("every value " if meta.get("each") else "") + bounds
    return ""


def check_value(value: Any, meta: dict[str, Any], key: str) -> None:
    """Raise a ConfigError naming ``key`` when ``value`` breaks ``meta``'s rules."""
    choices = _choices(meta)
    if choices is not None and value not in choices:
        raise ConfigError(f"{key}={value!r} is not allowed; expected one of "
                          f"{', '.join(str(c) for c in choices)}")
    if meta.get("nonempty") and isinstance(value, (list, tuple)) and not value:
        raise ConfigError(f"{key}=[] is not allowed; expected at least one value")
    if _bounds(meta):
        items = list(value) if meta.get("each") and isinstance(value, (list, tuple)) else [value]
        for x in items:
            if not _in_bounds(x, meta):
                shown = list(value) if isinstance(value, tuple) else value
                raise ConfigError(f"{key}={shown!r} is not allowed; expected "
                                  f"{'every value ' if meta.get('each') else ''}{_bounds(meta)}")
    if meta.get("ordered") and isinstance(value, (list, tuple)) and len(value) == 2 \
            and value[0] > value[1]:
        raise ConfigError(f"{key}={list(value)!r} is not allowed; expected (low, high) with "
                          "low <= high")
    check = meta.get("check")
    if check is not None:
        try:
            check(value)
        except ValueError as e:
            raise ConfigError(f"{key}={value!r} is not allowed: {e}") from None


def check_fields(obj: Any, path: str = "") -> None:
    """Run the declared checks of every field of dataclass instance ``obj``."""
    for f in dataclasses.fields(obj):
        if f.metadata:
            check_value(getattr(obj, f.name), dict(f.metadata), f"{path}.{f.name}" if path
                        else f.name)


def unhashed_fields(cls: type, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Dotted paths (as tuples) of the fields of ``cls`` and its nested dataclasses whose
    metadata says ``identity: False``."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        here = (*path, f.name)
        if f.metadata.get("identity") is False:
            out.append(here)
        tp = hints.get(f.name)
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            out += unhashed_fields(tp, here)
    return out


# ----------------------------------------------------------------------------- typed build


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
    try:
        obj = cls(**kwargs)
    except ValueError as e:  # a config class's own cross-field check (__post_init__)
        raise ConfigError(f"{path or cls.__name__}: {e}") from None
    check_fields(obj, path)
    return obj


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

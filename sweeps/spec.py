"""Sweep specs: a base config diff, a grid of overrides and seeds, expanded into runs.

A spec is a YAML file::

    name: cpu                  # optional; default: the file's stem
    base: {<config diff>}      # applied first, over RunConfig() defaults
    method_overrides:          # optional; the diff of the method being run
      simsiam: {optim: {name: sgd, base_lr: 0.05}}
    runs:                      # optional named diffs
      - {name: no_variance, method: {variance_weight: 0.0}}
    grid:                      # optional; dotted key -> list of values (cartesian)
      optim.base_lr: [0.1, 0.3]
    seeds: [0, 1, 2]           # optional; default: the config's train.seed
    slurm: {partition: gpu}    # optional; see sweeps.cluster.SlurmConfig
    eval: {suite: mini}        # optional; see sweeps.cluster.EvalConfig

A plain config diff (only ``method``, ``train``, ... at top level) is read as a
one-run spec whose ``base`` is that diff.

Runs are the product ``runs × grid × seeds`` (a missing part counts as one empty
entry). Each run's config is ``defaults ← base ← method_overrides[method] ← run ←
grid point ← seed ← METHOD ← CLI key=value``. Its folder is derived from the
resolved config alone (:func:`trainer.config.default_run_dir`: settings that do not change
the result, such as ``train.ckpt_every_steps``, are not part of it), so the same run always
lands in the same folder, whichever cluster runs it. A ``method_overrides`` key that is not
a registered method is an error.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from trainer.config import (
    ConfigError,
    RunConfig,
    default_run_dir,
    parse_overrides,
    resolve,
)
from trainer.rundir import existing_run_dir

SPEC_DIR = Path(__file__).resolve().parent / "specs"
TOP_KEYS = ("name", "description", "base", "method_overrides", "runs", "grid", "seeds",
            "slurm", "eval")
# CLI key=value items with these first components configure the sweep, not the runs.
SWEEP_SECTIONS = ("slurm", "eval")


class SpecError(ValueError):
    """A sweep spec or a sweep option is malformed; the message names the file and key."""


@dataclass(frozen=True)
class SweepSpec:
    """A parsed spec file (structure checked; configs are checked on expansion)."""

    path: Path
    name: str
    base: dict[str, Any] = field(default_factory=dict)
    method_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    runs: tuple[tuple[str, dict[str, Any]], ...] = ()
    grid: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    seeds: tuple[int, ...] = ()
    slurm: dict[str, Any] = field(default_factory=dict)
    eval: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PlannedRun:
    """One expanded run: a readable label, its resolved config and its folder."""

    label: str
    cfg: RunConfig  # run_dir is set to ``folder``
    folder: Path

    @property
    def key(self) -> str:
        """The folder name, unique within a sweep (method-backbone-seed-hash)."""
        return self.folder.name


# ----------------------------------------------------------------------------- loading


def available_methods() -> list[str]:
    """Names of the registered methods."""
    import methods  # noqa: F401  (fills the registry)
    from methods.base import METHODS

    return METHODS.names()


def check_method(method: str) -> None:
    """Raise a SpecError listing the available methods if ``method`` is not registered."""
    names = available_methods()
    if method not in names:
        with_spec = sorted(p.stem for p in SPEC_DIR.glob("*.yaml") if p.stem in names)
        raise SpecError(f"unknown METHOD '{method}'; available methods: {', '.join(names)} "
                        f"(with a default spec in {_rel(SPEC_DIR)}: {', '.join(with_spec) or '-'})")


def default_spec(method: str) -> Path:
    """``sweeps/specs/<method>.yaml``; an unknown method lists the available ones."""
    check_method(method)
    path = SPEC_DIR / f"{method}.yaml"
    if not path.exists():
        raise SpecError(f"method '{method}' has no default spec {_rel(path)}; "
                        f"pass one with SPEC=... (--spec), e.g. {_rel(SPEC_DIR / 'cpu.yaml')}")
    return path


def _rel(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SpecError(f"{where}: expected a mapping, got {value!r}")
    return copy.deepcopy(value)


def load_spec(path: str | Path) -> SweepSpec:
    """Read and structurally check a spec file; errors name the file and the key."""
    path = Path(path)
    if not path.exists():
        known = ", ".join(sorted(p.name for p in SPEC_DIR.glob("*.yaml")))
        raise SpecError(f"{path}: no such spec file (in {_rel(SPEC_DIR)}: {known})")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise SpecError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise SpecError(f"{path}: expected a mapping at top level, got {type(data).__name__}")
    config_keys = {f.name for f in dataclasses.fields(RunConfig)}
    if data and set(data) <= config_keys:  # a plain config diff: a one-run spec
        data = {"base": data}
    unknown = sorted(set(data) - set(TOP_KEYS))
    if unknown:
        raise SpecError(f"{path}: unknown top-level key(s) {', '.join(map(str, unknown))}; "
                        f"valid keys: {', '.join(TOP_KEYS)}")
    name = data.get("name") or path.stem
    if not isinstance(name, str) or "/" in name:
        raise SpecError(f"{path}: name: expected a folder name, got {name!r}")
    overrides = _mapping(data.get("method_overrides"), f"{path}: method_overrides")
    names = available_methods()
    for m, diff in overrides.items():
        if m not in names:  # a typo would silently give that method the base recipe
            raise SpecError(f"{path}: method_overrides.{m}: unknown method '{m}'; available "
                            f"methods: {', '.join(names)}")
        overrides[m] = _mapping(diff, f"{path}: method_overrides.{m}")
    return SweepSpec(
        path=path, name=name, base=_mapping(data.get("base"), f"{path}: base"),
        method_overrides=overrides, runs=_parse_runs(data.get("runs"), path),
        grid=_parse_grid(data.get("grid"), path), seeds=_parse_seeds(data.get("seeds"), path),
        slurm=_mapping(data.get("slurm"), f"{path}: slurm"),
        eval=_parse_eval(data.get("eval"), path))


def _parse_runs(value: Any, path: Path) -> tuple[tuple[str, dict[str, Any]], ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not value:
        raise SpecError(f"{path}: runs: expected a non-empty list of {{name: ..., <diff>}}")
    out, seen = [], set()
    for i, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise SpecError(f"{path}: runs[{i}]: expected a mapping with a string 'name', "
                            f"got {item!r}")
        diff = copy.deepcopy(item)
        name = diff.pop("name")
        if name in seen:
            raise SpecError(f"{path}: runs[{i}]: duplicate run name '{name}'")
        seen.add(name)
        out.append((name, diff))
    return tuple(out)


def _parse_grid(value: Any, path: Path) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    grid = _mapping(value, f"{path}: grid")
    out = []
    for key, values in grid.items():
        if not isinstance(key, str) or not key or key.startswith(".") or key.endswith("."):
            raise SpecError(f"{path}: grid: bad key {key!r}; use dotted config keys")
        if not isinstance(values, list) or not values:
            raise SpecError(f"{path}: grid.{key}: expected a non-empty list of values, "
                            f"got {values!r}")
        out.append((key, tuple(values)))
    return tuple(out)


def _parse_seeds(value: Any, path: Path) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if (not isinstance(value, list) or not value
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in value)):
        raise SpecError(f"{path}: seeds: expected a non-empty list of integers, got {value!r}")
    if len(set(value)) != len(value):
        raise SpecError(f"{path}: seeds: duplicate seeds in {value!r}")
    return tuple(value)


def _parse_eval(value: Any, path: Path) -> dict[str, Any]:
    if isinstance(value, str):  # shorthand: eval: mini
        return {"suite": value}
    return _mapping(value, f"{path}: eval")


# ----------------------------------------------------------------------------- expansion


def nested(key: str, value: Any) -> dict[str, Any]:
    """``("a.b.c", v)`` → ``{"a": {"b": {"c": v}}}``."""
    parts = key.split(".")
    out: dict[str, Any] = {parts[-1]: value}
    for p in reversed(parts[:-1]):
        out = {p: out}
    return out


def parse_cli(items: list[str], *, strings_ok: bool = False) -> list[dict[str, Any]]:
    """CLI ``key=value`` items → nested diffs (values are YAML).

    Args:
        items: The items.
        strings_ok: Keep a value that is not valid YAML (``{run_dir}/x``) as a string,
            instead of raising.

    Raises:
        SpecError: An item is not ``key=value``, or (``strings_ok`` False) not valid YAML.
    """
    out: list[dict[str, Any]] = []
    for item in items:
        try:
            out += parse_overrides([item])
        except ConfigError as e:
            raise SpecError(f"command line: {e}") from None
        except yaml.YAMLError as e:
            key, _, raw = item.partition("=")
            if not strings_ok:
                hint = f"""{key}='"{raw}"'"""
                raise SpecError(f"command line: {item!r}: the value is not valid YAML "
                                f"({getattr(e, 'problem', e)}); quote it: {hint}") from None
            out.append(nested(key.strip(), raw))
    return out


def split_cli(items: list[str]) -> tuple[list[str], dict[str, list[str]], tuple[int, ...] | None]:
    """Split CLI ``key=value`` items into run overrides, sweep sections and ``seeds``."""
    runs: list[str] = []
    sections: dict[str, list[str]] = {s: [] for s in SWEEP_SECTIONS}
    seeds = None
    for item in items:
        key = item.split("=", 1)[0].strip()
        head = key.split(".", 1)[0]
        if head in sections and "=" in item:
            sections[head].append(item)
        elif key == "seeds":
            value = parse_cli([item])[0]["seeds"]
            seeds = _parse_seeds(value, Path("command line"))
        else:
            runs.append(item)
    return runs, sections, seeds


def _method_of(diffs: list[dict[str, Any]]) -> str | None:
    name = None
    for d in diffs:
        m = d.get("method")
        if isinstance(m, str):
            name = m
        elif isinstance(m, dict) and isinstance(m.get("name"), str):
            name = m["name"]
    return name


def _resolve(diffs: list[dict[str, Any]]) -> RunConfig:
    return resolve(copy.deepcopy(diffs))  # resolve() rewrites shorthands in place


def _label(run_name: str | None, point: tuple[tuple[str, Any], ...], seed: int | None) -> str:
    parts = [run_name] if run_name else []
    parts += [f"{k}={v}" for k, v in point]
    if seed is not None:
        parts.append(f"seed={seed}")
    return " ".join(str(p) for p in parts) or "base"


def expand(spec: SweepSpec, method: str | None, cli: list[str], root: str | Path,
           seeds: tuple[int, ...] | None = None) -> list[PlannedRun]:
    """Every run of the sweep, resolved, with its folder under ``root``.

    Args:
        spec: The parsed spec.
        method: METHOD (``method.name``), or None to keep the spec's.
        cli: Run-config ``key=value`` overrides from the command line (highest precedence).
        root: The sweep folder; runs go to ``root/<method>-<backbone>-s<seed>-<hash8>``.
        seeds: Seeds replacing the spec's (CLI ``seeds=[...]``), or None.

    Raises:
        SpecError: A config in the spec is invalid; the message names the file and key.
    """
    cli_diffs = parse_cli(cli)
    method_diff = [{"method": {"name": method}}] if method else []
    runs: tuple[tuple[str | None, dict[str, Any]], ...] = spec.runs or ((None, {}),)
    keys = [k for k, _ in spec.grid]
    points = list(itertools.product(*(vals for _, vals in spec.grid)))
    seed_list: tuple[int | None, ...] = seeds or spec.seeds or (None,)
    planned: dict[str, PlannedRun] = {}
    for (run_name, run_diff), values, seed in itertools.product(runs, points, seed_list):
        point = tuple(zip(keys, values))
        middle = [run_diff, *(nested(k, v) for k, v in point)]
        if seed is not None:
            middle.append({"train": {"seed": seed}})
        name = _method_of([spec.base, *middle, *method_diff, *cli_diffs]) or RunConfig().method.name
        mo = spec.method_overrides.get(name, {})
        diffs = [spec.base, mo, *middle, *method_diff, *cli_diffs]
        label = _label(run_name, point, seed)
        try:
            cfg = _resolve(diffs)
        except ConfigError as e:
            raise SpecError(_blame(spec, name, mo, run_name, run_diff, point, method_diff,
                                   cli_diffs, label, e)) from None
        # a folder of this experiment named under an earlier hash formula is reused
        folder = existing_run_dir(cfg, root) or default_run_dir(cfg, root)
        cfg = dataclasses.replace(cfg, run_dir=str(folder))
        planned.setdefault(folder.name, PlannedRun(label, cfg, folder))
    return list(planned.values())


def _blame(spec: SweepSpec, name: str, mo: dict[str, Any], run_name: str | None,
           run_diff: dict[str, Any], point: tuple[tuple[str, Any], ...],
           method_diff: list[dict[str, Any]], cli_diffs: list[dict[str, Any]], label: str,
           error: ConfigError) -> str:
    """Name the part of the spec (or the command line) that made a run's config invalid."""
    where = f" (method {name})"
    candidates: list[tuple[str, list[dict[str, Any]]]] = [
        (f"base{where}", [spec.base, *method_diff]),
        (f"method_overrides.{name}", [spec.base, mo, *method_diff]),
    ]
    if run_name is not None:
        candidates.append((f"runs[{run_name}]{where}", [spec.base, mo, run_diff, *method_diff]))
    for k, v in point:
        candidates.append((f"grid.{k}={v!r}{where}", [spec.base, mo, nested(k, v), *method_diff]))
    for diffs_of, diffs in candidates:
        try:
            _resolve(diffs)
        except ConfigError as e:
            return f"{spec.path}: {diffs_of}: {e}"
    try:
        _resolve([spec.base, mo, *method_diff, *cli_diffs])
    except ConfigError as e:
        return f"command line override: {e}"
    return f"{spec.path}: run '{label}'{where}: {error}"

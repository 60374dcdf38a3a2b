"""Run folders and sweeps: ``config.yaml``, ``metrics.jsonl`` and ``sweep.json``.

``metrics.jsonl`` is the trainer's structured metrics record (one JSON object per
line, ``kind`` = step | epoch), not a log; nothing here parses stdout. A sweep is a
folder with a ``sweep.json`` manifest, or without one, a folder whose sub-folders are
runs. Its varying hyperparameters are found by diffing the runs' configs.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DEFAULT_RUNS = Path("runs")
MANIFEST = "sweep.json"
# Config keys that never make two runs different experiments: the seed, and the trainer's
# bookkeeping settings (``trainer.config.unhashed_keys``; a run's config.yaml also lists
# them under ``identity_excludes``, which :meth:`Sweep.varying` ignores as well).
IGNORED_KEYS = ("run_dir", "train.seed", "train.progress", "train.tensorboard", "train.device",
                "train.max_steps", "train.log_every_steps", "train.ckpt_every_steps",
                "data.root", "data.val_root", "data.num_workers", "data.max_bad_fraction")


@dataclass
class Run:
    """One run folder: its ``config.yaml`` (provenance at the top, ``config`` below)."""

    path: Path
    meta: dict[str, Any]
    label: str = ""  # the sweep manifest's label, e.g. "vicreg_no_var seed=0"
    _metrics: list[dict[str, Any]] | None = field(default=None, repr=False)
    _probe: tuple[dict[str, Any] | None] | None = field(default=None, repr=False)  # (read,)

    @property
    def config(self) -> dict[str, Any]:
        """The resolved run config (``config:`` in ``config.yaml``)."""
        cfg = self.meta.get("config")
        return cfg if isinstance(cfg, dict) else {}

    @property
    def flat(self) -> dict[str, Any]:
        """The config flattened to dotted keys (``optim.base_lr`` -> 0.3)."""
        return flatten(self.config)

    @property
    def seed(self) -> int | None:
        """``train.seed``."""
        seed = self.flat.get("train.seed")
        return seed if isinstance(seed, int) else None

    @property
    def config_hash(self) -> str:
        """The trainer's config hash (links eval records to this run)."""
        return str(self.meta.get("config_hash") or "")

    @property
    def name(self) -> str:
        """A short name: the manifest label without its seed, else the folder name."""
        return strip_seed(self.label) if self.label else self.path.name

    def metrics(self) -> list[dict[str, Any]]:
        """The records of ``metrics.jsonl`` (read once; [] when there is none)."""
        if self._metrics is None:
            self._metrics = read_metrics(self.path / "metrics.jsonl")
        return self._metrics

    def probe(self) -> dict[str, Any] | None:
        """``probe.json`` (``python -m sweeps.probe``: frozen linear/kNN), or None (read once)."""
        if self._probe is None:
            try:
                body = json.loads((self.path / "probe.json").read_text())
            except (OSError, ValueError):
                body = None
            self._probe = (body if isinstance(body, dict) else None,)
        return self._probe[0]

    def last_epoch(self) -> dict[str, Any] | None:
        """The last ``kind == "epoch"`` record, or None."""
        epochs = [m for m in self.metrics() if m.get("kind") == "epoch"]
        return epochs[-1] if epochs else None


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts to dotted keys; lists are kept as values."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def format_value(v: Any) -> str:
    """A hyperparameter value as a short label ("" when absent)."""
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "-".join(format_value(x) for x in v)
    return str(v)


def strip_seed(label: str) -> str:
    """``"lr=0.1 seed=2"`` -> ``"lr=0.1"`` (sweep labels end with the seed)."""
    return re.sub(r"\s*\bseed=\S+", "", label).strip() or "base"


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of ``path``; a torn last line (a run being written) is skipped."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def load_run(path: Path, label: str = "", problems: list[str] | None = None) -> Run | None:
    """The pretraining run in ``path``, or None when ``path`` holds none.

    A run's ``config.yaml`` is the trainer's: provenance keys and the resolved ``config:``
    mapping. Other tools' ``config.yaml`` (a detection fine-tuning folder under
    ``runs/detection`` holds Detectron2's) are not runs.

    Args:
        problems: If given, one line is appended when ``path`` looks like a run whose
            ``config.yaml`` cannot be read (malformed YAML, unreadable, or the trainer's
            provenance without its ``config:``), so callers can say what they left out.
    """
    where = Path(path) / "config.yaml"
    try:
        meta = yaml.safe_load(where.read_text())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        if problems is not None:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            problems.append(f"{where}: unreadable ({first})")
        return None
    if not (isinstance(meta, dict) and isinstance(meta.get("config"), dict)):
        if problems is not None and isinstance(meta, dict) and "config_hash" in meta:
            problems.append(f"{where}: the trainer's file without its 'config:' mapping")
        return None
    return Run(Path(path), meta, label)


@dataclass
class Sweep:
    """A sweep folder, its runs and its manifest ({} without one)."""

    name: str
    path: Path
    runs: list[Run]
    manifest: dict[str, Any] = field(default_factory=dict)
    left_out: list[str] = field(default_factory=list)  # "<file>: <why>" per run not read

    def varying(self, max_keys: int | None = None) -> list[str]:
        """Config keys whose values differ between runs (seed and bookkeeping ignored)."""
        flats = [r.flat for r in self.runs]
        ignored = set(IGNORED_KEYS) | {str(k) for r in self.runs
                                       for k in r.meta.get("identity_excludes") or []}
        keys = sorted({k for f in flats for k in f if k not in ignored})
        out = [k for k in keys if len({_key(f.get(k, _ABSENT)) for f in flats}) > 1]
        return out if max_keys is None else out[:max_keys]

    def label_of(self, run: Run, varying: list[str] | None = None) -> str:
        """A run's configuration name: its manifest label without the seed, else the
        varying keys' values (``base_lr=0.3, batch_size=256``), else its folder name."""
        if run.label:
            return strip_seed(run.label)
        varying = self.varying() if varying is None else varying
        if varying:
            label = ", ".join(f"{k.rsplit('.', 1)[-1]}={format_value(run.flat.get(k))}"
                              for k in varying)
            if len(label) <= 60:  # beyond that a legend is unreadable: the folder names it
                return label
        return run.path.name


_ABSENT = object()


def _key(v: Any) -> str:
    if v is _ABSENT:
        return "<absent>"
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    return json.dumps(v, sort_keys=True, default=str)


def _manifest_entries(manifest: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    runs = manifest.get("runs")
    if isinstance(runs, dict):
        return [(str(k), v if isinstance(v, dict) else {}) for k, v in runs.items()]
    if isinstance(runs, list):  # tolerate a list of entries or of folder names
        return [(str(e.get("key") or e.get("run_dir") or i) if isinstance(e, dict) else str(e),
                 e if isinstance(e, dict) else {}) for i, e in enumerate(runs)]
    return []


def _manifest_runs(folder: Path, manifest: dict[str, Any], problems: list[str]) -> list[Run]:
    runs = []
    for key, entry in _manifest_entries(manifest):
        where = [folder / key]
        if entry.get("run_dir"):
            where += [Path(entry["run_dir"]), folder / Path(str(entry["run_dir"])).name]
        path = next((p for p in where if (p / "config.yaml").exists()), None)
        run = load_run(path, str(entry.get("label") or ""), problems) if path else None
        if run is not None:
            runs.append(run)
    return runs


def load_sweep(folder: Path) -> Sweep:
    """The sweep in ``folder``: the manifest's runs, or every sub-folder with a config.

    Runs whose ``config.yaml`` cannot be read, and a ``sweep.json`` that cannot be read,
    are named in ``Sweep.left_out``.
    """
    folder = Path(folder)
    manifest: dict[str, Any] = {}
    left_out: list[str] = []
    if (folder / MANIFEST).exists():
        try:
            loaded = json.loads((folder / MANIFEST).read_text())
            manifest = loaded if isinstance(loaded, dict) else {}
        except (OSError, ValueError) as e:
            left_out.append(f"{folder / MANIFEST}: unreadable ({e}); runs found by folder, "
                            "without their labels")
    runs = _manifest_runs(folder, manifest, left_out) if manifest else []
    if not runs:
        runs = [r for p in sorted(folder.iterdir()) if p.is_dir()
                for r in [load_run(p, problems=left_out)] if r is not None]
    return Sweep(str(manifest.get("name") or folder.name), folder, runs, manifest,
                 sorted(set(left_out)))


def _damaged(folder: Path) -> bool:
    """Whether ``folder`` is a run whose config.yaml cannot be read."""
    found: list[str] = []
    return load_run(folder, problems=found) is None and bool(found)


def find_sweeps(root: str | Path = DEFAULT_RUNS) -> list[Sweep]:
    """Every sweep under ``root`` (``root`` itself included), by path; a sweep whose runs
    could all not be read is kept (``runs`` empty, ``left_out`` saying why)."""
    root = Path(root)
    if not root.is_dir():
        return []
    folders = {m.parent for m in root.rglob(MANIFEST)}
    for d in [root, *(p for p in root.iterdir() if p.is_dir())]:
        if d not in folders and load_run(d) is None and not _damaged(d) and any(
                load_run(c) is not None or _damaged(c) for c in d.iterdir() if c.is_dir()):
            folders.add(d)
    return [s for s in (load_sweep(f) for f in sorted(folders)) if s.runs or s.left_out]


def find_runs(root: str | Path = DEFAULT_RUNS, problems: list[str] | None = None) -> list[Run]:
    """Every run folder (a folder with ``config.yaml``) under ``root``, by path.

    Args:
        problems: If given, one line per run folder whose ``config.yaml`` cannot be read.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    paths = sorted({p.parent for p in root.rglob("config.yaml")})
    return [r for p in paths for r in [load_run(p, problems=problems)] if r is not None]

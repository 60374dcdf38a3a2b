"""Table 3: a sweep as hyperparameter × metric, mean ± std over seeds.

Rows are the sweep's configurations (its runs grouped by the varying config keys,
seeds pooled); label columns are those keys (or the run name when more than
:data:`MAX_HP_COLUMNS` vary). Value columns are:

- eval records linked to a run (same ``config_hash``, or ``run_dir`` = the run folder),
  one column per (benchmark, metric, protocol), never mixing protocols;
- end-of-training numbers from the last epoch of each run's ``metrics.jsonl``: online
  probe accuracy and the collapse diagnostics;
- frozen-backbone probes from each run's ``probe.json`` (``python -m sweeps.probe``), when
  some run has one.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from results.aggregate import Cell, Column, Obs, Row, Table
from results.layout import column_label
from results.protocols import benchmark_notes
from results.records import Record
from results.runs import Run, Sweep, format_value

MAX_HP_COLUMNS = 4
# (metrics.jsonl field, label, scale, digits, higher_is_better)
TRAINING = (("probe_val_acc", "probe val top-1", 100.0, 1, True),
            ("effective_rank", "eff. rank", 1.0, 1, None),
            ("effective_rank_centered", "eff. rank centred", 1.0, 1, None),
            ("std_mean", "std mean", 1.0, 3, None),
            ("std_l2", "std l2-norm", 1.0, 3, None))
TRAINING_GROUP = "end of training"
# (probe.json field, label, digits): top-1 % of the frozen backbone, higher is better
PROBE = (("linear", "linear top-1", 1), ("knn", "kNN top-1 k=20", 1))
PROBE_GROUP = "frozen probe"


def _sort_key(labels: tuple[str, ...]) -> tuple[Any, ...]:
    out: list[tuple[int, float, str]] = []
    for x in labels:
        try:
            out.append((0, float(x), x))
        except ValueError:
            out.append((1, 0.0, x))
    return tuple(out)


def linked_records(run: Run, records: list[Record]) -> list[Record]:
    """The records of ``run``: same config hash, or ``run_dir`` pointing at its folder."""
    here = run.path.resolve()
    return [r for r in records
            if (run.config_hash and r.config_hash == run.config_hash)
            or (r.run_dir and Path(r.run_dir).resolve() == here)]


def record_columns(records: list[Record]) -> list[Column]:
    """One column per (protocol, benchmark, metric, k, backend, variant); grouped by
    benchmark."""
    keys = sorted({(r.benchmark, r.protocol, r.metric, str(r.k), r.backend or "",
                    r.variant or "", r.k) for r in records}, key=lambda t: t[:6])
    cols = []
    for bench, protocol, metric, _, backend, var, k in keys:
        label = column_label(metric, k, backend or None) + (f" [{var}]" if var else "")
        key = "/".join(str(p) for p in (protocol, bench, metric, k, backend, var)
                       if p not in (None, ""))
        cols.append(Column(key, label, f"{bench} ({protocol})", bench, metric, k=k,
                           backend=backend or None, protocol=protocol, variant=var or None))
    return cols


def training_columns(runs: list[Run]) -> list[Column]:
    """End-of-training columns for the fields present in some run's last epoch."""
    lasts = [r.last_epoch() or {} for r in runs]
    return [Column(f"train/{name}", label, TRAINING_GROUP, digits=digits,
                   higher_is_better=better)
            for name, label, _, digits, better in TRAINING if any(name in e for e in lasts)]


def probe_columns(runs: list[Run]) -> list[Column]:
    """Frozen-probe columns for the fields present in some run's ``probe.json``."""
    probes = [r.probe() or {} for r in runs]
    return [Column(f"probe/{name}", label, PROBE_GROUP, digits=digits, higher_is_better=True)
            for name, label, digits in PROBE if any(name in p for p in probes)]


def _training_obs(run: Run) -> dict[str, Obs]:
    out: dict[str, Obs] = {}
    last = run.last_epoch()
    if last is not None:
        source = f"{run.path}/metrics.jsonl#epoch={last.get('epoch', last.get('step'))}"
        out.update({f"train/{name}": Obs(float(last[name]) * scale, source, run.seed)
                    for name, _, scale, _, _ in TRAINING
                    if isinstance(last.get(name), (int, float))})
    probe = run.probe() or {}
    out.update({f"probe/{name}": Obs(float(probe[name]), f"{run.path}/probe.json", run.seed)
                for name, _, _ in PROBE if isinstance(probe.get(name), (int, float))})
    return out


def sweep_table(sweep: Sweep, records: list[Record],
                superseded: dict[str, list[str]] | None = None) -> Table | None:
    """The sweep's table, or None when it has nothing to show or fewer than two runs and
    none left out (with runs left out it is kept, and its notes say which and why)."""
    if not sweep.runs or (len(sweep.runs) < 2 and not sweep.left_out):
        return None
    superseded = superseded or {}
    varying = sweep.varying()
    by_hp = len(varying) <= MAX_HP_COLUMNS
    linked = {id(run): linked_records(run, records) for run in sweep.runs}
    columns = record_columns([r for rs in linked.values() for r in rs])
    columns += training_columns(sweep.runs) + probe_columns(sweep.runs)
    if not columns:
        return None
    grouped: dict[tuple[str, ...], dict[str, list[Obs]]] = {}
    for run in sweep.runs:
        labels = (tuple(format_value(run.flat.get(k)) for k in varying) if by_hp
                  else (sweep.label_of(run, varying),))
        cells = grouped.setdefault(labels or ("all",), {})
        for key, obs in _training_obs(run).items():
            cells.setdefault(key, []).append(obs)
        for r in linked[id(run)]:
            col = next(c for c in columns if c.matches(r))
            cells.setdefault(col.key, []).append(Obs.of(r, superseded.get(r.id, ())))
    rows = [Row(labels, {c.key: Cell(obs=cells.get(c.key, [])) for c in columns})
            for labels, cells in sorted(grouped.items(), key=lambda kv: _sort_key(kv[0]))]
    headers = (varying if by_hp else ["run"]) or ["configuration"]
    name = "sweep_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", sweep.name)
    table = Table(name, f"Sweep {sweep.name}: hyperparameters × metrics", headers, columns,
                  rows, protocol=None)
    table.notes = _notes(sweep, varying, by_hp, [r for rs in linked.values() for r in rs])
    return table


def _notes(sweep: Sweep, varying: list[str], by_hp: bool, records: list[Record]) -> list[str]:
    seeds = sorted({r.seed for r in sweep.runs if r.seed is not None})
    notes = [f"Sweep {sweep.name} ({sweep.path}): {len(sweep.runs)} runs; seeds "
             f"{', '.join(map(str, seeds)) or 'unknown'}; varying: {', '.join(varying) or 'none'}"
             + ("" if by_hp else " (rows labelled by run name)") + "."]
    notes += [f"Left out: {line}." for line in sweep.left_out]
    if not sweep.manifest:
        notes.append("No sweep.json: the runs are the sub-folders; varying keys are inferred "
                     "by diffing their configs.")
    notes.append(f"'{TRAINING_GROUP}' columns: the last epoch of each run's metrics.jsonl "
                 "(online probe top-1 in %, collapse diagnostics); only the probe is bolded.")
    labelled = sorted({p.get("labelled") for p in (r.probe() for r in sweep.runs)
                       if p and p.get("labelled")})
    if labelled:
        notes.append(f"'{PROBE_GROUP}' columns: each run's probe.json (python -m sweeps.probe): "
                     f"the battery's fast linear protocol and kNN (k = 20) on the frozen "
                     f"backbone, fit on {', '.join(map(str, labelled))} labelled training "
                     f"images, top-1 % on the test split.")
    protocols = sorted({r.protocol for r in records})
    if protocols:
        notes.append(f"Eval columns: protocol in the column group ({', '.join(protocols)}).")
        notes += benchmark_notes(records)
    return notes

"""Paper tables from result records and sweeps: Markdown, LaTeX (booktabs) and CSV.

Usage::

    python -m results.tables [--records DIR] [--runs DIR] [--out DIR] [--reported]

Writes, per table, ``<out>/<name>.md``, ``.tex`` (a tabular to ``\\input``),
``.notes.tex`` (its footnotes, for the caption), ``.csv`` and ``.provenance.json``
(the record ids behind every cell), plus ``<out>/index.md`` with all tables. Names:
``imagenet_<protocol>``, ``transfer_<protocol>``, ``knn_lowshot_<protocol>``,
``other_<protocol>`` (one table per protocol: a column never mixes protocols) and
``sweep_<name>`` for every sweep under ``--runs``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from results.aggregate import (
    PARTIAL_NOTE,
    Table,
    mark_best,
    mark_missing,
    measured_rows,
    mixed_rows,
    provenance,
)
from results.latex import latex, latex_notes
from results.layout import FAMILIES, OTHER, Family
from results.markdown import markdown, to_csv
from results.protocols import METHOD_NAMES, benchmark_notes, model_order, model_row, protocol_note
from results.records import DEFAULT_RECORDS, Duplicate, Record, load_records, resolve_duplicates
from results.reference import reported_note, reported_rows
from results.runs import DEFAULT_RUNS, find_sweeps
from results.sweep_table import sweep_table

DEFAULT_OUT = Path("results/tables")
CELLS_NOTE = ("Cells: mean ± sample std over seeds (number of seeds); the best measured value "
              "per column in bold when at least two rows have one.")


def _superseded(duplicates: list[Duplicate]) -> dict[str, list[str]]:
    return {d.kept.id: [r.id for r in d.dropped] for d in duplicates}


def family_table(family: Family, protocol: str, records: list[Record],
                 duplicates: list[Duplicate], reported: bool) -> Table | None:
    """One family's table for one protocol, or None when no record and no reported row fits."""
    columns = family.columns(records)
    mine = [r for r in records if any(c.matches(r) for c in columns)]
    rows = measured_rows(mine, columns, model_row, _superseded(duplicates), model_order)
    ref = reported_rows(columns, METHOD_NAMES) if reported and family is not OTHER else []
    if not rows and not (ref and protocol == "paper"):
        return None
    title = f"{family.title} — {protocol} protocol"
    table = Table(f"{family.name}_{protocol}", title, ["Method", "Backbone", "Epochs"], columns,
                  rows + ref, protocol=protocol)
    ids = {r.id for r in mine}
    table.duplicates = [d.as_dict() for d in duplicates if d.kept.id in ids]
    table.notes = [protocol_note(protocol, mine), CELLS_NOTE, *benchmark_notes(mine)]
    for labels in mixed_rows(rows):
        table.notes.append(f"Row {' · '.join(x for x in labels if x)} pools several checkpoints "
                           "with the same seed (different configs?): see the sweep tables.")
    excluded = sum(1 for r in mine if not r.ok)
    if excluded:
        table.notes.append(f"{excluded} skipped/failed record(s) count in no mean; each is "
                           "listed with its reason in the provenance.")
    if table.duplicates:
        table.notes.append(f"{len(table.duplicates)} cell(s) had duplicate records, resolved "
                           "by the newest date (an ok record first); see the provenance.")
    if ref:
        table.notes.append(reported_note(ref, protocol))
    return table


def method_tables(records: list[Record], duplicates: list[Duplicate],
                  reported: bool = False) -> list[Table]:
    """The family tables (imagenet, transfer, knn_lowshot, other) for every protocol."""
    protocols = sorted({r.protocol for r in records} | ({"paper"} if reported else set()))
    tables = []
    for protocol in protocols:
        mine = [r for r in records if r.protocol == protocol]
        shown: set[int] = set()
        for family in FAMILIES:
            table = family_table(family, protocol, mine, duplicates, reported)
            if table is not None:
                tables.append(table)
                columns = table.columns
                shown |= {id(r) for r in mine if any(c.matches(r) for c in columns)}
        rest = [r for r in mine if id(r) not in shown]
        table = family_table(OTHER, protocol, rest, duplicates, reported) if rest else None
        if table is not None:
            tables.append(table)
    return tables


def finalize(table: Table) -> Table:
    """Bold the best per column, letter the reasons of missing values, note partial loads."""
    mark_best(table)
    table.notes += mark_missing(table)
    if any(c.partial for row in table.rows for c in row.cells.values()):
        table.notes.append(PARTIAL_NOTE)
    return table


def build_tables(records_dir: str | Path = DEFAULT_RECORDS, runs_dir: str | Path = DEFAULT_RUNS,
                 reported: bool = False) -> tuple[list[Table], list[Duplicate], list[str]]:
    """Every table, the duplicates resolved on the way, and one line per thing left out:
    a JSON file that is not a readable record, a run whose config.yaml cannot be read, a
    sweep that gets no table (and why)."""
    problems: list[str] = []
    records, duplicates = resolve_duplicates(load_records(records_dir, problems))
    tables = method_tables(records, duplicates, reported)
    superseded = _superseded(duplicates)
    for sweep in find_sweeps(runs_dir):
        problems += [f"sweep {sweep.name}: left out {line}" for line in sweep.left_out]
        table = sweep_table(sweep, records, superseded)
        if table is None:
            why = ("no run could be read" if not sweep.runs else
                   "a single run (a sweep table compares two or more; its records are in "
                   "the method tables)" if len(sweep.runs) == 1 else "nothing to show")
            problems.append(f"sweep {sweep.name} ({sweep.path}): no sweep table: {why}")
        if table is not None:
            ids = {o.source for row in table.rows for c in row.cells.values() for o in c.obs}
            table.duplicates = [d.as_dict() for d in duplicates if d.kept.id in ids]
            table.notes.insert(1, CELLS_NOTE)
            tables.append(table)
    return [finalize(t) for t in tables], duplicates, problems


def write_table(table: Table, out: Path) -> list[Path]:
    """Write the table's five files into ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    files = {".md": markdown(table), ".tex": latex(table), ".notes.tex": latex_notes(table),
             ".csv": to_csv(table),
             ".provenance.json": json.dumps(provenance(table), indent=1, ensure_ascii=False)}
    paths = []
    for suffix, text in files.items():
        path = out / f"{table.name}{suffix}"
        path.write_text(text if text.endswith("\n") else text + "\n")
        paths.append(path)
    return paths


def main(records: str | Path = DEFAULT_RECORDS, runs: str | Path = DEFAULT_RUNS,
         out: str | Path = DEFAULT_OUT, reported: bool = False) -> int:
    """Build and write every table; print warnings (duplicates) to stderr."""
    tables, duplicates, problems = build_tables(records, runs, reported)
    for d in duplicates:
        print(f"warning: {d.describe()}", file=sys.stderr)
    for line in problems:
        print(f"note: left out: {line}", file=sys.stderr)
    if not tables:
        print(f"no records under {records} and no sweeps under {runs}: nothing to tabulate")
        return 0
    out = Path(out)
    for table in tables:
        write_table(table, out)
        print(f"wrote {out / table.name}.{{md,tex,notes.tex,csv,provenance.json}}"
              f" ({len(table.rows)} rows)")
    index = "\n".join(markdown(t, level=2) for t in tables)
    header = "# Tables\n\nGenerated by `python -m results.tables`.\n\n"
    (out / "index.md").write_text(header + index)
    print(f"wrote {out / 'index.md'}")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The CLI arguments."""
    p = argparse.ArgumentParser(prog="python -m results.tables", description=__doc__.split("\n")[0])
    p.add_argument("--records", default=str(DEFAULT_RECORDS),
                   help=f"folder of result records, *.json (default: {DEFAULT_RECORDS})")
    p.add_argument("--runs", default=str(DEFAULT_RUNS),
                   help=f"folder of sweeps/run folders (default: {DEFAULT_RUNS})")
    p.add_argument("--out", default=str(DEFAULT_OUT),
                   help=f"output folder (default: {DEFAULT_OUT})")
    p.add_argument("--reported", action="store_true",
                   help="add the published numbers (methods.md §9) as a 'reported' block")
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main(**vars(parse_args())))

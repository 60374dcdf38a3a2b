"""Render a :class:`~results.aggregate.Table` as Markdown or CSV.

Markdown: one header line (``group label``), measured rows, then the reported block
after a ``*reported*`` separator row, then the footnotes as a list. The best
measured value per column is in ``**bold**``; a missing value is ``—``, followed by
``(a)`` when a footnote gives its reason.

CSV: the same cells as plain text (no bold, no markers) with a leading ``section``
column (measured | reported); the numbers behind each cell are in the provenance.
"""

from __future__ import annotations

import csv
import io

from results.aggregate import MEASURED, MISSING, REPORTED, Cell, Column, Table


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def md_cell(cell: Cell, col: Column) -> str:
    """One Markdown cell: bold when best, ``— (a)`` when missing with a lettered reason."""
    if cell.missing:
        return f"{MISSING} ({cell.marker})" if cell.marker else MISSING
    text = _md_escape(cell.text(col.digits))
    return f"**{text}**" if cell.bold else text


def markdown(table: Table, level: int = 3) -> str:
    """The table as Markdown: a heading, the table and its notes."""
    n_labels = len(table.label_headers)
    header = [*table.label_headers, *(c.title for c in table.columns)]
    lines = [f"{'#' * level} {table.title}", "",
             "| " + " | ".join(_md_escape(h) for h in header) + " |",
             "|" + "|".join([":--"] * n_labels + ["--:"] * len(table.columns)) + "|"]
    for section in (MEASURED, REPORTED):
        rows = table.section(section)
        if section == REPORTED and rows:
            lines.append("| *reported* |" + " |" * (len(header) - 1))
        for row in rows:
            cells = [_md_escape(x) for x in row.labels]
            cells += [md_cell(row.cells[c.key], c) for c in table.columns]
            lines.append("| " + " | ".join(cells) + " |")
    if table.notes:
        lines += ["", *(f"- {_md_escape(n)}" for n in table.notes)]
    return "\n".join(lines) + "\n"


def to_csv(table: Table) -> str:
    """The table as CSV (``section``, the row labels, one column per value column)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["section", *table.label_headers, *(c.title for c in table.columns)])
    for section in (MEASURED, REPORTED):
        for row in table.section(section):
            writer.writerow([section, *row.labels,
                             *(row.cells[c.key].text(c.digits) for c in table.columns)])
    return buf.getvalue()

"""Output formats for people and scripts, shared by every command that has `--format`.

- An aggregation report (`export aggregate`, `export count`): `json` (the default, one
  document, for scripts), `csv` (`patient_id,event_type,count` rows sorted by patient,
  then event type) or `table` (a rich table: patients as rows, event types as columns, a
  totals row).
- Test records (`records list`): `ndjson` (the default, streamed a record a line), `csv`
  (the five fields and `created_at`, with a header) or `table` (a rich table).

Rich is imported only when a table is asked for, so that the other formats start as fast
as before. Every renderer returns text; `emit_report` writes it to stdout and, with `-o`,
the same text to a file (atomically, `output.write_atomic`).
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterable, Mapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from patientkit.cli import output

RECORD_FIELDS = ("test_id", "patient_id", "clinic_id", "test_type", "result", "created_at")
REPORT_HEADER = ("patient_id", "event_type", "count")


class ReportFormat(StrEnum):
    """`--format` of a report of counts: JSON (default), a rich table, or CSV rows."""

    json = "json"
    table = "table"
    csv = "csv"


class RecordFormat(StrEnum):
    """`--format` of `records list`: NDJSON (default, streamed), CSV, or a rich table."""

    ndjson = "ndjson"
    csv = "csv"
    table = "table"


ReportFormatOption = Annotated[
    ReportFormat,
    typer.Option(
        "--format",
        "-f",
        help="json (for scripts), table (for people: patients as rows, event types as "
        "columns, a totals row) or csv (patient_id,event_type,count rows).",
        case_sensitive=False,
    ),
]

RecordFormatOption = Annotated[
    RecordFormat,
    typer.Option(
        "--format",
        "-f",
        help="ndjson (streamed, a record a line), csv (a header and a row a record) or "
        "table (for people).",
        case_sensitive=False,
    ),
]

Report = Mapping[str, Mapping[str, Any]]


def report_json(report: Report) -> str:
    """The aggregation document, as `output.emit_json` has always printed it."""
    return json.dumps(report, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def report_csv(report: Report) -> str:
    """`patient_id,event_type,count` and one row a (patient, event type) pair with a
    count, sorted by patient then event type; just the header when nothing was counted."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(REPORT_HEADER)
    patients = report.get("patients", {})
    for patient in sorted(patients):
        events = patients[patient]
        for event in sorted(events):
            writer.writerow((patient, event, events[event]))
    return buffer.getvalue()


def report_table(report: Report) -> str:
    """A rich table: a row a patient, a column an event type (sorted), a count in each
    cell (0 where the patient has none of that type) and a last `total` row."""
    from rich.table import Table

    patients = report.get("patients", {})
    totals = report.get("totals", {})
    events = sorted(set(totals).union(*(set(e) for e in patients.values())))
    table = Table(show_footer=False, title=None)
    table.add_column("patient_id", no_wrap=True)
    for event in events:
        table.add_column(event, justify="right", no_wrap=True)
    for patient in sorted(patients):
        counts = patients[patient]
        table.add_row(patient, *(f"{counts.get(e, 0):,}" for e in events))
    table.add_section()
    table.add_row("total", *(f"{totals.get(e, 0):,}" for e in events), style="bold")
    return _draw(table)


def records_table(records: Iterable[Mapping[str, Any]]) -> str:
    """A rich table of records: the five fields and created_at, a row a record."""
    from rich.table import Table

    table = Table()
    for field in RECORD_FIELDS:
        table.add_column(field, no_wrap=True)
    for record in records:
        table.add_row(*(_cell(record.get(field)) for field in RECORD_FIELDS))
    return _draw(table)


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


def _draw(renderable: Any) -> str:
    """Render to plain text (no colour codes, so that a file or a pipe gets clean text)
    at the table's natural width: on a console wider than any table, where it is never
    squeezed, never cut with … (one pass: measuring it first at such a width, then
    drawing it at the width measured, gave the same text for a third more time)."""
    from rich.console import Console

    console = Console(
        file=io.StringIO(),
        width=1 << 30,
        color_system=None,
        force_terminal=False,
        highlight=False,
        emoji=False,
    )
    with console.capture() as capture:
        console.print(renderable)
    return "\n".join(line.rstrip() for line in capture.get().splitlines()) + "\n"


RENDER_REPORT = {
    ReportFormat.json: report_json,
    ReportFormat.csv: report_csv,
    ReportFormat.table: report_table,
}


def emit_report(report: Report, fmt: ReportFormat, out_file: Path | None = None) -> None:
    """Print an aggregation report in `fmt` on stdout; with out_file, the same text there
    too (written whole or not at all). Raises UsageError if out_file cannot be written."""
    text = RENDER_REPORT[fmt](report)
    if out_file is not None:
        output.write_atomic(out_file, text)
    with output.to_stdout():
        sys.stdout.write(text)
        sys.stdout.flush()


def emit_records(records: Iterable[Mapping[str, Any]], fmt: RecordFormat) -> None:
    """Write records on stdout as they come (ndjson, csv) or, for a table, once all have
    come. A closed stdout (`| head`) raises output.StdoutClosed."""
    with output.to_stdout():
        write = sys.stdout.write
        if fmt is RecordFormat.ndjson:
            for record in records:
                write(json.dumps(record, ensure_ascii=False) + "\n")
        elif fmt is RecordFormat.csv:
            writer = csv.writer(sys.stdout, lineterminator="\n")
            writer.writerow(RECORD_FIELDS)
            for record in records:
                writer.writerow([_cell(record.get(field)) for field in RECORD_FIELDS])
        else:
            write(records_table(records))
        sys.stdout.flush()

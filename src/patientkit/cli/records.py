"""`patientkit records …`: submit test records to a store or an API, list a clinic's."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from patientkit.cli import output, samples
from patientkit.cli.formats import RecordFormat, RecordFormatOption, emit_records
from patientkit.cli.options import DEFAULT_DB, Append, Db, ReadFrom, To, one_destination
from patientkit.cli.progress import Meter
from patientkit.errors import UsageError

app = typer.Typer(
    help="Submit medical test records to a store or an API, and list them by clinic.",
    epilog="Examples:\n\n"
    "  patientkit records submit tests.ndjson --db records.db --rejects rejects.ndjson\n\n"
    "  patientkit records list --clinic C042 --db records.db --format table",
    no_args_is_help=True,
)

DEFAULT_REQUESTS = 4  # requests in flight: more contend for the client's GIL on 2 cores
ONE_DESTINATION = "--db and --to cannot be used together: give the store or the API"


@app.command()
def submit(
    ctx: typer.Context,
    paths: Annotated[
        list[str],
        typer.Argument(help="NDJSON, JSON array or CSV files (.gz too), or - for stdin."),
    ],
    db: Db = DEFAULT_DB,
    to: To = None,
    concurrency: Annotated[
        int, typer.Option(min=1, help="Requests in flight at once, with --to.")
    ] = DEFAULT_REQUESTS,
    rejects: Annotated[
        Path | None,
        typer.Option(
            help="Write invalid, rejected and failed records here (NDJSON, with file, "
            "line and reason) to fix and send again; written afresh by each run, "
            "--append adds to it."
        ),
    ] = None,
    append: Append = False,
    strict: Annotated[
        bool, typer.Option("--strict", help="Duplicates are an error too (exit 1).")
    ] = False,
    attempts: Annotated[
        int,
        typer.Option(min=1, help="Attempts per record (or batch) before it fails, with --to."),
    ] = 8,
    batch: Annotated[
        bool,
        typer.Option(
            "--batch/--no-batch",
            help="With --to: send records in batches (POST /tests/batch, --concurrency "
            "batches in flight), or one POST per record. A server without batches is sent "
            "one POST per record anyway.",
        ),
    ] = True,
    batch_size: Annotated[
        int,
        typer.Option(
            min=1, max=10_000, hidden=True, help="Records per batch with --to (at most 10,000)."
        ),
    ] = 2000,
) -> None:
    """Validate test records and submit them to the store or a records API.

    Records go to the store (default) or an API (--to: in batches of up to 2,000 records,
    or one POST per record with --no-batch or when the server has no batches, with the
    same verdicts either way); then a JSON summary is printed:
    read, created, duplicates, invalid, rejected, failed, retries, seconds, and one line
    for people on stderr. Each invalid or rejected record is one `file:line: reason` line on
    stderr and one line in --rejects. Exit 0 if nothing was invalid, rejected or failed
    (duplicates are fine unless --strict), 1 otherwise, 130 on Ctrl-C: running the same
    command again finishes the job, counting what had landed as duplicates.

    Example:

        patientkit records submit tests.ndjson --rejects rejects.ndjson

        zcat tests.csv.gz | patientkit records submit - --to http://127.0.0.1:8000
    """
    from patientkit.workflows.submit import run_submit

    one_destination(ctx, to, ONE_DESTINATION)

    def interrupted(in_flight: int) -> None:
        output.warn(
            f"interrupted: settling {in_flight} records in flight (Ctrl-C again to stop waiting)"
        )

    with Meter("submitting", unit="records", sized=False) as meter:
        meter.start(len(paths), None)
        result = run_submit(
            paths,
            db=db,
            to=to,
            concurrency=concurrency,
            rejects=rejects,
            append=append,
            attempts=attempts,
            batch=batch,
            batch_size=batch_size,
            on_problem=_problem,
            on_progress=lambda read: meter.advance(read - meter.rows, 0),
            on_interrupt=interrupted,
        )
    tally = result.tally
    output.emit_json(tally.summary(result.seconds))
    if result.error is not None:
        raise result.error
    if result.interrupted:
        lost = f"; {result.abandoned} were still in flight" if result.abandoned else ""
        output.error(f"interrupted{lost}: run the same command again to finish the job")
        raise typer.Exit(130)
    if output.job_summary(
        "submitted",
        "records",
        tally.read,
        [(tally.created, "created"), (tally.duplicates, "duplicates")],
        [
            (tally.invalid, "invalid"),
            (tally.rejected, "rejected"),
            (tally.failed, "failed"),
            (tally.duplicates if strict else 0, "duplicates (--strict)"),
        ],
        result.seconds,
        rejects,
    ):
        raise typer.Exit(1)


def _problem(source: str, line: int, reason: str) -> None:
    output.info(f"{source}:{line}: {reason}")


@app.command("list")
def list_records(
    ctx: typer.Context,
    clinic: Annotated[str, typer.Option("--clinic", help="The clinic_id to list.")],
    db: Db = DEFAULT_DB,
    to: ReadFrom = None,
    fmt: RecordFormatOption = RecordFormat.ndjson,
) -> None:
    """Print a clinic's test records, oldest first.

    NDJSON by default (one record a line, with created_at, streamed), or --format csv or
    table; nothing when the clinic has none.

    Example:

        patientkit records list --clinic C042 --to http://127.0.0.1:8000 | head

        patientkit records list --clinic C042 --format table
    """
    one_destination(ctx, to, ONE_DESTINATION)
    if not clinic.strip():
        raise UsageError("--clinic must not be empty")
    if to is not None:
        from patientkit.client.records import RecordsClient

        def retrying(attempt: int, reason: str, wait: float) -> None:
            output.warn_retry("listing", attempt, reason, wait)

        with RecordsClient(to) as client:
            emit_records(client.clinic_records(clinic, retrying), fmt)
    else:
        from patientkit.stores import open_existing

        with open_existing(db) as store:
            emit_records(store.records_for_clinic(clinic), fmt)


app.command("generate")(samples.records)

"""`patientkit readings …`: replay recorded device readings; ask for a device's totals."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from patientkit.cli import output, samples
from patientkit.cli.options import DEFAULT_DB, Append, Db, ReadFrom, To, one_destination
from patientkit.cli.progress import Meter
from patientkit.errors import UsageError

DeviceId = Annotated[str, typer.Argument(help="The device's UUID4.")]
ONE_DESTINATION = "give --db or --to, not both"  # SPEC.md's words for this group

app = typer.Typer(
    help="Replay device readings into the store or a readings API, and read a device's totals.",
    epilog="Examples:\n\n"
    "  patientkit readings generate readings.ndjson\n\n"
    "  patientkit readings replay readings.ndjson --db readings.db --dead-letter bad.ndjson\n\n"
    "  patientkit readings total d042a946-84bd-4bf2-bd00-3fc3a49785ea --db readings.db",
    no_args_is_help=True,
)


@app.command()
def replay(
    ctx: typer.Context,
    paths: Annotated[
        list[str], typer.Argument(help="NDJSON, JSON or CSV files (.gz too), or - for stdin.")
    ],
    db: Db = DEFAULT_DB,
    to: To = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Most readings in one create request (default 5000) or one transaction "
            "of the store (default 20000).",
        ),
    ] = None,
    flush_interval: Annotated[
        float, typer.Option(min=0.001, help="Deliver what waits at least this often (s).")
    ] = 1.0,
    speed: Annotated[
        float | None,
        typer.Option(min=0.000001, help="Keep the recorded spacing, divided by this factor."),
    ] = None,
    dead_letter: Annotated[
        Path | None,
        typer.Option(
            help="NDJSON file for readings not delivered: file, line, reason (written "
            "afresh by each run; --append adds to it)."
        ),
    ] = None,
    append: Append = False,
    concurrency: Annotated[
        int, typer.Option(min=1, help="With --to: devices' requests in flight at once.")
    ] = 4,
) -> None:
    """Replay recorded device readings into the store or a readings API, losing none.

    Each reading is checked with the API's rules (an invalid one is reported with
    file:line and written to --dead-letter), then delivered in batches to the store
    (default) or to a readings API (--to), retried, never dropped. Prints a JSON summary
    on stdout and one line for people on stderr; exit 1 if any reading was invalid or not
    delivered. Running the same replay again after a crash or Ctrl-C ends with the store
    of one clean run.

    Example:

        patientkit readings replay readings.ndjson.gz --db readings.db --dead-letter bad.ndjson

        patientkit readings replay readings.csv --to http://127.0.0.1:8000 --speed 60
    """
    from patientkit.workflows.replay import run_replay

    one_destination(ctx, to, ONE_DESTINATION)
    with Meter("replaying", unit="readings", sized=False) as meter:
        run = run_replay(
            paths,
            db=db,
            to=to,
            batch_size=batch_size,
            flush_interval=flush_interval,
            speed=speed,
            dead_letter=dead_letter,
            append=append,
            concurrency=concurrency,
            on_invalid=lambda source, line, reason: output.warn(f"{source}:{line}: {reason}"),
            on_progress=lambda read: meter.advance(read - meter.rows, 0),
        )
    tally = run.tally
    output.emit_json(tally.summary())
    if run.stop_reason:
        where = f"written to {dead_letter}" if dead_letter else "not saved (no --dead-letter)"
        output.error(f"{run.stop_reason}; the readings not delivered are {where}")
    if run.interrupted:
        output.error("interrupted; run the same command again to finish")
        raise typer.Exit(130)
    if run.error is not None:
        raise run.error  # one line naming the input; exit 1
    delivered = [(tally.delivered, "delivered")]
    if tally.duplicates is not None:
        delivered.append((tally.duplicates, "duplicates"))
    delivered.append((tally.devices, "devices"))
    if output.job_summary(
        "replayed",
        "readings",
        tally.read,
        delivered,
        [  # the dead-letter file holds the invalid readings and those not delivered
            (tally.invalid, "invalid"),
            (max(0, tally.dead_lettered - tally.invalid), "not delivered"),
        ],
        tally.seconds,
        dead_letter,
    ):
        raise typer.Exit(1)


def _device_total(
    ctx: typer.Context, device_id: str, db: str, to: str | None, key: str, method: str
) -> None:
    """Print {"device_id", key: the store's or the API's `method`(device_id)}."""
    from patientkit.core import validation

    one_destination(ctx, to, ONE_DESTINATION)
    if not validation.is_device_id(device_id):
        raise UsageError(validation.BAD_DEVICE_ID)
    value: object
    if to is not None:
        from patientkit.client.readings import ReadingsClient

        with ReadingsClient(to) as client:
            value = getattr(client, method)(device_id)
    else:
        from patientkit.errors import PatientkitError
        from patientkit.stores import open_existing

        with open_existing(db) as store:
            value = getattr(store, method)(device_id)
        if value is None:  # a device id is not health data: it may be named
            raise PatientkitError(f"no readings for device {device_id}")
    output.emit_json({"device_id": device_id, key: value})


@app.command()
def latest(
    ctx: typer.Context,
    device_id: DeviceId,
    db: Db = DEFAULT_DB,
    to: ReadFrom = None,
) -> None:
    """Print a device's latest reading time, in the offset it was stored with.

    Example:

        patientkit readings latest d042a946-84bd-4bf2-bd00-3fc3a49785ea --db readings.db
    """
    _device_total(ctx, device_id, db, to, "timestamp", "latest_timestamp")


@app.command()
def total(
    ctx: typer.Context,
    device_id: DeviceId,
    db: Db = DEFAULT_DB,
    to: ReadFrom = None,
) -> None:
    """Print the sum of a device's stored counts.

    Example:

        patientkit readings total d042a946-84bd-4bf2-bd00-3fc3a49785ea --to http://127.0.0.1:8000
    """
    _device_total(ctx, device_id, db, to, "cumulative_count", "cumulative_count")


app.command("generate")(samples.readings)

"""`patientkit export …`: list, aggregate, count and generate healthcare exports."""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from patientkit.cli import output
from patientkit.cli.options import DEFAULT_SERVER, Concurrency, OutFile, Server, cpu_count
from patientkit.cli.progress import Meter

app = typer.Typer(
    help="Aggregate healthcare exports: count events per patient and event type.",
    no_args_is_help=True,
)


class Shape(StrEnum):
    demo = "demo"
    small = "small"
    large = "large"


def warn_retry(what: str, attempt: int, reason: str, delay: float) -> None:
    output.warn(f"{what}: attempt {attempt} failed ({reason}); retrying in {delay:.1f}s")


@app.command("list")
def list_exports(server: Server = DEFAULT_SERVER) -> None:
    """List the exports a server offers, as JSON.

    Example:

        patientkit export list --server http://127.0.0.1:8000
    """
    from patientkit.client.exports import ExportClient

    with ExportClient(server) as client:
        ids = client.export_ids(lambda n, why, wait: warn_retry("export list", n, why, wait))
    output.emit_json({"export_ids": ids})


@app.command()
def aggregate(
    export_id: Annotated[str, typer.Argument(help="The export to aggregate, e.g. demo.")],
    server: Server = DEFAULT_SERVER,
    concurrency: Concurrency = None,
    out: OutFile = None,
    attempts: Annotated[
        int, typer.Option(min=1, help="Attempts per download before the job fails.")
    ] = 6,
) -> None:
    """Stream every download of an export, count events per patient and event type, and
    print the totals as JSON. Each download's count is checked against its metadata; a
    failed or short download is retried from the start. Exit 1 if one still fails.

    Example:

        patientkit export aggregate demo --server http://127.0.0.1:8000 -o demo.json
    """
    from patientkit.aggregate import Events, aggregate_export
    from patientkit.client.http import Backoff

    with Meter(f"export {export_id}") as meter:
        counts = aggregate_export(
            server,
            export_id,
            concurrency or cpu_count(),
            Backoff(attempts=attempts),
            Events(
                on_start=meter.start,
                on_progress=meter.advance,
                on_retry=warn_retry,
                on_done=lambda download_id, rows: meter.part_done(),
            ),
        )
    output.emit_json(counts.report(), out)
    _summary(meter, counts.rows)


@app.command()
def count(
    paths: Annotated[
        list[str],
        typer.Argument(help="CSV files (.csv, .csv.gz), folders of them, or - for stdin."),
    ],
    out: OutFile = None,
    workers: Annotated[
        int | None, typer.Option(min=1, help="Processes to count with (default: CPU count).")
    ] = None,
) -> None:
    """Count events per patient and event type in local CSV files, on all cores.

    Example:

        patientkit export count exports/demo -o demo.json

        zcat export.csv.gz | patientkit export count -
    """
    from patientkit.core.counting import Counts, count_chunks
    from patientkit.core.parallel import count_files, read_chunks, sniff_gzip

    files = [p for p in paths if p != "-"]
    total = Counts()
    with Meter("counting") as meter:
        meter.start(len(paths), None)
        if files:
            total.merge(count_files(files, workers or cpu_count(), lambda n: meter.advance(0, n)))
        if "-" in paths:
            total.merge(count_chunks(read_chunks(sniff_gzip(sys.stdin.buffer)), "<stdin>"))
    output.emit_json(total.report(), out)
    _summary(meter, total.rows)


@app.command()
def generate(
    export: Annotated[Shape, typer.Argument(help="Which reference shape to generate.")],
    directory: Annotated[Path, typer.Argument(help="Folder to write DIR/<export>/<uuid>.csv")],
    seed: Annotated[int, typer.Option(help="Seed: the same seed gives the same bytes.")] = 0,
) -> None:
    """Generate a deterministic synthetic export of a reference shape (demo ≈ 15k rows,
    small ≈ 7.5M rows, large ≈ 150M rows), with its metadata beside each download.

    Example:

        patientkit export generate demo exports && patientkit serve --exports exports
    """
    from patientkit.generate import generate_export, plan_export

    plans = plan_export(export.value, seed)
    folder = directory / export.value
    planned = {f"{p.download_id}.csv" for p in plans}
    if folder.is_dir():
        strangers = [p.name for p in folder.glob("*.csv*") if p.name not in planned]
        if strangers:
            raise typer.BadParameter(
                f"{folder} already holds {len(strangers)} downloads that seed {seed} does not "
                "make; remove them or choose another folder",
                param_hint="DIR",
            )
    with Meter(f"generating {export.value}") as meter:
        generate_export(export.value, directory, seed)
    rows = sum(p.rows for p in plans)
    output.emit_json(
        {
            "export": export.value,
            "folder": str(folder),
            "seed": seed,
            "downloads": len(plans),
            "rows": rows,
            "seconds": round(meter.seconds, 3),
        }
    )


def _summary(meter: Meter, rows: int) -> None:
    seconds = meter.seconds
    output.info(
        f"counted {rows:,} rows, {meter.bytes / 1e6:,.1f} MB in {seconds:.2f}s "
        f"({rows / seconds / 1e6 if seconds else 0:.2f}M rows/s)"
    )

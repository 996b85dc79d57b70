"""`patientkit export …`: list, aggregate, count and generate healthcare exports."""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from patientkit.cli import output
from patientkit.cli.formats import ReportFormat, ReportFormatOption, emit_report
from patientkit.cli.options import DEFAULT_SERVER, Concurrency, OutFile, Server, cpu_count
from patientkit.cli.progress import Meter
from patientkit.core import interrupts
from patientkit.errors import InputError

if TYPE_CHECKING:
    from patientkit.core.counting import Counts

app = typer.Typer(
    help="Aggregate healthcare exports: count events per patient and event type.",
    epilog="Examples:\n\n"
    "  patientkit export generate demo exports\n\n"
    "  patientkit export count exports/demo --format table\n\n"
    "  patientkit export aggregate demo --server http://127.0.0.1:8000 --format csv",
    no_args_is_help=True,
)


class ReferenceExport(StrEnum):
    """The reference exports of SPEC.md that `export generate` makes (their sizes:
    `samples.exports.SHAPES`)."""

    demo = "demo"
    small = "small"
    large = "large"


@contextmanager
def interruptible(hint: str) -> Iterator[None]:
    """Ctrl-C (or SIGTERM) ends the command inside: the first one raises KeyboardInterrupt
    where the job is (which stops its worker processes and removes its temporary files on
    the way out); any later one is ignored while that happens, so that nothing cuts the
    clean-up short. Then one line on stderr and exit 130.

    An interrupt that lands in a finalizer (a `__del__`) is swallowed by CPython: then it
    is not lost but noted (`interrupts.catching_lost`, set up by cli/app.py), raised again
    where the job waits for its workers (`interrupts.checkpoint`), and the next Ctrl-C
    raises again too."""
    asked = False

    def handler(signum: int, frame: Any) -> None:
        nonlocal asked
        if not asked or interrupts.lost():
            asked = True
            raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    except KeyboardInterrupt:
        for sig in previous:  # ignored in C: also while the interpreter shuts down
            signal.signal(sig, signal.SIG_IGN)
        output.error(f"interrupted: {hint}")
        raise typer.Exit(130) from None
    for sig, old in previous.items():
        signal.signal(sig, old)


@app.command("list")
def list_exports(server: Server = DEFAULT_SERVER) -> None:
    """List the exports a server offers, as JSON.

    Example:

        patientkit export list --server http://127.0.0.1:8000
    """
    from patientkit.client.exports import ExportClient

    with ExportClient(server) as client:
        ids = client.export_ids(lambda n, why, wait: output.warn_retry("export list", n, why, wait))
    output.emit_json({"export_ids": ids})


@app.command()
def aggregate(
    export_id: Annotated[str, typer.Argument(help="The export to aggregate, e.g. demo.")],
    server: Server = DEFAULT_SERVER,
    concurrency: Concurrency = None,
    out: OutFile = None,
    fmt: ReportFormatOption = ReportFormat.json,
    attempts: Annotated[
        int, typer.Option(min=1, help="Attempts per download before the job fails.")
    ] = 6,
    scheduler: Annotated[
        str | None,
        typer.Option(
            envvar="PATIENTKIT_SCHEDULER",
            metavar="URL",
            help="Count on this Dask cluster (tcp://HOST:8786) instead of local processes; "
            "needs patientkit\\[dask]. The workers fetch from --server themselves.",
        ),
    ] = None,
    scheduler_timeout: Annotated[
        float,
        typer.Option(min=0.1, help="Seconds to wait for the scheduler, and for its first worker."),
    ] = 10.0,
) -> None:
    """Count events per patient and event type over every download of a served export.

    Each download is streamed and its count checked against its metadata; a failed or
    short download is retried from the start. Prints the totals as JSON (or --format
    table or csv). Exit 1 if a download still fails.

    Example:

        patientkit export aggregate demo --server http://127.0.0.1:8000 -o demo.json

        patientkit export aggregate demo --format table

        patientkit export aggregate demo --scheduler tcp://10.0.0.5:8786 --server http://10.0.0.2:8000
    """
    from dataclasses import replace

    from patientkit.client.http import DEFAULT_RETRY
    from patientkit.workflows.aggregate import AggregateHooks, aggregate_export

    retry = replace(DEFAULT_RETRY, attempts=attempts)
    with interruptible("nothing was counted"), Meter(f"export {export_id}") as meter:
        events = AggregateHooks(
            on_start=meter.start,
            on_progress=meter.advance,
            on_retry=output.warn_retry,
            on_done=lambda download_id, rows: meter.part_done(),
        )
        if scheduler:  # on a Dask cluster (SPEC.md Scale-out)
            from patientkit.cluster import aggregate_on_cluster

            counts = aggregate_on_cluster(
                scheduler, server, export_id, retry, events, scheduler_timeout
            )
        else:
            counts = aggregate_export(server, export_id, concurrency or cpu_count(), retry, events)
    emit_report(counts.report(), fmt, out)
    _summary(meter, counts.rows)


@app.command()
def count(
    paths: Annotated[
        list[str],
        typer.Argument(help="CSV files (.csv, .csv.gz), folders of them, or - for stdin."),
    ],
    out: OutFile = None,
    fmt: ReportFormatOption = ReportFormat.json,
    workers: Annotated[
        int | None, typer.Option(min=1, help="Processes to count with (default: CPU count).")
    ] = None,
) -> None:
    """Count events per patient and event type in local CSV files, on all cores.

    Prints the totals as JSON (or --format table or csv).
    A file with a `<uuid>.meta.json` beside it (as `export generate` writes) must hold the
    rows its metadata says, and a folder must hold every download its metadata names;
    otherwise nothing is printed and the exit code is 1. So is it for a file that cannot
    be read to its end (a truncated gzip): counts are printed whole or not at all.

    Example:

        patientkit export count exports/demo -o demo.json

        patientkit export count exports/demo --format csv > demo.csv

        zcat export.csv.gz | patientkit export count -
    """
    from patientkit.core.counting import Counts, CsvCounter
    from patientkit.core.parallel import count_each, count_stream, read_chunks, sniff_gzip

    files = [p for p in paths if p != "-"]
    with interruptible("nothing was counted"), Meter("counting") as meter:
        _check_folders(files)
        _start(meter, files, stdin="-" in paths)
        each = count_each(files, workers or cpu_count(), meter.advance)
        _check_rows(each)
        if "-" in paths:
            from patientkit.inputs import waiting_stream

            stdin = sniff_gzip(waiting_stream(sys.stdin.buffer, owned=False))
            each["-"] = count_stream(read_chunks(stdin), CsvCounter("<stdin>"), meter.advance)
    total = Counts()
    for counts in each.values():
        total.merge(counts)
    emit_report(total.report(), fmt, out)
    _summary(meter, total.rows)


def _start(meter: Meter, paths: list[str], stdin: bool) -> None:
    """Tell the meter the job's size: the rows, when the metadata beside every file says
    them; else the bytes, when every file is plain (a .gz file's size is not what is
    read); else nothing (the bar only shows what has been counted)."""
    if not output.show_progress():
        return  # nothing drawn: no need to look at the files twice
    from patientkit.core.parallel import expand_paths, is_gzip
    from patientkit.samples.exports import expected_rows

    files = expand_paths(paths)
    rows = [expected_rows(Path(f)) for f in files]
    known_rows = None if stdin or None in rows else sum(r for r in rows if r is not None)
    plain = not stdin and not any(is_gzip(f) for f in files)
    nbytes = sum(Path(f).stat().st_size for f in files) if plain else None
    meter.start(len(files) + stdin, known_rows, nbytes)


def _listed(problems: list[str], most: int = 5) -> str:
    shown = ", ".join(problems[:most])
    return shown + (f" and {len(problems) - most} more" if len(problems) > most else "")


def _check_folders(paths: list[str]) -> None:
    """Refuse a folder whose metadata names downloads that are missing or unfinished."""
    from patientkit.samples.exports import folder_problems

    for given in paths:
        folder = Path(given)
        if folder.is_dir():
            present = {p.name for p in folder.iterdir()}
            problems = folder_problems(folder, present)
            if problems:
                raise InputError(
                    f"{given}: incomplete export, nothing counted: {_listed(problems)} "
                    "(run `export generate` or the download again)"
                )


def _check_rows(each: dict[str, Counts]) -> None:
    """Refuse files whose rows differ from their metadata's `rows`."""
    from patientkit.samples.exports import expected_rows

    wrong = []
    for path, counts in each.items():
        expected = expected_rows(Path(path))
        if expected is not None and expected != counts.rows:
            wrong.append(f"{path} (counted {counts.rows:,} rows, its metadata says {expected:,})")
    if wrong:
        what = "download does" if len(wrong) == 1 else f"{len(wrong)} downloads do"
        raise InputError(
            f"{what} not match its metadata, nothing counted (partial or changed?): "
            f"{_listed(wrong)}"
        )


@app.command()
def generate(
    export: Annotated[ReferenceExport, typer.Argument(help="Which reference shape to generate.")],
    directory: Annotated[Path, typer.Argument(help="Folder to write DIR/<export>/<uuid>.csv")],
    seed: Annotated[int, typer.Option(help="Seed: the same seed gives the same bytes.")] = 0,
) -> None:
    """Generate a deterministic synthetic export of a reference shape, to count or serve.

    demo ≈ 15k rows, small ≈ 7.5M rows, large ≈ 150M rows; each download has its
    metadata beside it.

    Example:

        patientkit export generate demo exports && patientkit serve --exports exports
    """
    from patientkit.samples.exports import generate_export, plan_export

    plans = plan_export(export.value, seed)
    folder = directory / export.value
    planned = {f"{p.download_id}.csv" for p in plans}
    if folder.is_dir():
        strangers = [
            p.name
            for p in folder.iterdir()
            if p.name.endswith((".csv", ".csv.gz"))
            and not p.name.startswith(".")  # hidden: temporary files, ours or others'
            and p.name not in planned
        ]
        if strangers:
            raise typer.BadParameter(
                f"{folder} already holds {len(strangers)} downloads that seed {seed} does not "
                "make; remove them or choose another folder",
                param_hint="DIR",
            )
    with (
        interruptible("run the same command again to finish the folder"),
        Meter(f"generating {export.value}") as meter,
    ):
        meter.start(len(plans), sum(p.rows for p in plans))
        generate_export(export.value, directory, seed, on_progress=meter.advance)
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

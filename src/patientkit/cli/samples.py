"""`patientkit readings generate` and `patientkit records generate`: sample inputs.

Both write through `patientkit.samples` (one engine with the benchmarks and tests) and
print one JSON line on stdout saying what was written: `{"file", "format", "entries",
"invalid", "duplicates"}`. With FILE `-` the entries go to stdout as NDJSON and that line
goes to stderr instead (unless --quiet), so that the data stays clean for a pipe.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from patientkit.cli import output

SampleFile = Annotated[
    str,
    typer.Argument(
        metavar="FILE",
        help="Where to write: .ndjson, .jsonl, .json (an array), .csv, each optionally "
        ".gz; - for NDJSON on stdout.",
        show_default=False,
    ),
]
Invalid = Annotated[
    float,
    typer.Option(
        min=0.0,
        max=1.0,
        help="Fraction of invalid entries, of every kind the validators know (rounded "
        "to a whole number of entries).",
    ),
]
Duplicates = Annotated[float, typer.Option(min=0.0, max=1.0, help="Fraction of duplicates.")]
Seed = Annotated[int, typer.Option(help="Seed: the same seed and options give the same bytes.")]


def _report(written: dict[str, object], to_stdout: bool) -> None:
    line = json.dumps(written) + "\n"
    if to_stdout:
        output.info(line.rstrip("\n"))
        return
    with output.to_stdout():
        sys.stdout.write(line)
        sys.stdout.flush()


def readings(
    file: SampleFile,
    devices: Annotated[int, typer.Option(min=1, help="Number of devices.")] = 100,
    count: Annotated[int, typer.Option("--readings", min=0, help="Number of readings.")] = 10_000,
    invalid: Invalid = 0.0,
    duplicates: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Fraction of readings that repeat an earlier reading's device and instant.",
        ),
    ] = 0.0,
    seed: Seed = 0,
) -> None:
    """Write sample device readings to try `readings replay` with.

    Realistic and deterministic for a seed: each device reads once a minute from
    2021-09-29, in its own UTC offset. --invalid and --duplicates make exactly that
    fraction of bad or repeated readings. Prints what it wrote as one JSON line; the
    file appears whole or not at all.

    Example:

        patientkit readings generate readings.ndjson.gz --invalid 0.01

        patientkit readings replay readings.ndjson.gz --db readings.db
    """
    from patientkit.samples.inputs import generate_readings

    with output.to_stdout():
        written = generate_readings(
            file, count, devices=devices, duplicates=duplicates, seed=seed, invalid=invalid
        )
    _report(written.as_dict(), file == "-")


def records(
    file: SampleFile,
    count: Annotated[int, typer.Option("--records", min=0, help="Number of records.")] = 1_000,
    clinics: Annotated[int, typer.Option(min=1, help="Number of clinics (C001, C002, …).")] = 10,
    invalid: Invalid = 0.0,
    duplicates: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="Fraction of records that resend an earlier test_id."),
    ] = 0.0,
    seed: Seed = 0,
) -> None:
    """Write sample medical test records to try `records submit` with.

    Realistic and deterministic for a seed: UUID test ids, patients, clinics C001…,
    test types with plausible results and units. --invalid and --duplicates make
    exactly that fraction of bad or resent records. Prints what it wrote as one JSON
    line; the file appears whole or not at all.

    Example:

        patientkit records generate tests.ndjson --records 5000 --invalid 0.02

        patientkit records submit tests.ndjson --rejects rejects.ndjson
    """
    from patientkit.samples.inputs import generate_records

    with output.to_stdout():
        written = generate_records(
            file, count, clinics=clinics, duplicates=duplicates, seed=seed, invalid=invalid
        )
    _report(written.as_dict(), file == "-")

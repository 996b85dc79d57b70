"""`patientkit store …`: what a store holds."""

from __future__ import annotations

import json
import sys

import typer

from patientkit.cli import output
from patientkit.cli.options import DEFAULT_DB, Db

app = typer.Typer(
    help="Look into a store: what it holds and how big it is.\n\n"
    "Example: patientkit store info --db patientkit.db",
    no_args_is_help=True,
)


@app.command()
def info(db: Db = DEFAULT_DB) -> None:
    """Print what a store holds, as JSON.

    The keys: backend ("sqlite" or "postgresql"), schema_version, readings, devices,
    records, clinics and bytes (SQLite: the file and its -wal log, what the store takes
    on disk now; PostgreSQL: its tables and indexes). It never creates, migrates or
    changes the store: a SQLite file that does not exist is an error (exit 2).

    Example:

        patientkit store info --db readings.db

        patientkit store info --db postgresql://me@db.example:5432/patientkit
    """
    from patientkit.stores import store_info

    document = store_info(db)
    with output.to_stdout():
        sys.stdout.write(json.dumps(document) + "\n")
        sys.stdout.flush()

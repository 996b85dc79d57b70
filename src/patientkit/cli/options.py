"""Options shared by several commands, defined once."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

DEFAULT_SERVER = "http://127.0.0.1:8000"

Server = Annotated[
    str,
    typer.Option(
        "--server",
        envvar="PATIENTKIT_SERVER",
        help="Base URL of the export server.",
        show_default=True,
    ),
]

OutFile = Annotated[
    Path | None,
    typer.Option("--output", "-o", help="Also write the output (in --format) to this file."),
]

Concurrency = Annotated[
    int | None,
    typer.Option(min=1, help="Downloads or requests in flight at once (default: CPU count)."),
]


def cpu_count() -> int:
    return os.cpu_count() or 1


def store_folder(ctx: typer.Context, db: str) -> str:
    """The --db callback of every command: a SQLite store whose folder does not exist (or
    is not a folder) is a UsageError naming both, before the command starts, whether it
    would read the store or create it. Where the value came from (--db, PATIENTKIT_DB)
    is said too. A PostgreSQL URL is passed on as it is (text: a Path would fold its
    `//`)."""
    from patientkit.errors import UsageError
    from patientkit.stores import is_url

    if is_url(db):
        return db
    path = Path(db)
    if path.parent.is_dir():
        return str(path)
    where = "PATIENTKIT_DB" if db_source(ctx) == "ENVIRONMENT" else "--db"
    why = "is not a folder" if path.parent.exists() else "does not exist"
    raise UsageError(f"{where} {path}: the folder {path.parent} {why}")


Db = Annotated[
    str,
    typer.Option(
        "--db",
        envvar="PATIENTKIT_DB",
        help="The store: a SQLite file, or a PostgreSQL URL (postgresql://…).",
        show_default=True,
        callback=store_folder,
    ),
]
DEFAULT_DB = "patientkit.db"

To = Annotated[
    str | None,
    typer.Option(
        "--to",
        metavar="URL",
        help="API to deliver to (its base URL), instead of the store (--db).",
        show_default=False,
    ),
]

ReadFrom = Annotated[
    str | None,
    typer.Option(
        "--to",
        metavar="URL",
        help="API to read from (its base URL), instead of the store (--db).",
        show_default=False,
    ),
]


def db_source(ctx: typer.Context) -> str | None:
    """Where --db's value came from: COMMANDLINE, ENVIRONMENT, DEFAULT… The source is
    compared by name: typer vendors its own click, with its own enum."""
    return getattr(ctx.get_parameter_source("db"), "name", None)


def db_given(ctx: typer.Context) -> bool:
    """--db was on the command line (PATIENTKIT_DB or the default do not count)."""
    return db_source(ctx) == "COMMANDLINE"


def one_destination(ctx: typer.Context, to: str | None, message: str) -> None:
    """The check of every command with `--db` and `--to`: both on the command line is a
    UsageError with `message` (each command group's words, SPEC.md); PATIENTKIT_DB or
    the default --db beside --to is fine (--to wins)."""
    from patientkit.errors import UsageError

    if to is not None and db_given(ctx):
        raise UsageError(message)


Append = Annotated[
    bool,
    typer.Option(
        "--append",
        help="Add to the rejects / dead-letter file instead of writing it afresh.",
    ),
]

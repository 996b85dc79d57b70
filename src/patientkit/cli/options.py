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


Db = Annotated[
    Path,
    typer.Option("--db", envvar="PATIENTKIT_DB", help="The SQLite store.", show_default=True),
]
DEFAULT_DB = Path("patientkit.db")

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


def db_given(ctx: typer.Context) -> bool:
    """--db was on the command line (PATIENTKIT_DB or the default do not count). The
    source is compared by name: typer vendors its own click, with its own enum."""
    return getattr(ctx.get_parameter_source("db"), "name", None) == "COMMANDLINE"


Append = Annotated[
    bool,
    typer.Option(
        "--append",
        help="Add to the rejects / dead-letter file instead of writing it afresh.",
    ),
]

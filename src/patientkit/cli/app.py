"""The `patientkit` command: joins the command groups and handles errors in one place."""

from __future__ import annotations

import os
import signal
import sys
from typing import Annotated

import typer

from patientkit import __version__
from patientkit.cli import export, output, readings, records, serve
from patientkit.errors import PatientkitError

app = typer.Typer(
    name="patientkit",
    help="Move patient data between systems: aggregate exports, replay device readings, "
    "submit test records, and serve the APIs they talk to.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

app.add_typer(export.app, name="export")
app.add_typer(readings.app, name="readings")
app.add_typer(records.app, name="records")
app.command("serve")(serve.serve)

GLOBAL_FLAGS = ("--quiet", "-q", "--debug")


def _version(value: bool) -> None:
    if value:
        print(f"patientkit {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Silence stderr except errors.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Global options; --quiet and --debug may also be given after the command."""
    output.set_quiet(quiet)


def _hoist_global_flags(argv: list[str]) -> list[str]:
    """Move --quiet/--debug to the front so that they work after any command, too."""
    end = argv.index("--") if "--" in argv else len(argv)
    flags = [a for a in argv[:end] if a in GLOBAL_FLAGS]
    rest = [a for i, a in enumerate(argv) if i >= end or a not in GLOBAL_FLAGS]
    return flags + rest


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; exit with SPEC.md's codes, one line on stderr for any error."""
    args = _hoist_global_flags(list(sys.argv[1:] if argv is None else argv))
    debug = "--debug" in args or os.environ.get("PATIENTKIT_DEBUG") == "1"
    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `| head` ends us quietly
    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM stops a job like Ctrl-C does
    try:
        app(args=args, prog_name="patientkit")  # usage errors: typer prints them, exit 2
    except PatientkitError as exc:
        if debug:
            raise
        output.error(str(exc))
        sys.exit(exc.exit_code)
    except OSError as exc:
        if debug:
            raise
        output.error(f"{exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}")
        sys.exit(2)
    except Exception as exc:  # a bug of ours: still one line, the traceback on request
        if debug:
            raise
        output.error(f"internal error: {type(exc).__name__}: {exc} (--debug shows where)")
        sys.exit(1)

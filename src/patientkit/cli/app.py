"""The `patientkit` command: joins the command groups and handles errors in one place.

Every way a command can end goes through `main`: one line on stderr (`error: …`) and
SPEC.md's exit code; with --debug the traceback is printed first, and the exit code is
the same. Click's own handling of an interrupt or an EOFError (a bare `Aborted.`, or a
silent exit) is never reached: the root group turns them into errors of ours first.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import traceback
from typing import Annotated, Any, NoReturn

import click
import typer
from typer.core import TyperGroup

from patientkit import __version__
from patientkit.cli import export, output, readings, records, serve
from patientkit.errors import InputError, PatientkitError

INTERRUPTED = 130


class Interrupted(PatientkitError):
    """Ctrl-C or SIGTERM that reached the top: the job stopped (exit 130)."""

    exit_code = INTERRUPTED


class _Root(TyperGroup):
    """The root group: a KeyboardInterrupt, EOFError or click Abort raised while parsing
    or running any command becomes a PatientkitError here, before click's main turns it
    into a bare `Aborted.` (exit 1) or a silent exit 130."""

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except (KeyboardInterrupt, EOFError, click.exceptions.Abort) as exc:
            raise _ours(exc) from exc

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (KeyboardInterrupt, EOFError, click.exceptions.Abort) as exc:
            raise _ours(exc) from exc


def _ours(exc: BaseException) -> PatientkitError:
    if isinstance(exc, EOFError):  # an input that ended early, read outside inputs.py
        return InputError(f"an input ended before its end (truncated or corrupt): {exc}")
    return Interrupted("interrupted")


app = typer.Typer(
    cls=_Root,
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


def main(argv: list[str] | None = None) -> NoReturn:
    """Run the CLI; exit with SPEC.md's codes, one line on stderr for any error.

    SIGPIPE stays ignored (Python's default) for every command: a peer that closes a
    socket is an error to handle, never the end of the process (`serve` must outlive any
    client). Stdout closed under a command (`| head`) ends it quietly with exit 141
    (output.StdoutClosed)."""
    args = _hoist_global_flags(list(sys.argv[1:] if argv is None else argv))
    debug = "--debug" in args or os.environ.get("PATIENTKIT_DEBUG") == "1"
    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM stops a job like Ctrl-C does
    try:
        code = app(args=args, prog_name="patientkit")  # usage errors: typer prints them, exit 2
    except output.StdoutClosed:
        _silence_stdout()
        sys.exit(output.StdoutClosed.exit_code)
    except PatientkitError as exc:
        _fail(str(exc), exc.exit_code, debug)
    except OSError as exc:
        _fail(f"{exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}", 2, debug)
    except Exception as exc:  # a bug of ours: still one line, the traceback on request
        _fail(f"internal error: {type(exc).__name__}: {exc} (--debug shows where)", 1, debug)
    sys.exit(code if isinstance(code, int) else 0)


def _fail(message: str, code: int, debug: bool) -> NoReturn:
    """One `error: …` line (after the traceback with --debug); exit `code` either way."""
    if debug:
        traceback.print_exc()
    with contextlib.suppress(KeyboardInterrupt):  # a Ctrl-C now: still stop with the code
        output.error(message)
    sys.exit(code)


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the flush at exit finds no broken pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)

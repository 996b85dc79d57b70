"""The `patientkit` command: joins the command groups and handles errors in one place.

Every way a command can end goes through `main`: one line on stderr (`error: …`) and
SPEC.md's exit code; with --debug the traceback is printed first, and the exit code is
the same. Click's own handling of an interrupt or an EOFError (a bare `Aborted.`, or a
silent exit) is never reached: the root group turns them into errors of ours first.
"""

from __future__ import annotations

import signal

_EARLY: list[int] = []  # a Ctrl-C or SIGTERM while the modules below load: main() stops


def _defer(signum: int, frame: object) -> None:
    _EARLY.append(signum)


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
try:
    _BEFORE = {sig: signal.signal(sig, _defer) for sig in _STOP_SIGNALS}
except ValueError:  # imported outside the main thread: nothing to defer
    _BEFORE = {}

import atexit  # noqa: E402 - after the deferral: loading modules takes most of start-up
import contextlib  # noqa: E402
import importlib  # noqa: E402
import inspect  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
from typing import Annotated, Any, NoReturn  # noqa: E402

import typer  # noqa: E402
from typer.core import TyperGroup  # noqa: E402

from patientkit import __version__  # noqa: E402
from patientkit.cli import output  # noqa: E402
from patientkit.core import interrupts  # noqa: E402
from patientkit.errors import InputError, PatientkitError  # noqa: E402
from patientkit.workflows.signals import caller_reports  # noqa: E402

for _sig, _handler in _BEFORE.items():  # a plain import (tests) keeps its handlers
    signal.signal(_sig, _handler)

INTERRUPTED = 130


class Interrupted(PatientkitError):
    """Ctrl-C or SIGTERM that reached the top: the job stopped (exit 130)."""

    exit_code = INTERRUPTED


class _Root(TyperGroup):
    """The root group: a KeyboardInterrupt, EOFError or typer.Abort raised while parsing
    or running any command becomes a PatientkitError here, before click's main turns it
    into a bare `Aborted.` (exit 1) or a silent exit 130."""

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().make_context(*args, **kwargs)
        except (KeyboardInterrupt, EOFError, typer.Abort) as exc:
            raise _ours(exc) from exc

    def invoke(self, ctx: Any) -> Any:  # typer's vendored click.Context
        try:
            _stop_on_signals()
            return super().invoke(ctx)
        except (KeyboardInterrupt, EOFError, typer.Abort) as exc:
            raise _ours(exc) from exc


def _ours(exc: BaseException) -> PatientkitError:
    if isinstance(exc, EOFError):  # an input that ended early, read outside inputs.py
        return InputError(f"an input ended before its end (truncated or corrupt): {exc}")
    return Interrupted("interrupted")


def reflow(text: str) -> str:
    """`text` (a docstring or help) dedented, each prose paragraph on one line: a terminal
    of any width then wraps it whole. The typer we pin keeps a docstring's line breaks
    and rich wraps each line again, so at 80 columns a paragraph written 88 wide came
    out with a word or two alone on every other line. A paragraph with an indented
    line (an example) is kept as written; paragraphs are separated by blank lines."""
    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(
        p if any(line[:1].isspace() for line in p.splitlines()) else " ".join(p.split("\n"))
        for p in paragraphs
    )


def _reflow_help(group: typer.Typer) -> None:
    """Reflow (above) the help of `group`, its commands and its groups, all the way down."""
    if isinstance(group.info.help, str):
        group.info.help = reflow(group.info.help)
    for command in group.registered_commands:
        doc = command.help if command.help is not None else inspect.getdoc(command.callback)
        if doc:
            command.help = reflow(doc)
    for sub in group.registered_groups:
        if sub.typer_instance is not None:
            _reflow_help(sub.typer_instance)


# The commands, in the order `patientkit --help` lists them: a group's module (its `app`),
# or a single command's module and function. Each module is imported only when the root is
# built with it (`_build`): a command's run loads its own group alone.
COMMANDS: dict[str, tuple[str, str | None]] = {
    "export": ("patientkit.cli.export", None),
    "readings": ("patientkit.cli.readings", None),
    "records": ("patientkit.cli.records", None),
    "store": ("patientkit.cli.store", None),
    "serve": ("patientkit.cli.serve", "serve"),
}
GLOBAL_FLAGS = ("--quiet", "-q", "--debug")
_COMPLETE = "_PATIENTKIT_COMPLETE"  # click's shell completion: it needs every command


def _build(names: tuple[str, ...] = tuple(COMMANDS)) -> typer.Typer:
    """The root command with the commands `names` (all of them by default)."""
    whole = typer.Typer(
        cls=_Root,
        name="patientkit",
        help="Move patient data between systems: aggregate exports, replay device readings, "
        "submit test records, and serve the APIs they talk to.",
        epilog="Examples:\n\n"
        "  patientkit export generate demo exports\n\n"
        "  patientkit serve --exports exports    # the three APIs on one port\n\n"
        "  patientkit export aggregate demo --format table\n\n"
        "  patientkit <command> --help    # each command's options and examples",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    whole.callback()(root)
    for name in names:
        module_name, function = COMMANDS[name]
        module = importlib.import_module(module_name)
        if function is None:
            whole.add_typer(module.app, name=name)
        else:
            whole.command(name)(getattr(module, function))
    _reflow_help(whole)
    return whole


def _root_for(args: list[str]) -> typer.Typer:
    """The root for one run: with only the command `args` name when nothing but global
    flags comes before it (what that command parses and prints is then the same as with
    every command there, and the others are never imported); the whole root otherwise
    (no command, an unknown one, `--help` or `--version` first, shell completion)."""
    if _COMPLETE not in os.environ:
        for arg in args:
            if arg not in GLOBAL_FLAGS:
                if arg in COMMANDS:
                    return _build((arg,))
                break
    return __getattr__("app")


def __getattr__(name: str) -> Any:
    """`app`: the whole root, built on first use (for tests and tools that inspect it)."""
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    whole = globals()["app"] = _build()
    return whole


def _version(value: bool) -> None:
    """`patientkit 0.1.0 (Python 3.11.7, store schema 3)`: the schema version this
    patientkit writes, from the storage module, imported only here (start-up stays
    light); no store is opened."""
    if value:
        import platform

        from patientkit.core.storage import SCHEMA_VERSION

        python = platform.python_version()
        print(f"patientkit {__version__} (Python {python}, store schema {SCHEMA_VERSION})")
        raise typer.Exit()


def root(
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Silence stderr except errors.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_version,
            is_eager=True,
            help="Print the versions of patientkit, Python and the store schema.",
        ),
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


def _stop_on_signals() -> None:
    """From here on (the command runs), Ctrl-C and SIGTERM raise KeyboardInterrupt. Until
    here they were only noted (`_defer`): one landing in typer's evaluation of annotations
    (an `eval`) would make CPython end the process by SIGINT at exit whatever we catch;
    one noted already stops the command now. A job asked to stop lets the command write
    its report whole (workflows/signals.py)."""
    caller_reports()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM stops a job like Ctrl-C does
    if _EARLY:
        raise KeyboardInterrupt


def _ignore_stop_signals() -> None:
    """The last exit handler: the interpreter's finalization would put SIGINT back to
    its default action, and a Ctrl-C then would end us by the signal (exit -2) instead
    of with our code."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


def _exit_now(signum: int, frame: object) -> None:
    """A Ctrl-C while the process exits (its output is written): exit 130 now, rather
    than a KeyboardInterrupt traceback from an exit handler. A store process of ours
    sees its pipe close and ends too."""
    os._exit(INTERRUPTED)


def main(argv: list[str] | None = None) -> NoReturn:
    """Run the CLI; exit with SPEC.md's codes, one line on stderr for any error.

    SIGPIPE stays ignored (Python's default) for every command: a peer that closes a
    socket is an error to handle, never the end of the process (`serve` must outlive any
    client). Stdout closed under a command (`| head`) ends it quietly with exit 141
    (output.StdoutClosed). A Ctrl-C at any moment ends it with exit 130 and one line."""
    atexit.register(_ignore_stop_signals)  # registered first: runs after every other
    _exit(run(argv))


def run(argv: list[str] | None = None) -> int:
    """Run one command (`argv`, else sys.argv[1:]) and return its exit code (SPEC.md),
    having written its output and any `error: …` line; never raises, never exits. The
    process's part (exit handlers, the exit itself) is `main`'s: this is the seam the
    tests call in their own process. Must run in the main thread (it sets the handlers
    of SIGINT and SIGTERM, and leaves `_exit_now` on them: the command has ended)."""
    args = _hoist_global_flags(list(sys.argv[1:] if argv is None else argv))
    debug = "--debug" in args or os.environ.get("PATIENTKIT_DEBUG") == "1"
    for sig in _STOP_SIGNALS:  # until the command runs (see _stop_on_signals)
        signal.signal(sig, _defer)
    try:
        try:
            if _EARLY:  # Ctrl-C while starting up
                raise Interrupted("interrupted")
            # exits; usage errors: typer's, exit 2
            with interrupts.catching_lost():  # a Ctrl-C a finalizer swallowed: not lost
                _root_for(args)(args=args, prog_name="patientkit")
            code: int = 0
        except SystemExit as exc:  # typer's exit, or a typer.Exit(code) of a command
            code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
        except output.StdoutClosed:
            _silence_stdout()
            code = output.StdoutClosed.exit_code
        except PatientkitError as exc:
            code = _fail(str(exc), exc.exit_code, debug)
        except KeyboardInterrupt:  # outside any command (typer building the commands)
            code = _fail("interrupted", INTERRUPTED, debug)
        except OSError as exc:
            reason = f"{exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}"
            code = _fail(reason, 2, debug)
        except Exception as exc:  # a bug of ours: still one line, the traceback on request
            code = _fail(
                f"internal error: {type(exc).__name__}: {exc} (--debug shows where)", 1, debug
            )
    finally:  # the command has ended: a Ctrl-C from now on ends the process at once
        caller_reports(False)
        for sig in _STOP_SIGNALS:
            signal.signal(sig, _exit_now)
    return code


def _fail(message: str, code: int, debug: bool) -> int:
    """One `error: …` line (after the traceback with --debug); returns `code` to exit
    with either way. A Ctrl-C while it is written waits until it is out."""
    for sig in _STOP_SIGNALS:
        signal.signal(sig, _defer)
    if debug:
        traceback.print_exc()
    output.error(message)
    return code


def _exit(code: int) -> NoReturn:
    """Exit with `code`. After an interrupt, the exit handlers run here and the process
    ends by os._exit: CPython notes a KeyboardInterrupt that passed through an exec or
    eval (dataclasses, namedtuple and typer's annotations use them) as unhandled, however
    it was caught, and would end the process by SIGINT (-2) instead of with 130."""
    if code != INTERRUPTED:
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the flush at exit finds no broken pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)

"""Where the CLI writes: data to stdout as JSON, everything else to stderr through rich."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # rich is imported on the first line written to stderr, not at start-up
    from collections.abc import Iterator, Sequence

    from rich.console import Console

_state = {"quiet": False}


def set_quiet(quiet: bool) -> None:
    _state["quiet"] = quiet


def is_quiet() -> bool:
    return _state["quiet"]


_console: tuple[object, Console] | None = None  # (the stderr it writes to, the console)


def err_console() -> Console:
    """The one console on the current sys.stderr (tests swap it), so that warnings print
    above a live progress bar rather than through it. Kept with the stream itself, not its
    id(): a stream swapped in after the first was freed may get the same id, and was then
    given the first one's console (made for a terminal: colour codes in a captured error)."""
    global _console
    if _console is None or _console[0] is not sys.stderr:
        from rich.console import Console

        console = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)
        _console = (sys.stderr, console)
    return _console[1]


def info(message: str) -> None:
    if not is_quiet() and not _plain(message):
        err_console().print(message, markup=False)


_plain_lock = threading.Lock()


def _plain(message: str) -> bool:
    """Write a line straight to stderr, without loading rich (about 25 ms of a short
    command's start-up; some 0.2 ms a line after), when rich would write exactly `message`
    and a newline, in whatever style it was asked for (colours only on a terminal):
    printable ASCII (rich strips control codes and expands tabs), stderr not a terminal
    and nothing in the environment telling rich it is one (no live progress bar, no
    styles), and no console made for this stderr yet (it may be quiet after a broken
    pipe). False when it did not write: the caller prints through rich. A broken pipe is
    handled as rich handles it (`Console.on_broken_pipe`)."""
    if (
        (_console is not None and _console[0] is sys.stderr)
        or not (message.isascii() and message.isprintable())
        or "FORCE_COLOR" in os.environ
        or "TTY_COMPATIBLE" in os.environ
        or sys.stderr.isatty()
    ):
        return False
    with _plain_lock:
        try:
            sys.stderr.write(message + "\n")
            sys.stderr.flush()
        except BrokenPipeError:
            err_console().on_broken_pipe()
    return True


def warn(message: str) -> None:
    """A warning line (yellow on a terminal): one an invalid record of a replay or a
    submit, so plain where rich would write it plain."""
    if not is_quiet() and not _plain(f"warning: {message}"):
        err_console().print(f"warning: {message}", style="yellow", markup=False)


def warn_retry(what: str, attempt: int, reason: str, delay: float) -> None:
    """The one warning line for a failed attempt that will be retried in `delay` seconds
    (every command that retries says it this way)."""
    warn(f"{what}: attempt {attempt} failed ({reason}); retrying in {delay:.1f}s")


def error(message: str) -> None:
    if not _plain(f"error: {message}"):
        err_console().print(f"error: {message}", style="bold red", markup=False)


def job_summary(
    verb: str,
    noun: str,
    read: int,
    outcomes: Sequence[tuple[int, str]],
    problems: Sequence[tuple[int, str]],
    seconds: float,
    see: Path | None = None,
) -> bool:
    """The one line for people that ends a job moving `noun` (records, readings) on
    stderr, after its JSON summary on stdout; shared by `records submit` and `readings
    replay`. With problems (count, name; those of count 0 are left out), an error line
    `N invalid, M failed of R records (see FILE)`, and True: the caller exits 1.
    Otherwise `submitted R records: N created, M duplicates in 0.12s` (an info line, gone
    with -q),
    and False."""
    wrong = [f"{count} {name}" for count, name in problems if count]
    if wrong:
        where = f" (see {see})" if see is not None else ""
        error(f"{', '.join(wrong)} of {read} {noun}{where}")
        return True
    done = ", ".join(f"{count} {name}" for count, name in outcomes)
    info(f"{verb} {read} {noun}: {done} in {seconds:.2f}s")
    return False


def show_progress() -> bool:
    """A live progress bar only on a terminal, and never with --quiet."""
    return not is_quiet() and sys.stderr.isatty()


def emit_json(document: Any, out_file: Path | None = None) -> None:
    """Print one JSON document on stdout; with out_file, write the same text there too."""
    text = json.dumps(document, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
    if out_file is not None:
        write_atomic(out_file, text)
    with to_stdout():
        sys.stdout.write(text)
        sys.stdout.flush()


class StdoutClosed(Exception):
    """Whoever read our stdout is gone (`| head` has what it wanted): the CLI ends
    quietly with exit 141, as a process ended by SIGPIPE would."""

    exit_code = 141


@contextlib.contextmanager
def to_stdout() -> Iterator[None]:
    """Around writes to stdout: a closed pipe becomes StdoutClosed. SIGPIPE stays ignored
    in every command (so a socket closed by a peer is an error, never the end of the
    process, and `serve` never dies of it); this gives `| head` its quiet end."""
    try:
        yield
    except BrokenPipeError:
        raise StdoutClosed from None


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file of this run alone, in the same
    folder, renamed over `path` when complete: a reader never sees half a file, two runs
    writing one file never mix their bytes (the last rename wins, whole), and a run that
    fails leaves no partial file. Raises UsageError if the folder cannot be written."""
    import tempfile

    from patientkit.errors import UsageError

    folder = path.parent
    try:
        handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        Path(temporary).chmod(0o666 & ~_UMASK)  # mkstemp's 0600: the usual mode instead
        Path(temporary).replace(path)
    except BaseException as exc:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None
        raise


def _read_umask() -> int:
    """The process's umask, read once at import (setting it is not thread-safe)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()

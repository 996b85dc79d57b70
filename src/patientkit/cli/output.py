"""Where the CLI writes: data to stdout as JSON, everything else to stderr through rich."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # rich is imported on the first line written to stderr, not at start-up
    from rich.console import Console

_state = {"quiet": False}


def set_quiet(quiet: bool) -> None:
    _state["quiet"] = quiet


def is_quiet() -> bool:
    return _state["quiet"]


_consoles: dict[int, Console] = {}


def err_console() -> Console:
    """The one console on the current sys.stderr (tests swap it), so that warnings print
    above a live progress bar rather than through it."""
    key = id(sys.stderr)
    if key not in _consoles:
        from rich.console import Console

        _consoles.clear()
        _consoles[key] = Console(stderr=True, highlight=False, soft_wrap=True)
    return _consoles[key]


def info(message: str) -> None:
    if not is_quiet():
        err_console().print(message, markup=False)


def warn(message: str) -> None:
    if not is_quiet():
        err_console().print(f"warning: {message}", style="yellow", markup=False)


def error(message: str) -> None:
    err_console().print(f"error: {message}", style="bold red", markup=False)


def show_progress() -> bool:
    """A live progress bar only on a terminal, and never with --quiet."""
    return not is_quiet() and sys.stderr.isatty()


def emit_json(document: Any, out_file: Path | None = None) -> None:
    """Print one JSON document on stdout; with out_file, write the same text there too."""
    text = json.dumps(document, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
    if out_file is not None:
        write_atomic(out_file, text)
    sys.stdout.write(text)
    sys.stdout.flush()


def write_atomic(path: Path, text: str) -> None:
    """Write through a temporary file and rename, so a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)

"""The one error tree of patientkit.

    PatientkitError            exit 1 unless a subclass says otherwise
    ├── UsageError             exit 2: a bad flag, an unreadable file, a bad setting
    ├── RemoteError            exit 2: a server that cannot be reached or answers nonsense
    ├── InputError             exit 1: invalid data in an input, named by file and line
    │   └── ReadError          exit 1: an input that cannot be read to its end
    └── DeliveryError          exit 1: data that could not be delivered after retries

The CLI catches PatientkitError in one place and prints its message as one line.
Core modules raise these too; they know nothing of the CLI.
"""

from __future__ import annotations

import gzip
import zlib


class PatientkitError(Exception):
    """Base of every error patientkit raises on purpose."""

    exit_code = 1


class UsageError(PatientkitError):
    exit_code = 2


class RemoteError(PatientkitError):
    exit_code = 2


class InputError(PatientkitError):
    exit_code = 1


class DeliveryError(PatientkitError):
    exit_code = 1


class ReadError(InputError):
    """An input that cannot be read to its end (a truncated or corrupt gzip stream, an I/O
    error part way): whatever was read before it stands, but counts of it would be partial.
    Made by `unreadable`, so that every command says it in the same words."""


def unreadable(source: str, exc: BaseException) -> ReadError:
    """The one-line error for `source` (a path or `<stdin>`) failing mid-read with `exc`
    (EOFError, OSError or zlib.error from reading or decompressing it)."""
    if isinstance(exc, EOFError | zlib.error | gzip.BadGzipFile):
        why = f"truncated or corrupt compressed data ({exc})"
    else:
        why = f"read error ({exc.strerror or exc})" if isinstance(exc, OSError) else str(exc)
    return ReadError(f"{source}: cannot read it to the end: {why}")

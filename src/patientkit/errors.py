"""The one error tree of patientkit: every error class it raises on purpose.

    PatientkitError              exit 1 unless a subclass says otherwise
    ├── UsageError               exit 2: a bad flag, an unreadable file, a bad setting
    │   └── SpoolLocked          core.spool: another live buffer holds the spool
    ├── RemoteError              exit 2: a server that cannot be reached or answers nonsense
    │   ├── NoServer             client.http: nothing listens at the URL (first contact)
    │   ├── CertificateError     client.http: the server's TLS certificate is not trusted
    │   └── NotAuthenticated     client.http: the server refused our bearer token (401/403)
    ├── InputError               exit 1: invalid data in an input, named by file and line
    │   ├── ReadError            an input that cannot be read to its end
    │   └── CsvError             core.counting: a malformed CSV row in an export
    ├── DeliveryError            exit 1: data that could not be delivered after retries
    │   ├── BufferFull           core.delivery: no room came within track()'s timeout
    │   └── BufferStopped        core.delivery: failure limit, broken sink, or closed
    ├── RetryableError           core.retry: failed, may succeed if tried again
    ├── SinkError                core.sinks: how a sink says a whole batch went
    │   ├── PermanentError       rejected for good: every event dead-lettered
    │   ├── PoisonError          some event can never be taken: bisect to find it
    │   ├── PayloadTooLarge      too large: send it in halves
    │   └── SinkClosed           the sink was stopped (Ctrl-C): stop, hand every event back
    ├── SpoolError               core.spool: the spool file cannot be read or written
    ├── WorkerDied               core.workers: a worker process ended without an answer
    ├── StoreUnavailable         writer: the store process cannot be used (exit 1)
    ├── StoreRefused             writer: the store refused a batch for good
    └── Interrupted              cli.app: Ctrl-C (exit 130)

Module paths are under `patientkit.`; classes without one live here. The CLI catches
PatientkitError in one place and prints its message as one line with the exit code
above. Core modules raise these too; they know nothing of the CLI. The library's public
names (`patientkit.__all__`) include this tree's general classes; a test checks that this
docstring names every subclass there is (tests/test_exported_members.py).
"""

from __future__ import annotations

import gzip
import zlib
from typing import Any


class PatientkitError(Exception):
    """Base of every error patientkit raises on purpose. Every one pickles whole (its
    class, args and attributes), whatever its `__init__` takes: an error raised in a
    worker process or on a Dask worker arrives as itself."""

    exit_code = 1

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild, (type(self), self.args, self.__dict__)


def _rebuild(
    cls: type[PatientkitError], args: tuple[Any, ...], state: dict[str, Any]
) -> PatientkitError:
    """An error as `PatientkitError.__reduce__` took it apart, without calling __init__."""
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


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

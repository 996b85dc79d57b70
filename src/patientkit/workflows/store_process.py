"""The store in a child process, for jobs that parse input on one core and write on the
other (why: docs/performance.md): a `Store` method (`patientkit.core.store`) called
through a pipe.

    with StoreProcess(target) as writer:
        new = writer.call("add_readings", readings)   # runs in the child, one transaction

Arguments and answers are pickled (plain tuples and dicts are cheap). A failure in the
child comes back as an exception here: StoreUnavailable (the child died or the store is
busy or failing: worth retrying), StoreRefused (the store can never take these values: one
cannot be bound or breaks a constraint), UsageError (the store cannot be opened).
"""

from __future__ import annotations

import contextlib
import pickle
import signal
import time
from collections.abc import Callable
from multiprocessing import get_all_start_methods, get_context
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from patientkit.core.store import DATA_ERRORS, refusal
from patientkit.errors import PatientkitError, UsageError
from patientkit.stores import open_store

_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
HURRIED = 1.0  # seconds the child gets to finish after a second Ctrl-C


class StoreUnavailable(PatientkitError):
    """The store could not do it now; the call may succeed if tried again."""


class StoreRefused(PatientkitError):
    """The store can never take these arguments (the same call fails the same way)."""


# What pickling the arguments of a call can raise for a value that cannot be sent.
_SEND_ERRORS: tuple[type[Exception], ...] = (pickle.PicklingError, *DATA_ERRORS)


def _serve(target: str, conn: Connection, parent_end: Connection) -> None:
    parent_end.close()  # a forked child holds a copy: without this, no EOF when the parent dies
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)  # blocked by the fork
    try:
        store = open_store(target)
    except PatientkitError as exc:
        with contextlib.suppress(OSError):
            conn.send(("usage", str(exc)))
        return
    try:
        conn.send(("ok", None))
    except OSError:  # the parent is gone already
        store.close()
        return
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):  # the parent is gone (closed, or reset the pipe)
            break
        if request is None:
            break
        method, args = request
        try:
            answer = ("ok", getattr(store, method)(*args))
        except DATA_ERRORS as exc:  # whatever the store (core.store): refused for good
            answer = ("refused", refusal(exc))
        except Exception as exc:  # a locked file, a server down past the store's retries
            answer = ("retry", f"{type(exc).__name__}: {exc}")
        try:
            conn.send(answer)
        except OSError:  # the parent is gone
            break
    store.close()


class StoreProcess:
    """A store (`open_store(target)`: a SQLite path or a PostgreSQL URL) served by a child
    process: `call(method, *args)` runs the store's method there and returns its answer.
    UsageError if the child cannot open the store."""

    def __init__(self, target: str | Path) -> None:
        self.target = str(target)
        self._start()

    def _start(self) -> None:
        context = get_context("fork") if "fork" in get_all_start_methods() else get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(
            target=_serve,
            args=(self.target, child, self.conn),
            name="patientkit-store",
            daemon=True,
        )
        # Ctrl-C waits while we fork: a signal landing in the fork's own handlers is lost
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            self.process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        child.close()
        status, message = self._receive()
        if status == "usage":
            self.process.join()
            raise UsageError(message)

    def _receive(self) -> tuple[str, Any]:
        try:
            return self.conn.recv()
        except (EOFError, OSError):
            raise StoreUnavailable("the store process stopped") from None

    def call(self, method: str, *args: Any) -> Any:
        if not self.process.is_alive():
            self._start()  # a crashed child: start another (the store survived it)
        try:
            self.conn.send((method, args))  # pickled whole before a byte is sent
        except _SEND_ERRORS as exc:
            raise StoreRefused(f"cannot be sent to the store: {refusal(exc)}") from None
        except OSError:
            raise StoreUnavailable("the store process stopped") from None
        status, value = self._receive()
        if status == "refused":
            raise StoreRefused(value)
        if status != "ok":
            raise StoreUnavailable(value)
        return value

    def close(self, timeout: float = 30.0, hurry: Callable[[], bool] = lambda: False) -> None:
        """Ask the child to finish (it ends the transaction in progress, if any) and wait
        up to `timeout` seconds, or HURRIED seconds once hurry() is True (a second Ctrl-C,
        noted by a signal handler: looked at every 0.05 s); a child still running then is
        terminated (SIGTERM: an unfinished transaction is rolled back), so no process
        outlives the job."""
        if self.process.is_alive():
            with contextlib.suppress(OSError):
                self.conn.send(None)
            deadline = time.monotonic() + timeout
            hurried = False
            while self.process.is_alive() and time.monotonic() < deadline:
                if not hurried and hurry():
                    hurried, deadline = True, min(deadline, time.monotonic() + HURRIED)
                self.process.join(timeout=min(0.05, max(0.0, deadline - time.monotonic())))
            if self.process.is_alive():
                self.process.terminate()
                self.process.join(timeout=5)
                if self.process.is_alive():
                    self.process.kill()
                    self.process.join()
        self.conn.close()

    def __enter__(self) -> StoreProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""Ctrl-C and SIGTERM as a request to stop: the job stops reading, settles what it has
taken, reports, and exits 130. A second Ctrl-C stops waiting for delivery.

The handler raises nothing at an arbitrary point (where an exception could land in a
`__del__` and be swallowed, or print a traceback): it records the request, and raises
only while the main thread waits at a point of ours that expects it (a blocking read of
an input, the wait for delivery; see core/interrupts.py).

In the CLI, a job that was asked to stop ends by reporting (its summary, its one error
line, exit 130). From the job's end until the command has written that report, a further
Ctrl-C changes nothing (`absorb_stops`, for a caller that said `caller_reports()`): with
the raising handler back, one pressed just as the job ended cut the report short to a bare
`error: interrupted` and lost the summary. A program calling the engines itself gets its
handlers back as they were."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from patientkit.core import interrupts

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_caller_reports = False  # see caller_reports


@contextmanager
def stop_requests(
    on_stop: Callable[[], None], on_abandon: Callable[[], None] = lambda: None
) -> Iterator[None]:
    """While inside, the first SIGINT or SIGTERM calls on_stop() (and ends a read that
    waits for input with StopReading); the next ones call on_abandon() and raise
    KeyboardInterrupt if the main thread waits at a wait point (`interrupts.wait_point`).
    Both callbacks must be safe in a signal handler (set flags, take no lock). The
    previous handlers come back on the way out."""
    asked = False

    def handler(signum: int, frame: Any) -> None:
        nonlocal asked
        if not asked:
            asked = True
            interrupts.request_stop()
            on_stop()
            if interrupts.waiting():
                raise interrupts.StopReading
            return
        on_abandon()
        if interrupts.waiting():
            raise KeyboardInterrupt

    interrupts.reset()
    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        if asked:
            absorb_stops()
        interrupts.reset()


def caller_reports(reports: bool = True) -> None:
    """Say whether the caller writes a report after a job that was asked to stop (the
    CLI does, for the time its command runs: cli/app.py); only then do stopped jobs
    absorb further stops as they end (`absorb_stops`)."""
    global _caller_reports
    _caller_reports = reports


def _absorb(signum: int, frame: Any) -> None:
    """A Ctrl-C or SIGTERM after the job was asked to stop and ended: already stopping."""


def absorb_stops() -> None:
    """For a job that was asked to stop, as it ends: when the caller reports
    (`caller_reports`), SIGINT and SIGTERM change nothing from now on, so that its report
    is written whole (the CLI puts its own handlers back once the command has ended).
    Otherwise, and outside the main thread, nothing changes."""
    if _caller_reports and threading.current_thread() is threading.main_thread():
        for sig in STOP_SIGNALS:
            signal.signal(sig, _absorb)

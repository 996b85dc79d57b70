"""Ctrl-C and SIGTERM as a request to stop: the job stops reading, settles what it has
taken, reports, and exits 130. A second Ctrl-C aborts at once."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def stop_requests(on_stop: Callable[[], None]) -> Iterator[None]:
    """While inside, the first SIGINT or SIGTERM calls on_stop(); the next raises
    KeyboardInterrupt. The previous handlers come back on the way out."""
    asked = False

    def handler(signum: int, frame: Any) -> None:
        nonlocal asked
        if asked:
            raise KeyboardInterrupt
        asked = True
        on_stop()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)

"""A pool of worker processes that ignore Ctrl-C and can send messages home.

The parent owns the interrupt: on Ctrl-C (or any error) it terminates the pool at once,
so that no worker keeps streaming after the job is over. Workers call `send(message)`;
a thread in the parent hands each message to `on_message`, in order of arrival.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from multiprocessing import get_all_start_methods, get_context
from multiprocessing.pool import Pool
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")

_queue: Any = None  # in a worker: where send() puts messages, if the parent listens


def _start(queue: Any) -> None:
    global _queue
    _queue = queue
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # and ends us with SIGTERM


def send(message: Any) -> None:
    """From a worker: hand a message to the parent's on_message (dropped if none)."""
    if _queue is not None:
        _queue.put(message)


def listening() -> bool:
    return _queue is not None


class WorkerPool:
    def __init__(self, processes: int, on_message: Callable[[Any], None] | None = None) -> None:
        # fork starts a worker without importing anything again (spawn and forkserver
        # re-import the CLI in each worker). It is safe because every worker is forked in
        # Pool() below, before this process starts any thread of its own: callers keep
        # progress bars free of refresh threads (see cli/progress.py).
        context = get_context("fork" if "fork" in get_all_start_methods() else "spawn")
        self.on_message = on_message
        self.queue = context.Queue() if on_message is not None else None
        self.pool: Pool = context.Pool(processes, initializer=_start, initargs=(self.queue,))
        self.drain: threading.Thread | None = None
        if self.queue is not None:
            self.drain = threading.Thread(target=self._drain, name="pool-messages", daemon=True)
            self.drain.start()

    def _drain(self) -> None:
        assert self.queue is not None and self.on_message is not None
        while (message := self.queue.get()) is not None:
            self.on_message(message)

    def imap_unordered(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        return self.pool.imap_unordered(fn, items)

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        return self.pool.map(fn, items, chunksize=1)

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        if kind is None:
            self.pool.close()
        else:
            self.pool.terminate()  # Ctrl-C or an error: stop every worker now
        self.pool.join()
        if self.drain is not None:
            assert self.queue is not None
            self.queue.put(None)  # after the workers' messages: the queue keeps order
            self.drain.join()

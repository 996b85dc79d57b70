"""A pool of worker processes that ignore Ctrl-C, can send messages home, and never
outlive the job.

Each worker has its own pipe to the parent, and the parent hands it one task at a time;
nothing is shared between workers (no queue lock that a killed worker could take with it,
no thread in the parent), so stopping the pool can never hang. Workers call
`send(message)`; the parent hands each message to `on_message`, in its own thread, in
order of arrival, while it waits for results.

The parent owns the interrupt. Workers are started with SIGINT and SIGTERM blocked and
then ignore SIGINT (a Ctrl-C at the terminal reaches the whole process group) and die on
SIGTERM; a Ctrl-C that reaches the parent while the pool starts is delivered once every
worker is known, so the pool can stop them. On Ctrl-C or any error the parent terminates
every worker, waits at most STOP_WAIT seconds, kills what is left and reaps them all,
with Ctrl-C ignored meanwhile (a second Ctrl-C cannot cut the clean-up short). A worker
that dies mid-task is an error (WorkerDied), never a hang.
"""

from __future__ import annotations

import contextlib
import pickle
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from multiprocessing import get_all_start_methods, get_context
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any, TypeVar

from patientkit.core import interrupts
from patientkit.errors import PatientkitError

T = TypeVar("T")
R = TypeVar("R")

STOP_WAIT = 1.0  # seconds terminated workers get to exit before they are killed
CHECK_EVERY = 0.2  # seconds between looks for a lost interrupt while waiting for workers
_SIGNALS = {signal.SIGINT, signal.SIGTERM}

_conn: Connection | None = None  # in a worker: where send() writes, if the parent listens


class WorkerDied(PatientkitError):
    """A worker process ended without answering (killed, out of memory)."""


def send(message: Any) -> None:
    """From a worker: hand a message to the parent's on_message (dropped if none)."""
    if _conn is not None:
        _conn.send(("message", message))


def listening() -> bool:
    return _conn is not None


def _serve(conn: Connection, listen: bool) -> None:
    """A worker's life: run tasks from conn until told to stop (None) or the parent goes."""
    global _conn
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # and ends us with SIGTERM
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
    _conn = conn if listen else None
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        if task is None:
            return
        index, fn, item = task
        try:
            answer: tuple[Any, ...] = ("result", index, fn(item))
        except Exception as exc:
            answer = ("error", index, _portable(exc))
        conn.send(answer)


def _portable(exc: Exception) -> Exception:
    """exc if it survives pickling (a custom __init__ may not), else a RuntimeError
    that says what it was."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc


class WorkerPool:
    """`processes` worker processes; `map` and `imap_unordered` run a module-level function
    over items in them. Use as a context manager: leaving it stops every worker."""

    def __init__(self, processes: int, on_message: Callable[[Any], None] | None = None) -> None:
        # fork starts a worker without importing anything again (spawn and forkserver
        # re-import the CLI in each worker). It is safe because the parent has no thread
        # of its own when it forks: callers keep progress bars free of refresh threads
        # (see cli/progress.py), and this pool reads messages in the calling thread.
        context: Any = get_context("fork" if "fork" in get_all_start_methods() else "spawn")
        self.on_message = on_message
        self.processes: list[BaseProcess] = []
        self.conns: list[Connection] = []
        try:
            blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
            try:
                for _ in range(max(1, processes)):
                    mine, theirs = context.Pipe()
                    process = context.Process(
                        target=_serve, args=(theirs, on_message is not None), daemon=True
                    )
                    self.conns.append(mine)
                    self.processes.append(process)
                    process.start()
                    theirs.close()
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, blocked)  # a Ctrl-C lands here
        except BaseException:
            self.stop()
            raise

    def imap_unordered(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        """fn(item) for every item, in the order they finish. Raises the first error."""
        for _, result in self._run(fn, items):
            yield result

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        """fn(item) for every item, in order. Raises the first error."""
        results: dict[int, R] = dict(self._run(fn, items))
        return [results[i] for i in range(len(results))]

    def _run(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[tuple[int, R]]:
        todo = deque(enumerate(items))
        idle = list(range(len(self.conns)))
        busy: dict[Connection, int] = {}
        while todo or busy:
            while idle and todo:
                worker = idle.pop()
                index, item = todo.popleft()
                self.conns[worker].send((index, fn, item))
                busy[self.conns[worker]] = worker
            ready = wait(list(busy), timeout=CHECK_EVERY)
            interrupts.checkpoint()  # an interrupt a finalizer swallowed is raised here
            for conn in ready:
                assert isinstance(conn, Connection)
                try:
                    kind, *rest = conn.recv()
                except (EOFError, OSError):
                    process = self.processes[busy[conn]]
                    process.join(0.1)
                    raise WorkerDied(
                        f"a worker process ended unexpectedly (exit code {process.exitcode})"
                    ) from None
                if kind == "message":
                    if self.on_message is not None:
                        self.on_message(rest[0])
                    continue
                idle.append(busy.pop(conn))
                index, value = rest
                if kind == "error":
                    raise value
                yield index, value

    def stop(self, wait_for: float = STOP_WAIT) -> None:
        """Terminate every worker now and reap it: SIGTERM, then SIGKILL after wait_for
        seconds. Ctrl-C is ignored meanwhile."""
        with _ignoring_ctrl_c():
            for process in self.processes:
                if process.pid is not None and process.exitcode is None:
                    process.terminate()
            self._reap(wait_for)

    def close(self, wait_for: float = 5.0) -> None:
        """Let every worker finish (after its current task) and reap it."""
        with _ignoring_ctrl_c():
            for conn in self.conns:
                with contextlib.suppress(OSError):  # a worker already gone
                    conn.send(None)
            self._reap(wait_for)

    def _reap(self, wait_for: float) -> None:
        deadline = time.monotonic() + wait_for
        for process in self.processes:
            if process.pid is not None:
                process.join(max(0.0, deadline - time.monotonic()))
        for process in self.processes:
            if process.pid is not None and process.exitcode is None:
                process.kill()
                process.join()
        for conn in self.conns:
            conn.close()
        self.processes, self.conns = [], []

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        if kind is None:
            self.close()
        else:
            self.stop()  # Ctrl-C or an error: stop every worker now


class _ignoring_ctrl_c:
    """Within: SIGINT ignored (main thread only; elsewhere nothing changes)."""

    def __enter__(self) -> None:
        self.previous: Any = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, signal.SIG_IGN)

    def __exit__(self, *exc: object) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)

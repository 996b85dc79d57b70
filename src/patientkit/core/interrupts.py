"""Where a Ctrl-C may become an exception: at points of our own, never inside a `__del__`.

A Python signal handler runs between any two bytecodes of the main thread. An exception
it raises there can land in a finalizer (`__del__`, a generator closed by the garbage
collector), where CPython swallows it ("Exception ignored in …" and a traceback on
stderr): the interrupt is lost and the job runs on. So the handlers of the commands
(workflows/signals.py) record the interrupt, and raise only when the main thread waits
at a point that expects it (`waiting()`: a blocking read of an input, the wait for the
worker pool or for delivery). An interrupt raised anyway and swallowed by a finalizer is
caught by `catching_lost()` (sys.unraisablehook, silently) and raised again by the next
`checkpoint()`. (SPEC.md: one or two Ctrl-C end any command within about two seconds,
exit 130, one line, no traceback.) Main thread only; standard library only.
"""

from __future__ import annotations

import io
import select
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class StopReading(KeyboardInterrupt):
    """A stop request (the first Ctrl-C) reached a blocking read of an input: reading
    ends there; what was read before is still the job's."""


class _State:
    waiting = 0  # > 0 while the main thread waits at a point that expects an interrupt
    stop = False  # a stop was requested (the first Ctrl-C of a job that settles)
    lost = False  # an interrupt swallowed by a finalizer, not raised again yet


_state = _State()


def waiting() -> bool:
    """True while the main thread waits at a point of ours (see `wait_point`)."""
    return _state.waiting > 0


@contextmanager
def wait_point() -> Iterator[None]:
    """Within: the main thread waits (a read, a join) where a KeyboardInterrupt raised by
    a signal handler is expected and handled; a lost interrupt is raised on entry."""
    checkpoint()
    _state.waiting += 1
    try:
        yield
    finally:
        _state.waiting -= 1


def request_stop() -> None:
    """Note a stop request (safe in a signal handler): `stopping()` is True from now on,
    and a read waiting in `_Waiting` raises StopReading."""
    _state.stop = True


def stopping() -> bool:
    return _state.stop


def reset() -> None:
    """Forget the requests and lost interrupts of an earlier job (a new job starts)."""
    _state.stop = _state.lost = False


def lost() -> bool:
    """True (once) if an interrupt was swallowed by a finalizer since the last look."""
    was, _state.lost = _state.lost, False
    return was


def defer() -> None:
    """Note an interrupt to raise at the next `checkpoint()` (or `wait_point` entry):
    for a signal handler whose main thread is not at a wait point now."""
    _state.lost = True


def checkpoint() -> None:
    """Raise KeyboardInterrupt if an interrupt was swallowed by a finalizer: it is
    delivered here, late but not lost."""
    if _state.lost:
        _state.lost = False
        raise KeyboardInterrupt


@contextmanager
def catching_lost() -> Iterator[None]:
    """Within: a KeyboardInterrupt that CPython cannot raise (it came out of a `__del__`
    or a finalized generator) is noted for `checkpoint()` instead of printed with a
    traceback; every other unraisable exception goes to the hook before."""
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt) or (
            isinstance(unraisable.exc_type, type)
            and issubclass(unraisable.exc_type, KeyboardInterrupt)
        ):
            _state.lost = True
            return
        previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = previous


READ_SLICE = 0.1  # seconds a read waits for input before it looks for a stop request


def _readable(fd: int, timeout: float) -> bool:
    """Whether `fd` has input (or its end) within `timeout` seconds: select(2), poll(2)
    past select's descriptor limit."""
    if fd < 1024:  # FD_SETSIZE
        return bool(select.select([fd], [], [], timeout)[0])
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(timeout * 1000))


class Waiting(io.RawIOBase):
    """A raw stream over a pipe, FIFO or terminal whose every read is a wait point (see
    above): a stop request that comes while it waits for input ends the read with
    StopReading, and one that came before ends it before it blocks. (Python retries a
    read a signal interrupted, PEP 475: without this, a Ctrl-C on an idle pipe went
    unseen until more input came.)

    It waits for input in slices of READ_SLICE seconds and reads only what is there: the
    handler of a signal runs in the main thread between two bytecodes, so a signal that
    did not interrupt the read itself (it landed in another thread, or came as the main
    thread waited for the GIL on its way into the read) had its handler wait for the
    read to return: on a pipe kept open and idle, forever. Now it runs when the slice
    ends."""

    def __init__(self, raw: Any, owned: bool = True) -> None:
        self._raw, self._owned = raw, owned

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        _state.waiting += 1
        try:
            fd = self._raw.fileno()
            while True:
                if _state.stop:
                    raise StopReading
                checkpoint()
                if _readable(fd, READ_SLICE):
                    return int(self._raw.readinto(buffer))
        finally:
            _state.waiting -= 1

    def fileno(self) -> int:
        return int(self._raw.fileno())

    def close(self) -> None:
        if self._owned and not self.closed:
            self._raw.close()
        super().close()

"""The delivery buffers' process lifecycle: `os.fork()`, interpreter exit, and events
left behind where nobody will collect them.

Every `BatchBuffer` registers itself here, weakly (the registry keeps none alive). Two
process-wide hooks, installed when this module is imported, reach them:

- after `os.fork()`, in the child (`os.register_at_fork`): `after_fork_in_child` makes
  each buffer a new, empty buffer with its own flusher;
- at interpreter exit (`atexit`): `close_at_exit` closes each within its close timeout
  (`EXIT_CLOSE_TIMEOUT` seconds without one), in real time.

A buffer garbage-collected unclosed after it stopped goes through `dropped`. The
states a buffer goes through (`RUNNING`, `CLOSING`, `CLOSED`) are named here too.

`park` is where such a buffer's undelivered events go: its spool (the next buffer on it
delivers them) or its dead-letter callback; one stderr line says how many events went
where, and how many are lost. Never silent, never raises. docs/buffer.md, "Fork and exit".
"""

from __future__ import annotations

import atexit
import os
import sys
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from patientkit.core.deadletters import DeadLetters
from patientkit.core.delivery import BufferStopped
from patientkit.core.spool import SpoolWriter

if TYPE_CHECKING:
    from patientkit.core.buffer import BatchBuffer

__all__ = [
    "CLOSED",
    "CLOSING",
    "EXIT_CLOSE_TIMEOUT",
    "EXIT_REASON",
    "RUNNING",
    "after_fork_in_child",
    "close_at_exit",
    "dropped",
    "park",
    "register",
]

E = TypeVar("E")

EXIT_CLOSE_TIMEOUT = 5.0  # seconds a buffer open at interpreter exit gets without close_timeout
EXIT_REASON = "not delivered before the interpreter exited"


# A buffer's states, in this order; `stopped_reason` is set apart from them.
RUNNING = "running"  # takes events
CLOSING = "closing"  # close() waits for the flusher
CLOSED = "closed"  # closed, or stopped and drained


# Every buffer made in this process, weakly: the hooks below reach them without keeping
# one alive.
_LIVE: weakref.WeakSet[BatchBuffer[Any]] = weakref.WeakSet()


def register(buffer: BatchBuffer[Any]) -> None:
    """Have the fork and exit hooks reach `buffer` for as long as it lives."""
    _LIVE.add(buffer)


def warn(message: str) -> None:
    """One warning line on stderr (logging may be shut down at exit)."""
    try:
        sys.stderr.write(f"patientkit: warning: {message}\n")
        sys.stderr.flush()
    except (OSError, ValueError):  # stderr closed: nowhere left to say it
        pass


def park(
    left: Sequence[E],
    reason: str,
    when: str,
    spool: SpoolWriter[E] | None,
    letters: DeadLetters[E],
) -> int:
    """Put events not delivered `when` where the next run finds them: the `spool` (if
    it can encode them), else the dead-letter callback with `reason`. Says on stderr how
    many went where and how many are lost, and how many dead letters kept in memory
    were never collected (drained here). Returns how many the callback took."""
    uncollected = letters.drain()
    if uncollected:
        warn(
            f"{len(uncollected)} events a delivery buffer dead-lettered in memory were never "
            "collected with drain_dead_letters(); they are lost"
        )
    if not left:
        return 0
    if spool is not None:
        loose = [event for event in left if not isinstance(spool.encoded(event), bytes)]
        kept = len(left) - len(loose)
        if kept:
            warn(
                f"{kept} events were not delivered {when}; they are kept in the "
                f"spool {spool.path} and delivered by the next buffer on it"
            )
        left = loose
        if not left:
            return 0
    taken, failure = letters.hand_over(left, reason)
    if taken:
        warn(f"{taken} events were not delivered {when}; they went to the dead-letter destination")
    if taken < len(left):
        warn(
            f"{len(left) - taken} events were not delivered {when} and are lost"
            f"{failure}: give the buffer a spool or a dead_letter callback, or close it"
        )
    return taken


# These functions reach into the buffer's state: they are the part of `BatchBuffer`
# that belongs to the process rather than to delivery, kept here to be read together.


def after_fork_in_child(buffer: BatchBuffer[Any]) -> None:
    """In a child made by `os.fork()`: make `buffer` a new, empty buffer with its own
    flusher. Only the forking thread lives on in the child, so the parent's locks may be
    held forever and its flusher is gone. The parent's events stay the parent's (it
    delivers them); the child starts with an empty queue and zeroed counters. The child
    never writes the parent's spool: it closes its copies of the spool's descriptors (the
    parent keeps its lock) and runs without a spool. A buffer that was stopped, closing or
    closed in the parent is closed, and empty, in the child.
    """
    running = buffer._state is RUNNING and buffer._stop_reason is None
    stop_reason, stop_cause = buffer._stop_reason, buffer._stop_cause
    spool = buffer._spool
    buffer._generation += 1
    buffer._fresh_state()
    if spool is not None:
        spool.forget()
    if running:
        buffer._start_flusher()
        return
    buffer._state = CLOSED
    buffer._accepting = False
    buffer._drained = True
    buffer._flusher_done = True
    buffer._stop_reason, buffer._stop_cause = stop_reason, stop_cause


def close_at_exit(buffer: BatchBuffer[E]) -> None:
    """Close a buffer still open at interpreter exit, within its close timeout
    (`EXIT_CLOSE_TIMEOUT` without one), in real time, and `park` what it could not
    deliver. Never silent, never raises."""
    with buffer._lock:
        state = buffer._state
    left: list[E] = []
    reason = EXIT_REASON
    if state is RUNNING:
        timeout = EXIT_CLOSE_TIMEOUT if buffer._close_timeout is None else buffer._close_timeout
        try:
            try:
                buffer._shutdown(timeout, real_time=True)
            except KeyboardInterrupt:  # Ctrl-C while waiting: stop waiting
                buffer._shutdown(0, real_time=True)
        except BufferStopped as exc:
            reason = f"{EXIT_REASON} ({exc.reason})"
        left = buffer.drain_pending()
    _park_for(buffer, left, reason, "before exit")


def dropped(buffer: BatchBuffer[E]) -> None:
    """`BatchBuffer.__del__`: a buffer dropped without close() after it stopped (a
    running one is kept alive by its flusher, and closed at exit): its events must not
    vanish in silence. Nobody else can reach it now, so its state is read without
    waiting for anyone."""
    try:
        if buffer._state is CLOSED and not buffer._letters:
            return
        buffer._state = CLOSED
        left = [event for unit in buffer._work for event in unit.events]
        left.extend(buffer._pending)
        buffer._work.clear()
        buffer._pending.clear()
        buffer._handed_back += len(left)
        reason = f"not delivered: {buffer._stop_reason or 'the buffer was dropped unclosed'}"
        _park_for(buffer, left, reason, "by a buffer dropped without close()")
        if buffer._spool is not None:
            buffer._spool.journal.close()
    except BaseException:  # late in shutdown there may be no stderr left
        pass


def _park_for(buffer: BatchBuffer[E], left: list[E], reason: str, when: str) -> None:
    # `park`; the events the dead-letter callback took count as dead letters.
    taken = park(left, reason, when, buffer._spool, buffer._letters)
    if taken:
        with buffer._lock:
            buffer._dead_lettered += taken
            buffer._handed_back -= taken


def _fork_child_hook() -> None:
    for buffer in list(_LIVE):
        try:
            after_fork_in_child(buffer)
        except Exception as exc:  # a hook must not break fork for the rest of the process
            warn(f"a delivery buffer could not be renewed after fork ({type(exc).__name__})")


def _exit_hook() -> None:
    for buffer in list(_LIVE):
        try:
            close_at_exit(buffer)
        except Exception as exc:
            warn(f"a delivery buffer could not be closed at exit ({type(exc).__name__}: {exc})")


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_fork_child_hook)
atexit.register(_exit_hook)

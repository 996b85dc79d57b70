"""The delivery buffers' process lifecycle: `os.fork()`, interpreter exit, and events
left behind where nobody will collect them.

Every `BatchBuffer` registers itself here, weakly (the registry keeps none alive). Two
process-wide hooks, installed when this module is imported, reach them:

- after `os.fork()`, in the child (`os.register_at_fork`): each buffer's
  `_after_fork_in_child()` makes it a new, empty buffer with its own flusher;
- at interpreter exit (`atexit`): each buffer's `_close_at_exit()` closes it within its
  close timeout (`EXIT_CLOSE_TIMEOUT` seconds without one), in real time.

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
from typing import Protocol, TypeVar

from patientkit.core.deadletters import DeadLetters
from patientkit.core.spool import SpoolWriter

__all__ = ["EXIT_CLOSE_TIMEOUT", "EXIT_REASON", "park", "register"]

E = TypeVar("E")

EXIT_CLOSE_TIMEOUT = 5.0  # seconds a buffer open at interpreter exit gets without close_timeout
EXIT_REASON = "not delivered before the interpreter exited"


class ProcessBound(Protocol):
    """What the hooks call on a registered buffer."""

    def _after_fork_in_child(self) -> None: ...

    def _close_at_exit(self) -> None: ...


# Every buffer made in this process, weakly: the hooks below reach them without keeping
# one alive.
_LIVE: weakref.WeakSet[ProcessBound] = weakref.WeakSet()


def register(buffer: ProcessBound) -> None:
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


def _fork_child_hook() -> None:
    for buffer in list(_LIVE):
        try:
            buffer._after_fork_in_child()
        except Exception as exc:  # a hook must not break fork for the rest of the process
            warn(f"a delivery buffer could not be renewed after fork ({type(exc).__name__})")


def _exit_hook() -> None:
    for buffer in list(_LIVE):
        try:
            buffer._close_at_exit()
        except Exception as exc:
            warn(f"a delivery buffer could not be closed at exit ({type(exc).__name__}: {exc})")


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_fork_child_hook)
atexit.register(_exit_hook)

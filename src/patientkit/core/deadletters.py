"""Where a buffer's events go when they can never be delivered: the dead letters.

`DeadLetters` wraps the buffer's `dead_letter(event, reason)` callback. Without one, or
for the letters a failing callback did not take, it keeps the (event, reason) pairs in
memory until `drain()` (`BatchBuffer.drain_dead_letters`). The callback is called from
the flusher thread, one event at a time, in the order the sink settled them, and never
with a lock held. Logging names the exception class only, never an event or a reason.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["DeadLetters"]

# the buffer's log: these lines are part of what a buffer says about its deliveries
logger = logging.getLogger("patientkit.core.buffer")

E = TypeVar("E")


class DeadLetters(Generic[E]):
    """The dead-letter callback, or, without one, an in-memory list of (event, reason)."""

    def __init__(self, callback: Callable[[E, str], None] | None) -> None:
        self.callback = callback
        self._lock = threading.Lock()
        self._kept: list[tuple[E, str]] = []

    def __len__(self) -> int:
        """How many letters are kept in memory."""
        return len(self._kept)

    def send(self, letters: Sequence[tuple[E, str]]) -> str:
        """Hand (event, reason) pairs to the callback, in order, or keep them without one.

        Returns "" when all were taken, or the reason the buffer stops for when the
        callback raised; the letters it did not take are then kept for `drain()`.
        """
        if self.callback is None:
            self._keep(letters)
            return ""
        for position, (event, reason) in enumerate(letters):
            try:
                self.callback(event, reason)
            except Exception as exc:
                self._keep(letters[position:])
                logger.error("dead_letter callback failed (%s)", type(exc).__name__)
                return (
                    f"delivery stopped: the dead_letter callback failed: {type(exc).__name__}: "
                    f"{exc}; drain_dead_letters() returns the {len(letters) - position} "
                    "dead letters it did not take"
                )
        return ""

    def hand_over(self, events: Sequence[E], reason: str) -> tuple[int, str]:
        """Give undelivered `events`, all for `reason`, to the callback (at exit, or from
        a dropped buffer). Returns how many it took (0 without a callback) and "" or, when
        it raised, a parenthesised note naming the exception class."""
        if self.callback is None:
            return 0, ""
        for taken, event in enumerate(events):
            try:
                self.callback(event, reason)
            except Exception as exc:
                return taken, f" (the dead_letter callback failed: {type(exc).__name__})"
        return len(events), ""

    def drain(self) -> list[tuple[E, str]]:
        """The letters kept in memory, once."""
        with self._lock:
            letters, self._kept = self._kept, []
            return letters

    def _keep(self, letters: Sequence[tuple[E, str]]) -> None:
        with self._lock:
            self._kept.extend(letters)

"""Clocks for code that waits: the real one, and a fake one that tests move by hand.

Every wait in the delivery buffer goes through a `Clock`, always in the same shape: the
caller holds a `threading.Condition` and asks the clock to wait on it until it is notified
or until the clock reads `deadline`. A real clock turns that into `Condition.wait(timeout)`.
`FakeClock` never lets real time matter: its time moves only when a test calls
`advance()`, which wakes exactly the waiters whose deadline has come. A test can also ask
how many threads are waiting on the clock (`wait_for_waiters`), which is how it knows that
a background thread has finished its work and gone idle, without sleeping.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    """Where time comes from, and how a thread waits for it."""

    def now(self) -> float:
        """Monotonic seconds."""
        ...

    def wait(self, cond: threading.Condition, deadline: float | None) -> None:
        """Wait on `cond`, held by the caller, until notified or until `now() >= deadline`.

        `None` means no deadline. May return early; callers re-check their condition.
        """
        ...


class SystemClock:
    """The real monotonic clock."""

    def now(self) -> float:
        return time.monotonic()

    def wait(self, cond: threading.Condition, deadline: float | None) -> None:
        if deadline is None:
            cond.wait()
            return
        remaining = deadline - time.monotonic()
        if remaining > 0:
            cond.wait(remaining)


class _Waiter:
    """One thread waiting on a `FakeClock`: its condition and deadline (None: forever)."""

    __slots__ = ("cond", "deadline")

    def __init__(self, cond: threading.Condition, deadline: float | None) -> None:
        self.cond = cond
        self.deadline = deadline


class FakeClock:
    """A clock that stands still until `advance()` moves it.

    Waiters with a deadline wake when an `advance()` reaches it; waiters without one wake
    only when notified. Nothing here depends on real time except the bounded
    `wait_for_waiters()`, whose timeout only turns a hung test into a failing one.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._waiters: list[_Waiter] = []

    def now(self) -> float:
        with self._lock:
            return self._now

    def wait(self, cond: threading.Condition, deadline: float | None) -> None:
        with self._lock:
            if deadline is not None and self._now >= deadline:
                return
            waiter = _Waiter(cond, deadline)
            self._waiters.append(waiter)
            self._changed.notify_all()
        try:
            # The caller holds `cond` until this call releases it, so an advance() that
            # found this waiter due cannot notify before we are waiting.
            cond.wait()
        finally:
            with self._lock:
                self._waiters = [w for w in self._waiters if w is not waiter]
                self._changed.notify_all()

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every waiter whose deadline has come."""
        if seconds < 0:
            raise ValueError("a clock cannot go back")
        with self._lock:
            self._now += seconds
            due = [w for w in self._waiters if w.deadline is not None and w.deadline <= self._now]
            self._waiters = [w for w in self._waiters if w not in due]
            self._changed.notify_all()
        for waiter in due:
            with waiter.cond:
                waiter.cond.notify_all()

    def waiters(self) -> int:
        """How many threads are waiting on this clock now."""
        with self._lock:
            return len(self._waiters)

    def next_deadline(self) -> float | None:
        """The earliest deadline any waiter has, or None."""
        with self._lock:
            deadlines = [w.deadline for w in self._waiters if w.deadline is not None]
        return min(deadlines, default=None)

    def wait_for_waiters(self, count: int, timeout: float = 10.0) -> None:
        """Block (real time, bounded) until at least `count` threads wait on this clock."""
        with self._lock:
            if not self._changed.wait_for(lambda: len(self._waiters) >= count, timeout):
                raise TimeoutError(
                    f"expected {count} waiters on the fake clock, "
                    f"have {len(self._waiters)} after {timeout} s"
                )

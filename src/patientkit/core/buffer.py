"""A delivery buffer that batches events to a sink and never loses one.

`BatchBuffer` takes events from any number of threads (`track`, `track_many`) and hands
them to a sink in batches, from one background thread, the flusher. It is the engine
under `readings replay` and `records submit`, and a library of its own. Nothing is ever
dropped: every event is delivered, dead-lettered, handed back, or kept in the spool.

This module holds the producers, the flusher, shutdown and the counters. Beside it:
`sinks` (what a sink answers, read by `settle`), `retry` (backoff), `batches` (the unit
of work and its bisection), `deadletters`, `spool` (the journal), `lifecycle` (fork and
interpreter exit), `delivery` (the results and errors it returns). Every wait goes
through an injected `Clock`, so a `FakeClock` drives the tests. How and why, step by
step: docs/buffer.md, "Design". Logging carries counts, delays and exception class
names only, never event contents or sink messages (which may quote health data).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import random
import threading
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from types import TracebackType
from typing import Generic, TypeVar

from patientkit.core import lifecycle
from patientkit.core.batches import Unit, recovered_units, split_unencodable
from patientkit.core.clock import Clock, SystemClock
from patientkit.core.deadletters import DeadLetters
from patientkit.core.delivery import BufferFull, BufferStats, BufferStopped, FlushResult
from patientkit.core.retry import RetryPolicy
from patientkit.core.sinks import Settlement, SinkResult, settle
from patientkit.core.spool import (
    SpoolSyncer,
    SpoolWriter,
    journal_new_events,
    json_encode,
    live_pairs,
)
from patientkit.errors import DeliveryError, UsageError

__all__ = ["BatchBuffer"]

logger = logging.getLogger(__name__)

E = TypeVar("E")

_CHUNK = 1024

_RUNNING, _CLOSING, _CLOSED = lifecycle.RUNNING, lifecycle.CLOSING, lifecycle.CLOSED


class BatchBuffer(Generic[E]):
    """Batch events to `sink` from a background thread; see the module docstring."""

    _syncer: SpoolSyncer | None  # the spool's sync thread, with a spool

    def __init__(
        self,
        sink: Callable[[list[E]], SinkResult | None],
        *,
        max_batch: int = 100,
        flush_interval: float = 1.0,
        max_pending: int = 10_000,
        retry_policy: RetryPolicy | None = None,
        failure_limit: int | None = 10,
        dead_letter: Callable[[E, str], None] | None = None,
        key: Callable[[E], Hashable] | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        spool: str | os.PathLike[str] | None = None,
        encode: Callable[[E], bytes] | None = None,
        decode: Callable[[bytes], E] | None = None,
        spool_sync_interval: float = 0.2,
        close_timeout: float | None = None,
    ) -> None:
        if max_batch < 1:
            raise UsageError(f"max_batch must be at least 1, not {max_batch}")
        if max_pending < max_batch:
            raise UsageError(f"max_pending ({max_pending}) must be at least max_batch")
        if not flush_interval > 0:
            raise UsageError(f"flush_interval must be above 0 seconds, not {flush_interval}")
        if failure_limit is not None and failure_limit < 1:
            raise UsageError(f"failure_limit must be at least 1 or None, not {failure_limit}")
        if not spool_sync_interval > 0:
            raise UsageError("spool_sync_interval must be above 0 seconds")
        self._sink = sink
        self._max_batch = max_batch
        self._flush_interval = flush_interval
        self._max_pending = max_pending
        self._retry_policy = retry_policy or RetryPolicy()
        self._failure_limit = failure_limit
        self._dead_letter = dead_letter
        self._key = key
        self._clock: Clock = clock or SystemClock()
        self._rng = rng or random.Random()
        self._spool_sync_interval = spool_sync_interval
        self._close_timeout = close_timeout

        self._generation = 0  # bumped in a forked child: a flusher of another one stops
        self._fresh_state()
        if spool is not None:
            self._open_spool(spool, encode or json_encode, decode or json.loads)

        self._start_flusher()
        if self._spool is not None:
            self._syncer = SpoolSyncer(
                self.sync, self._spool_sync_interval, self._clock, self._spool_failed
            )
        lifecycle.register(self)

    def _fresh_state(self) -> None:
        """Locks, queues and counters of a new, empty, running buffer (also in a forked
        child, where the parent's copies may be held by threads that do not exist)."""
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)  # the flusher waits here
        self._space = threading.Condition(self._lock)  # blocked producers wait here
        self._settled = threading.Condition(self._lock)  # flush() and close() wait here
        self._close_lock = threading.Lock()

        # never replaced while threads use it: track() appends without a lock
        self._pending: deque[E] = deque()
        self._flusher_called = False  # set when a producer woke the flusher for a full batch
        self._drained = False
        self._work: deque[Unit[E]] = deque()
        self._accepting = True
        self._state = _RUNNING
        self._stop_reason: str | None = None
        self._stop_cause: BaseException | None = None
        self._abandon = False
        self._flusher_done = False
        self._in_user_code = False
        self._space_waiters = 0
        self._flush_goals: list[int] = []  # the seq each waiting flush() needs settled
        self._flush_target = 0
        self._letters: DeadLetters[E] = DeadLetters(self._dead_letter)

        # Sequence numbers: the deque's first event has seq `_taken`, the next one
        # `_taken + 1`, and so on; tracked = _taken + len(_pending) - _first_seq.
        self._first_seq = 0
        self._taken = 0
        self._recovered = 0
        self._held = 0  # events in units (in flight included)
        self._in_flight = 0
        self._delivered = 0
        self._dead_lettered = 0
        self._retried = 0
        self._batches = 0
        self._handed_back = 0
        self._failures = 0
        self._retry_at = 0.0

        self._spool: SpoolWriter[E] | None = None
        self._journaled_upto = 0  # seq of the first tracked event not in the spool yet
        self._unencodable: dict[int, str] = {}  # seq -> why `encode` failed on the event
        self._syncer = None

    def _start_flusher(self) -> None:
        self._next_flush = 0.0  # set by the flusher itself: see _run
        self._flusher = threading.Thread(
            target=self._run, name="patientkit-buffer-flusher", daemon=True
        )
        self._flusher.start()

    # --- producers -----------------------------------------------------------------------

    def track(self, event: E, timeout: float | None = None) -> None:
        """Queue one event. Blocks only while `max_pending` events wait.

        Raises `BufferFull` when no room came within `timeout` seconds (the event is not
        tracked), `BufferStopped` after the failure limit or after close.
        """
        # The fast path takes no lock: docs/buffer.md, "Design", says why that is safe.
        pending = self._pending
        if self._accepting and len(pending) < self._max_pending:
            pending.append(event)
            if len(pending) >= self._max_batch and not self._flusher_called:
                self._call_flusher()
            if not self._accepting:
                self._appended_after_stop(event)
            return
        with self._lock:
            if not self._accepting:
                raise self._refusal()
            if len(pending) >= self._max_pending:
                self._wait_for_space(self._deadline(timeout), timeout, 0)
            pending.append(event)
            if len(pending) >= self._max_batch:
                self._wake_flusher()

    def _call_flusher(self) -> None:
        with self._lock:
            self._wake_flusher()

    def _wake_flusher(self) -> None:
        # Lock held: a full batch waits; wake the flusher once until it takes one.
        if not self._flusher_called:
            self._flusher_called = True
            self._wakeup.notify()

    def _appended_after_stop(self, event: E) -> None:
        """The buffer stopped or closed around our append: keep the accounting exact.

        Before the drain, the event stays queued and the drain hands it back: tracked.
        After the drain, nobody else will ever see it: take it back out and refuse it.
        """
        with self._lock:
            if not self._drained:
                return
            pending = self._pending
            for index in range(len(pending) - 1, -1, -1):
                if pending[index] is event:
                    del pending[index]
                    raise self._refusal()

    def track_many(self, events: Iterable[E], timeout: float | None = None) -> int:
        """Queue events in order; return how many. `timeout` bounds the whole call.

        The iterable is read outside the lock. On `BufferFull` or `BufferStopped` the
        error's `accepted` says how many of these events were tracked before it.
        """
        iterator = iter(events)
        deadline = self._deadline(timeout)
        pending = self._pending
        count = 0
        while chunk := list(itertools.islice(iterator, _CHUNK)):
            done = 0
            with self._lock:
                while done < len(chunk):
                    if not self._accepting:
                        raise self._refusal(count + done)
                    room = self._max_pending - len(pending)
                    if room <= 0:
                        self._wait_for_space(deadline, timeout, count + done)
                        continue
                    part = chunk[done : done + room]
                    pending.extend(part)
                    done += len(part)
                    if len(pending) >= self._max_batch:
                        self._wake_flusher()
            count += done
        return count

    def _wait_for_space(self, deadline: float | None, timeout: float | None, accepted: int) -> None:
        # Lock held.
        if threading.current_thread() is self._flusher:
            raise UsageError("track() from inside the sink cannot wait for room: it would deadlock")
        while len(self._pending) >= self._max_pending:
            if not self._accepting:
                raise self._refusal(accepted)
            if deadline is not None and self._clock.now() >= deadline:
                raise BufferFull(
                    f"buffer full: {self._max_pending} events wait for delivery (max_pending) "
                    f"and no room came within {timeout} s; the event was not tracked",
                    accepted=accepted,
                )
            self._space_waiters += 1
            try:
                self._clock.wait(self._space, deadline)
            finally:
                self._space_waiters -= 1
        if not self._accepting:
            raise self._refusal(accepted)

    # --- callers -------------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> FlushResult:
        """Deliver now; wait until every event tracked before the call is settled.

        Returns what happened; `complete` is False if `timeout` passed first. Raises
        `BufferStopped` if the buffer stopped before or during the call.
        """
        self._refuse_inside_sink("flush")
        with self._lock:
            if not self._accepting:
                raise self._refusal()
            target = self._taken + len(self._pending)
            start = (self._delivered, self._dead_lettered, self._retried)
            if target > self._flush_target:
                self._flush_target = target
                self._wakeup.notify()
            deadline = self._deadline(timeout)
            while self._min_unsettled() < target and self._state is not _CLOSED:
                if self._stop_reason is not None:
                    raise self._refusal()
                if deadline is not None and self._clock.now() >= deadline:
                    break
                self._flush_goals.append(target)
                try:
                    self._clock.wait(self._settled, deadline)
                finally:
                    self._flush_goals.remove(target)
            if self._stop_reason is not None:
                raise self._refusal()
            return FlushResult(
                delivered=self._delivered - start[0],
                dead_lettered=self._dead_lettered - start[1],
                retried=self._retried - start[2],
                pending=self._undelivered_count(),
                complete=self._min_unsettled() >= target,
            )

    def close(self, timeout: float | None = None) -> list[E]:
        """Stop taking events, deliver what can be delivered before the deadline, and
        return the events that were not (in tracking order; empty when all delivered).

        An attempt still in flight at the deadline is not waited for: its events are
        handed back too (the sink may still deliver them: sinks must be idempotent).
        Raises `BufferStopped` if the buffer stopped; then `drain_pending()` has the rest.
        """
        self._shutdown(timeout)
        return self.drain_pending()

    def __enter__(self) -> BatchBuffer[E]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            self._shutdown(self._close_timeout)
        except BufferStopped:
            if exc_type is None:
                raise
            return  # the exception already propagating says more
        left = self.stats().pending
        if left and exc_type is None:
            raise DeliveryError(
                f"{left} events were not delivered before the buffer closed; "
                "drain_pending() returns them"
            )

    def drain_pending(self) -> list[E]:
        """Hand back every undelivered event, in tracking order, once.

        Only for a buffer that stopped or closed. With a spool, the events also stay in
        the journal: a later buffer on the same path delivers them again.
        """
        with self._lock:
            if self._accepting or self._state is _CLOSING:
                raise UsageError(
                    "drain_pending() is for a stopped or closed buffer; call close() first"
                )
            closed = self._state is _CLOSED
        if not closed:
            self.sync()
        with self._lock:
            events = [event for unit in self._work for event in unit.events]
            popleft = self._pending.popleft
            while self._pending:  # one atomic popleft at a time: see track()
                events.append(popleft())
                self._taken += 1
            self._drained = True
            self._work.clear()
            self._held = 0
            self._in_flight = 0
            self._handed_back += len(events)
            return events

    def drain_dead_letters(self) -> list[tuple[E, str]]:
        """Hand back the (event, reason) pairs dead-lettered in memory, once.

        Used when no `dead_letter` callback was given, and for the events a failing
        callback could not take.
        """
        return self._letters.drain()

    def stats(self) -> BufferStats:
        with self._lock:
            return BufferStats(
                tracked=self._taken + len(self._pending) - self._first_seq,
                recovered=self._recovered,
                delivered=self._delivered,
                retried=self._retried,
                dead_lettered=self._dead_lettered,
                pending=len(self._pending) + self._held - self._in_flight,
                in_flight=self._in_flight,
                handed_back=self._handed_back,
                consecutive_failures=self._failures,
                batches=self._batches,
            )

    @property
    def stopped_reason(self) -> str | None:
        """Why the buffer stopped, or None while it has not."""
        with self._lock:
            return self._stop_reason

    def sync(self) -> None:
        """Write every tracked, undelivered event to the spool and fsync (no-op without)."""
        spool = self._spool
        if spool is None:
            return
        with spool.lock:
            if not spool.closed:
                journal_new_events(self, spool)
                spool.sync()

    # --- shared helpers (lock held) ------------------------------------------------------

    def _deadline(self, timeout: float | None) -> float | None:
        return None if timeout is None else self._clock.now() + timeout

    def _min_unsettled(self) -> int:
        return self._work[0].seqs[0] if self._work else self._taken

    def _undelivered_count(self) -> int:
        return len(self._pending) + self._held

    def _refusal(self, accepted: int = 0) -> BufferStopped:
        return BufferStopped.refusal(
            self._stop_reason, self._stop_cause, self._undelivered_count(), accepted
        )

    def _stop(self, reason: str, cause: BaseException | None = None) -> None:
        if self._stop_reason is None:
            self._stop_reason = reason
            self._stop_cause = cause
        self._accepting = False
        self._wakeup.notify_all()
        self._space.notify_all()
        self._settled.notify_all()

    def _refuse_inside_sink(self, name: str) -> None:
        if threading.current_thread() is self._flusher:
            raise UsageError(f"{name}() cannot be called from inside the sink: it would deadlock")

    # --- shutdown ------------------------------------------------------------------------

    def _shutdown(self, timeout: float | None, real_time: bool = False) -> None:
        """Close: stop taking events, let the flusher deliver until `timeout`, hand back.

        With `real_time`, the deadline is in real seconds whatever the buffer's clock
        (at interpreter exit nobody will advance a `FakeClock`).
        """
        self._refuse_inside_sink("close")
        clock: Clock = SystemClock() if real_time else self._clock
        with self._close_lock:
            with self._lock:
                if self._state is _CLOSED:
                    if self._stop_reason is not None:
                        raise self._refusal()
                    return
                self._state = _CLOSING
                self._accepting = False
                self._wakeup.notify_all()
                self._space.notify_all()
                deadline = None if timeout is None else clock.now() + timeout
                while not self._flusher_done:
                    if deadline is not None and clock.now() >= deadline:
                        break
                    clock.wait(self._settled, deadline)
                if not self._flusher_done:
                    self._abandon = True
                    self._wakeup.notify_all()
                    if self._in_flight:  # close() hands them to its caller: no warning
                        logger.info(
                            "close deadline passed with %d events in flight; they are "
                            "handed back and may still be delivered",
                            self._in_flight,
                        )
                    self._in_flight = 0
                join = not self._in_user_code
            if join:
                self._flusher.join()
            try:
                self._close_spool()
            finally:
                with self._lock:
                    self._state = _CLOSED
                    self._settled.notify_all()
                    logger.info(
                        "buffer closed: %d delivered, %d dead-lettered, %d not delivered",
                        self._delivered,
                        self._dead_lettered,
                        self._undelivered_count(),
                    )
                    if self._stop_reason is not None:
                        raise self._refusal()

    # --- fork, interpreter exit, garbage collection: patientkit.core.lifecycle ----------

    def __del__(self) -> None:
        lifecycle.dropped(self)

    # --- the flusher ---------------------------------------------------------------------

    def _run(self) -> None:
        generation = self._generation
        try:
            # The clock is read here, not in the fork hook: a FakeClock's lock may have
            # been held by a thread that did not survive the fork.
            with self._lock:
                self._next_flush = self._clock.now() + self._flush_interval
            while self._step(generation):
                pass
        except BaseException as exc:  # the flusher must never die silently
            if generation != self._generation:
                return  # a forked child's copy of an old flusher: not ours to report
            with self._lock:
                self._in_user_code = False
                self._in_flight = 0
                reason = f"the flusher failed: {type(exc).__name__}: {exc}"
                self._stop(f"delivery stopped: {reason}", exc)
            logger.error("buffer flusher failed (%s); the buffer stopped", type(exc).__name__)
        finally:
            if generation == self._generation:
                with self._lock:
                    self._flusher_done = True
                    self._settled.notify_all()

    def _step(self, generation: int) -> bool:
        """Wait for work, or make one attempt. False when the flusher should end.

        A flusher that forked from inside the sink goes on in the child as that child's
        main thread; the child has its own flusher, so this one ends (`generation`).
        """
        if generation != self._generation:
            return False
        unencodable: Settlement | None = None  # events the spool could not write
        spool = self._spool
        if spool is not None:
            with spool.lock:
                if not spool.closed:
                    journal_new_events(self, spool)
        with self._lock:
            if self._stop_reason is not None or self._abandon:
                return False
            now = self._clock.now()
            if self._work:
                if now < self._retry_at:
                    self._clock.wait(self._wakeup, self._retry_at)
                    return True
                unit = self._work[0]
            else:
                count = len(self._pending)
                closing = self._state is _CLOSING
                if count == 0:
                    if closing:
                        return False
                    if now >= self._next_flush:
                        self._next_flush = now + self._flush_interval
                    self._clock.wait(self._wakeup, self._next_flush)
                    return True
                due = (
                    count >= self._max_batch
                    or closing
                    or now >= self._next_flush
                    or self._taken < self._flush_target
                )
                if not due:
                    self._clock.wait(self._wakeup, self._next_flush)
                    return True
                size = min(count, self._max_batch)
                if spool is not None and self._journaled_upto - self._taken < size:
                    return True  # journal them first (top of the next step)
                unit = self._take(size, now)
                if self._unencodable:  # those the spool could not write go alone, unsent
                    poisoned = split_unencodable(unit, self._unencodable)
                    if poisoned is not None:
                        units, unencodable = poisoned
                        self._work.popleft()
                        self._work.extendleft(reversed(units))
                        unit = units[0]
            self._in_flight = len(unit)
            self._in_user_code = True
        if unencodable is not None:
            self._finish(unit, unencodable, generation, journaled=False)
        else:
            self._finish(unit, self._attempt(unit), generation)
        return True

    def _take(self, count: int, now: float) -> Unit[E]:
        # Lock held: cut a unit of `count` events from the front of the deque.
        # One atomic popleft per event (producers append meanwhile, without the lock).
        events = list(map(deque.popleft, itertools.repeat(self._pending, count)))
        self._flusher_called = False
        start = self._taken
        self._taken += count
        self._held += count
        self._next_flush = now + self._flush_interval
        unit = Unit(range(start, start + count), events)
        self._work.append(unit)
        if self._space_waiters:
            self._space.notify_all()
        return unit

    def _attempt(self, unit: Unit[E]) -> Settlement:
        try:
            result = self._sink(list(unit.events))
        except Exception as exc:
            return settle(unit.events, raised=exc)
        return settle(unit.events, result, key=self._key)

    def _finish(
        self, unit: Unit[E], outcome: Settlement, generation: int, journaled: bool = True
    ) -> None:
        if generation != self._generation:
            return  # forked from inside the sink: in this child, the unit is the parent's
        rejected = outcome.rejected
        letter_failure = self._letters.send([(unit.events[i], why) for i, why in rejected])
        settled_count = len(outcome.accepted) + len(rejected)
        with self._lock:
            self._in_user_code = False
            if self._abandon:
                return  # handed back by close(); this late answer changes nothing
            self._in_flight = 0
            if journaled:
                self._batches += 1
            if outcome.closed:  # the sink takes nothing more: hand everything back
                self._stop(outcome.closed)
                logger.info("the sink was closed (%s); the buffer stopped", outcome.closed)
                return
            if outcome.invalid:
                self._stop(f"delivery stopped: {outcome.invalid}")
                logger.error("sink broke its contract (invalid result); the buffer stopped")
                return
            if unit.attempted:
                self._retried += 1
            self._delivered += len(outcome.accepted)
            self._dead_lettered += len(rejected)
            self._held -= settled_count
            self._work.popleft()
            if outcome.split:
                self._work.extendleft(reversed(unit.halves()))
            elif outcome.retry:
                self._work.appendleft(unit.part(outcome.retry))
                self._schedule_retry(outcome, made_progress=settled_count > 0)
            else:
                self._failures = 0
            if rejected:
                logger.warning("%d events dead-lettered", len(rejected))
            if letter_failure:
                self._stop(letter_failure)
            if outcome.broken_order:
                self._stop(outcome.broken_order)
                logger.error("sink broke per-key order; the buffer stopped")
            if self._flush_goals and self._min_unsettled() >= min(self._flush_goals):
                self._settled.notify_all()
        if self._spool is not None and settled_count and journaled:
            settled = [unit.seqs[i] for i in outcome.accepted]
            settled.extend(unit.seqs[i] for i, _ in rejected)
            self._spool.settle(settled, lambda: live_pairs(self))

    def _schedule_retry(self, outcome: Settlement, made_progress: bool) -> None:
        # Lock held.
        self._failures = 0 if made_progress else self._failures + 1
        attempt = max(self._failures - 1, 0)
        delay = self._retry_policy.delay(attempt, self._rng, outcome.retry_after)
        self._retry_at = self._clock.now() + delay
        logger.warning(
            "delivery of %d events failed (%s); %d consecutive failures; retry in %.3f s",
            len(outcome.retry),
            outcome.failure_kind,
            self._failures,
            delay,
        )
        if self._failure_limit is not None and self._failures >= self._failure_limit:
            self._stop(
                f"delivery stopped after {self._failures} consecutive failed deliveries "
                f"(last: {outcome.failure})"
            )
            logger.error("buffer stopped after %d consecutive failed deliveries", self._failures)

    # --- the spool -----------------------------------------------------------------------

    def _open_spool(
        self,
        path: str | os.PathLike[str],
        encode: Callable[[E], bytes],
        decode: Callable[[bytes], E],
    ) -> None:
        self._spool, items = SpoolWriter.open(path, encode, decode)
        next_seq = items[-1][0] + 1 if items else 0
        self._first_seq = self._taken = self._journaled_upto = next_seq
        self._work.extend(recovered_units(items, self._max_batch))
        self._recovered = self._held = len(items)

    def _spool_failed(self, exc: BaseException) -> None:
        with self._lock:
            self._stop(f"delivery stopped: the spool failed: {type(exc).__name__}: {exc}", exc)
        logger.error("spool writer failed (%s); the buffer stopped", type(exc).__name__)

    def _close_spool(self) -> None:
        spool = self._spool
        if spool is None:
            return
        if self._syncer is not None:
            self._syncer.stop()
        spool.close(lambda: journal_new_events(self, spool))

"""Submitting test records: read, validate by hand, deliver to the store or an API, count.

Every record read ends in exactly one of created, duplicate, invalid, rejected or failed:

* invalid: it could not be read, or breaks SPEC.md's rules (`record_problem`, the
  server's own check): reported with file:line and reason, never sent;
* to the store (`StoreTarget`): batches through the delivery buffer, one transaction
  each; `Store.add_records` says which were created and which duplicates (a test_id
  already stored, or earlier in the input: the first one wins);
* to an API (`HttpTarget`): N worker threads, each with one request in flight over a
  shared pool of connections, each record its own `X-Request-ID`, kept across its
  retries, so a lost answer is retried without turning a creation into a duplicate.
  2xx is created, 409 a duplicate, 408/425/429/5xx and transport errors are retried with
  backoff, then failed; any other answer is a rejection with the server's message.

Rejected and failed records go to the rejects file (with their request id when the
server saw them), so nothing is lost: fix and send the file again.

Ctrl-C (or SIGTERM) stops reading; records read but not yet sent are put back (not
counted: the next run reads them again), the requests in flight are settled, and the
summary so far is returned. A second Ctrl-C stops waiting: the records still in flight
count as failed (they may have landed; the next run reports those as duplicates).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from patientkit.client.http import DEFAULT_BACKOFF, Backoff
from patientkit.client.records import (
    CREATED,
    DUPLICATE,
    FAILED,
    REJECTED,
    Outcome,
    RecordsClient,
)
from patientkit.core.buffer import BatchBuffer, BufferStopped, RetryPolicy
from patientkit.core.storage import RECORD_FIELDS, Store
from patientkit.core.validation import record_problem
from patientkit.errors import PatientkitError, UsageError
from patientkit.inputs import Item, read_items
from patientkit.rejects import Rejects

STORE_BATCH = 5000  # records per store transaction
HTTP_QUEUE_PER_WORKER = 4  # records read ahead per worker (bounded memory)
PROGRESS_EVERY = 1000

OnProblem = Callable[[str, int, str], None]


@dataclass
class Tally:
    """The counts of a submission; `read` is the sum of the other five."""

    created: int = 0
    duplicates: int = 0
    invalid: int = 0
    rejected: int = 0
    failed: int = 0
    retries: int = 0

    @property
    def read(self) -> int:
        return self.created + self.duplicates + self.invalid + self.rejected + self.failed

    def summary(self, seconds: float) -> dict[str, int | float]:
        return {
            "read": self.read,
            "created": self.created,
            "duplicates": self.duplicates,
            "invalid": self.invalid,
            "rejected": self.rejected,
            "failed": self.failed,
            "retries": self.retries,
            "seconds": round(seconds, 3),
        }


@dataclass
class Result:
    tally: Tally
    seconds: float
    interrupted: bool = False
    abandoned: int = 0  # records given up in flight by a second Ctrl-C
    error: PatientkitError | None = None  # what stopped the job early, if anything
    notes: list[str] = field(default_factory=list)


class Report:
    """Writes each problem record to the rejects file and one line to `on_problem`
    (file:line: reason; never the record's contents), from any thread."""

    def __init__(self, rejects: Rejects, on_problem: OnProblem) -> None:
        self.rejects, self.on_problem = rejects, on_problem
        self._lock = threading.Lock()

    def __call__(self, item: Item, reason: str, **extra: Any) -> None:
        with self._lock:
            self.rejects.write(item.source, item.line, reason, item.value, **extra)
            self.on_problem(item.source, item.line, reason)


def _five(value: dict[str, Any]) -> dict[str, Any]:
    """The record as sent and stored: the five fields of SPEC.md, nothing else."""
    return {name: value[name] for name in RECORD_FIELDS}


# --- the store ----------------------------------------------------------------------------


class StoreTarget:
    """Batches of valid records into the SQLite store, one transaction per batch, through
    the delivery buffer (its flusher thread writes while the main thread reads and
    parses; SQLite works without the GIL, so both cores are busy)."""

    def __init__(self, path: Path, tally: Tally, report: Report, batch: int = STORE_BATCH) -> None:
        self.tally, self.report = tally, report
        self._lock = threading.Lock()
        self._abandoned = False
        self.store = Store(path)
        self.store.defer_checkpoints()
        self.buffer: BatchBuffer[Item] = BatchBuffer(
            self._sink,
            max_batch=batch,
            flush_interval=0.5,
            max_pending=batch * 8,
            retry_policy=RetryPolicy(initial=0.05, maximum=5.0),
            failure_limit=10,
        )
        self.send = self.buffer.track  # one call less per record

    def _sink(self, batch: list[Item]) -> None:
        created = sum(self.store.add_records([item.value for item in batch]))  # five fields read
        with self._lock:
            if self._abandoned:
                return  # already counted as failed
            self.tally.created += created
            self.tally.duplicates += len(batch) - created

    def drop_unsent(self) -> None:
        """Nothing to do: tracked records are local and settle within the close."""

    def in_flight(self) -> int:
        stats = self.buffer.stats()
        return stats.pending + stats.in_flight

    def finish(self) -> None:
        """Deliver everything tracked; what cannot be delivered fails, into the rejects."""
        try:
            left = self.buffer.close()
            reason = "not delivered before the store closed"
        except BufferStopped as exc:
            left = self.buffer.drain_pending()
            reason = exc.reason
        finally:
            self.tally.retries = self.buffer.stats().retried
        for item in left:
            self.tally.failed += 1
            self.report(item, f"failed: {reason}")
        self.store.close()

    def abandon(self) -> int:
        """A second Ctrl-C while closing: count what the store has not confirmed."""
        stats = self.buffer.stats()
        with self._lock:
            self._abandoned = True
            unconfirmed = stats.tracked - self.tally.created - self.tally.duplicates
            self.tally.failed += unconfirmed
        return unconfirmed


# --- an API ----------------------------------------------------------------------------------


class HttpTarget:
    """`concurrency` worker threads, each with one request in flight on a shared pool.

    A plain bounded pool rather than the batch buffer: records are independent requests,
    so a record waiting out its retry backoff must hold up only its own worker, not a
    whole batch (the buffer settles a batch before anything newer). Two records with the
    same test_id are never in flight together: the later waits ("parked") until the
    earlier is settled, so the first one in the input is the one created, as with the
    store, and the second gets its 409."""

    def __init__(
        self,
        server: str,
        concurrency: int,
        tally: Tally,
        report: Report,
        backoff: Backoff = DEFAULT_BACKOFF,
    ) -> None:
        self.tally, self.report = tally, report
        self.client = RecordsClient(server, connections=concurrency, backoff=backoff)
        self.client.ping()
        self._lock = threading.Lock()
        self._has_work = threading.Condition(self._lock)
        self._has_room = threading.Condition(self._lock)
        self._ready: deque[Item] = deque()
        self._parked: dict[str, deque[Item]] = {}
        self._busy: set[str] = set()  # test_ids ready or in flight
        self._in_flight: dict[int, Item] = {}
        self._outstanding = 0  # ready + parked + in flight
        self._limit = concurrency * HTTP_QUEUE_PER_WORKER
        self._closing = False
        self._abandoned = False
        self._workers = [
            threading.Thread(target=self._work, name=f"patientkit-submit-{n}", daemon=True)
            for n in range(concurrency)
        ]
        for worker in self._workers:
            worker.start()

    def send(self, item: Item) -> None:
        key = item.value["test_id"]
        with self._lock:
            while self._outstanding >= self._limit:
                self._has_room.wait()
            self._outstanding += 1
            if key in self._busy:
                self._parked.setdefault(key, deque()).append(item)
            else:
                self._busy.add(key)
                self._ready.append(item)
                self._has_work.notify()

    def _work(self) -> None:
        me = threading.get_ident()
        while True:
            with self._lock:
                while not self._ready and not self._closing:
                    self._has_work.wait()
                if not self._ready:
                    return
                item = self._ready.popleft()
                self._in_flight[me] = item
            request_id = str(uuid.uuid4())
            try:
                outcome = self.client.submit(_five(item.value), request_id, self._retried)
            except Exception as exc:  # a bug or a surprise must not hang the job
                outcome = Outcome(FAILED, f"failed: {type(exc).__name__}: {exc}")
            with self._lock:
                if self._abandoned:
                    return  # counted as failed by abandon()
                del self._in_flight[me]
                self._count(outcome)
                key = item.value["test_id"]
                parked = self._parked.get(key)
                if parked:
                    self._ready.append(parked.popleft())
                    if not parked:
                        del self._parked[key]
                    self._has_work.notify()
                else:
                    self._busy.discard(key)
                self._outstanding -= 1
                self._has_room.notify()
            if outcome.reason:
                extra = {"request_id": request_id}
                self.report(item, outcome.reason, **extra)

    def _count(self, outcome: Outcome) -> None:
        # Lock held.
        if outcome.kind == CREATED:
            self.tally.created += 1
        elif outcome.kind == DUPLICATE:
            self.tally.duplicates += 1
        elif outcome.kind == REJECTED:
            self.tally.rejected += 1
        else:
            self.tally.failed += 1

    def _retried(self, attempt: int, reason: str, wait: float) -> None:
        with self._lock:
            self.tally.retries += 1

    def drop_unsent(self) -> None:
        """Forget the records read but not sent yet (the next run reads them again)."""
        with self._lock:
            for item in self._ready:
                self._busy.discard(item.value["test_id"])
            dropped = len(self._ready) + sum(len(queue) for queue in self._parked.values())
            self._ready.clear()
            self._parked.clear()
            self._outstanding -= dropped
            self._has_room.notify_all()

    def in_flight(self) -> int:
        with self._lock:
            return len(self._in_flight)

    def finish(self) -> None:
        """Wait until every record handed over is settled."""
        with self._lock:
            self._closing = True
            self._has_work.notify_all()
            while self._outstanding:
                self._has_room.wait()
        for worker in self._workers:
            worker.join()
        self.client.close()

    def abandon(self) -> int:
        """Stop waiting: the records in flight fail (they may have landed)."""
        with self._lock:
            self._abandoned = True
            lost = list(self._in_flight.values())
            self.tally.failed += len(lost)
        self.client.stop.set()
        for item in lost:
            self.report(item, "failed: interrupted before the answer came (it may have landed)")
        return len(lost)


# --- the job -------------------------------------------------------------------------------


Target = StoreTarget | HttpTarget


def check_paths(paths: Iterable[str]) -> None:
    """Every input can be opened, before anything is sent (an unreadable file is exit 2)."""
    for path in paths:
        if path == "-":
            continue
        if Path(path).is_dir():
            raise UsageError(f"{path}: is a folder, not a file")
        try:
            Path(path).open("rb").close()
        except FileNotFoundError:
            raise UsageError(f"{path}: no such file") from None
        except OSError as exc:
            raise UsageError(f"{path}: cannot read it: {exc.strerror}") from None


def submit(
    paths: list[str],
    target: Target,
    tally: Tally,
    report: Report,
    on_progress: Callable[[int], None] = lambda read: None,
    on_interrupt: Callable[[int], None] = lambda in_flight: None,
) -> Result:
    """Read every input, validate each record, hand the valid ones to the target, and
    settle everything; see the module docstring for Ctrl-C."""
    started = time.perf_counter()
    result = Result(tally, 0.0)
    try:
        try:
            _feed(paths, target, tally, report, on_progress)
        except KeyboardInterrupt:
            result.interrupted = True
            target.drop_unsent()
            on_interrupt(target.in_flight())
        except BufferStopped as exc:  # the store failed for good: stop reading
            result.error = exc
        except PatientkitError as exc:  # an input became unreadable part way
            result.error = exc
        target.finish()
    except KeyboardInterrupt:
        result.interrupted = True
        result.abandoned = target.abandon()
    result.seconds = time.perf_counter() - started
    return result


def _feed(
    paths: list[str],
    target: Target,
    tally: Tally,
    report: Report,
    on_progress: Callable[[int], None],
) -> None:
    send = target.send
    count = 0
    for path in paths:
        try:
            for item in read_items(path, RECORD_FIELDS):
                count += 1
                if count % PROGRESS_EVERY == 0:
                    on_progress(count)
                problem = item.error or record_problem(item.value)
                if problem is None:
                    send(item)
                else:
                    tally.invalid += 1
                    report(item, problem)
        except (OSError, EOFError) as exc:  # a truncated gzip, a read error
            name = "<stdin>" if path == "-" else path
            raise UsageError(f"{name}: cannot read it to the end: {exc}") from None
    on_progress(count)

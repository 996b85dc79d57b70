"""Submitting test records: read, validate by hand, deliver to the store or an API, count.

Every record read ends in exactly one of created, duplicate, invalid, rejected or failed:

* invalid: it could not be read, or breaks SPEC.md's rules (`record_problem`, the
  server's own check): reported with file:line and reason, never sent;
* to the store (`StoreTarget`): batches through the delivery buffer, one transaction
  each; the store's `add_records` says which were created and which duplicates (a test_id
  already stored, or earlier in the input: the first one wins); a record the store can
  never take (a value it cannot bind or hold) is isolated by the buffer (`PoisonError`:
  the batch is bisected) and rejected with the store's reason, the rest are stored;
* to an API in batches (`BulkTarget`, the default when the server has POST /tests/batch):
  `--concurrency` delivery buffers, each with one batch in flight on its own connection;
  a record goes to the buffer its test_id falls in, so two records with one test_id are
  never in flight at once and the first in the input is the one created. Each batch has
  its own `X-Request-ID`, kept across its retries: the server keeps the batch's answer,
  so a retry after a lost answer gets the original verdicts. Every record's verdict is
  the one a single POST would have given it;
* to an API one POST per record (`HttpTarget`: `--no-batch`, or a server that answers
  404 or 405 on /tests/batch): N worker threads, each with one request in flight on its own
  keep-alive connection, each record its own `X-Request-ID`, kept across its retries, so
  a lost answer is retried without turning a creation into a duplicate. 2xx is created,
  409 a duplicate, 408/425/429/5xx and transport errors are retried with backoff, then
  failed; any other answer is a rejection with the server's message.

Rejected and failed records go to the rejects file (with their request id when the
server saw them), so nothing is lost: fix and send the file again.

Ctrl-C (or SIGTERM) stops reading; records read but not yet sent are put back (not
counted: the next run reads them again), the requests in flight are settled, and the
summary so far is returned. A second Ctrl-C stops waiting: the records still in flight
count as failed (they may have landed; the next run reports those as duplicates). It is
raised only where the job waits for them (`_second_at_wait_points`), never in the
handling of the first or in a finalizer, where it escaped as a bare `error: interrupted`.
"""

from __future__ import annotations

import operator
import signal
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from patientkit.core import interrupts
from patientkit.core.buffer import BatchBuffer
from patientkit.core.collector import few_collections
from patientkit.core.delivery import BufferStopped
from patientkit.core.model import RECORD_FIELDS
from patientkit.core.retry import RetryPolicy
from patientkit.core.sinks import PayloadTooLarge, PoisonError
from patientkit.core.store import DATA_ERRORS, refusal
from patientkit.core.validation import all_records_valid, record_problem
from patientkit.errors import PatientkitError, RemoteError
from patientkit.inputs import Item, read_chunks
from patientkit.rejects import Rejects
from patientkit.stores import open_store
from patientkit.workflows.signals import STOP_SIGNALS, absorb_stops

if TYPE_CHECKING:  # httpx is imported only when records go to an API
    from patientkit.client.records import Outcome

STORE_BATCH = 20_000  # records per store transaction (fewer: each commit rewrites more pages)
STORE_PENDING = 3  # store batches read ahead of the one being written (bounded memory)
HTTP_BATCH = 2000  # records per POST /tests/batch (the server takes up to 10,000)
PARKED_PER_WORKER = 4  # same-test_id records waiting behind one in flight (bounded memory)
PROGRESS_EVERY = 1000

OnProblem = Callable[[str, int, str], None]


@dataclass
class SubmitTally:
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
        return {"read": self.read, **asdict(self), "seconds": round(seconds, 3)}


@dataclass
class Result:
    """How a submission ended: its tally and seconds, whether Ctrl-C stopped it, how many
    records a second Ctrl-C left in flight, and the error that stopped it early."""

    tally: SubmitTally
    seconds: float
    interrupted: bool = False
    abandoned: int = 0  # records given up in flight by a second Ctrl-C
    error: PatientkitError | None = None  # what stopped the job early, if anything


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


class Source:
    """The valid records of the inputs, in order; invalid ones are counted and reported
    on the way. Not thread-safe: one thread at a time (HttpTarget holds its lock).

    Read a record at a time (`next`) or a chunk at a time (`chunks`: the records one
    read of the input gave, checked at once when all are valid), not both."""

    def __init__(
        self,
        paths: list[str],
        tally: SubmitTally,
        report: Report,
        on_progress: Callable[[int], None] = lambda read: None,
    ) -> None:
        self.tally, self.report, self.on_progress = tally, report, on_progress
        self.stopped = False
        self.error: PatientkitError | None = None  # an input that failed part way
        self._valid = self._read(paths)
        self._ready: deque[Item] = deque()

    def next(self) -> Item | None:
        """The next valid record; None at the end, after stop(), or after an error."""
        while not self._ready:
            chunk = self._next_chunk()
            if chunk is None:
                return None
            self._ready.extend(chunk)
        return None if self.stopped else self._ready.popleft()

    def chunks(self) -> Iterator[list[Item]]:
        """The valid records a chunk at a time, until the end, stop() or an error."""
        while (chunk := self._next_chunk()) is not None:
            yield chunk

    def __iter__(self) -> Iterator[Item]:
        while (item := self.next()) is not None:
            yield item

    def _next_chunk(self) -> list[Item] | None:
        if self.stopped:
            return None
        try:
            return next(self._valid, None)
        except PatientkitError as exc:
            self.error = exc
            self.stopped = True
            return None

    def stop(self) -> None:
        self.stopped = True

    def _read(self, paths: list[str]) -> Iterator[list[Item]]:
        count = 0
        for path in paths:  # a read error part way is errors.ReadError: see next()
            for chunk in read_chunks(path, RECORD_FIELDS):
                before, count = count, count + len(chunk)
                if count // PROGRESS_EVERY != before // PROGRESS_EVERY:
                    self.on_progress(count)
                if not any(map(_error, chunk)) and all_records_valid(list(map(_value, chunk))):
                    yield chunk
                    continue
                valid = []
                for item in chunk:
                    problem = item.error or record_problem(item.value)
                    if problem is None:
                        valid.append(item)
                    else:
                        self.tally.invalid += 1
                        self.report(item, problem)
                if valid:
                    yield valid
        self.on_progress(count)


_error = operator.itemgetter(3)  # an Item's error
_value = operator.itemgetter(2)  # an Item's value


# --- the store ----------------------------------------------------------------------------


class StoreTarget:
    """Batches of valid records into the store (`open_store`), one transaction per batch,
    through the delivery buffer: its flusher thread writes while the calling thread
    reads and parses."""

    def __init__(
        self, target: str | Path, tally: SubmitTally, report: Report, batch: int = STORE_BATCH
    ) -> None:
        self.tally, self.report = tally, report
        self.error: PatientkitError | None = None
        self._lock = threading.Lock()
        self._abandoned = False
        self.store = open_store(target)
        self.buffer: BatchBuffer[Item] = BatchBuffer(
            self._sink,
            max_batch=batch,
            flush_interval=0.5,
            max_pending=batch * STORE_PENDING,
            retry_policy=RetryPolicy(initial=0.05, maximum=5.0),
            failure_limit=10,
            dead_letter=self._refused,
        )

    def _sink(self, batch: list[Item]) -> None:
        try:  # one transaction: a refused batch stores nothing
            created = sum(self.store.add_records(list(map(_value, batch))))  # five fields
        except DATA_ERRORS as exc:
            raise PoisonError(f"refused by the store: {refusal(exc)}") from exc
        with self._lock:
            if self._abandoned:
                return  # already counted as failed
            self.tally.created += created
            self.tally.duplicates += len(batch) - created

    def _refused(self, item: Item, reason: str) -> None:
        """The buffer's dead letter: a record the store can never take is rejected."""
        with self._lock:
            if self._abandoned:
                return  # already counted as failed
            self.tally.rejected += 1
        self.report(item, reason)

    def run(self, source: Source) -> None:
        """Read in this thread; the buffer's flusher stores."""
        track_many = self.buffer.track_many
        try:
            for chunk in source.chunks():
                track_many(chunk)
        except BufferStopped as exc:  # the store failed for good: stop reading
            source.stop()
            self.error = exc

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
            settled = self.tally.created + self.tally.duplicates + stats.dead_lettered
            unconfirmed = stats.tracked - settled
            self.tally.failed += unconfirmed
        return unconfirmed


# --- an API ----------------------------------------------------------------------------------


class HttpTarget:
    """`concurrency` worker threads, each with one request in flight on its own
    keep-alive connection, each pulling the next record from the source itself.

    A plain pool rather than the batch buffer, the workers reading the input themselves
    under one lock (why: docs/performance.md). Two records with the same test_id are
    never in flight together: the later one is parked until the earlier is settled, then
    sent by the same worker, so the first in the input is the one created (as with the
    store) and the second gets its 409."""

    def __init__(
        self,
        server: str,
        concurrency: int,
        tally: SubmitTally,
        report: Report,
        retry: RetryPolicy,
    ) -> None:
        from patientkit.client import records as api

        self.api = api
        self.tally, self.report = tally, report
        self.client = api.RecordsClient(server, connections=concurrency, retry=retry)
        self.client.ping()
        self.concurrency = concurrency
        self.error: PatientkitError | None = None
        self._source: Source | None = None
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)  # parked records below the limit
        self._busy: set[str] = set()  # test_ids in flight
        self._parked: dict[str, deque[Item]] = {}
        self._parked_count = 0
        self._in_flight: dict[int, Item] = {}
        self._abandoned = False
        self._workers: list[threading.Thread] = []

    def run(self, source: Source) -> None:
        """Start the workers and wait until they have settled every record."""
        self._source = source
        self._workers = [
            threading.Thread(target=self._work, name=f"patientkit-submit-{n}", daemon=True)
            for n in range(self.concurrency)
        ]
        for worker in self._workers:
            worker.start()
        self._wait()

    def _wait(self) -> None:
        for worker in self._workers:
            while worker.is_alive():
                worker.join(0.25)  # short joins: Ctrl-C reaches this thread at once

    def _pull(self, me: int) -> Item | None:
        """The next record whose test_id is not in flight; later ones are parked."""
        source = self._source
        assert source is not None
        with self._lock:
            while True:
                while self._parked_count >= PARKED_PER_WORKER * self.concurrency:
                    if source.stopped:
                        return None
                    self._room.wait()
                item = source.next()
                if item is None:
                    return None
                key = item.value["test_id"]
                if key in self._busy:
                    self._parked.setdefault(key, deque()).append(item)
                    self._parked_count += 1
                    continue
                self._busy.add(key)
                self._in_flight[me] = item
                return item

    def _work(self) -> None:
        me = threading.get_ident()
        item = self._pull(me)
        while item is not None:
            request_id = str(uuid.uuid4())
            record = {name: item.value[name] for name in RECORD_FIELDS}
            try:
                outcome = self.client.submit(record, request_id, self._retried)
            except Exception as exc:  # a bug or a surprise must not hang the job
                outcome = self.api.Outcome(self.api.FAILED, f"failed: {type(exc).__name__}: {exc}")
            following = None
            with self._lock:
                if self._abandoned:
                    return  # counted as failed by abandon()
                del self._in_flight[me]
                self._count(outcome)
                key = item.value["test_id"]
                parked = self._parked.get(key)
                if parked and not (self._source is not None and self._source.stopped):
                    following = parked.popleft()
                    self._parked_count -= 1
                    if not parked:
                        del self._parked[key]
                    self._in_flight[me] = following
                    self._room.notify_all()
                else:
                    self._busy.discard(key)
            if outcome.reason:
                self.report(item, outcome.reason, request_id=request_id)
            item = following if following is not None else self._pull(me)

    def _count(self, outcome: Outcome) -> None:
        _count(self.tally, self.api, outcome)  # lock held

    def _retried(self, attempt: int, reason: str, wait: float) -> None:
        with self._lock:
            self.tally.retries += 1

    def stop_reading(self) -> None:
        """Ctrl-C: no more records; parked ones are not sent (the next run reads them)."""
        with self._lock:
            if self._source is not None:
                self._source.stop()
            self._room.notify_all()

    def in_flight(self) -> int:
        with self._lock:
            return len(self._in_flight)

    def finish(self) -> None:
        """Wait until every record taken is settled."""
        self._wait()
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


# --- an API, in batches ---------------------------------------------------------------------


class BulkTarget:
    """`concurrency` delivery buffers, each flushing batches of records to POST
    /tests/batch from its own thread on its own keep-alive connection: `concurrency`
    batches in flight. The reading thread hands each record to the buffer of its test_id
    (the same buffer for the same test_id: a buffer settles one batch before the next,
    and the server takes a batch in order, so the first record of a test_id is the one
    created, as with one POST per record).

    The sink settles every record itself (the buffer only batches, bounds memory and
    keeps order): created, duplicate, rejected with the server's message, or failed
    after `--attempts` tries of its batch, all as the single POST's outcomes. A 413 is
    handed to the buffer, which sends the halves; a 404 or 405 (bulk gone, say behind a
    load balancer) sends that batch's records one POST each."""

    def __init__(
        self,
        client: Any,
        concurrency: int,
        tally: SubmitTally,
        report: Report,
        batch: int = HTTP_BATCH,
    ) -> None:
        from patientkit.client import records as api

        self.api, self.client = api, client
        self.tally, self.report = tally, report
        self.error: PatientkitError | None = None
        self._lock = threading.Lock()
        self._abandoned = False
        self._bulk = True
        self._settled = 0
        self._tracked = 0
        self.buffers: list[BatchBuffer[Item]] = [
            BatchBuffer(
                self._sink,
                max_batch=batch,
                flush_interval=0.2,
                max_pending=batch * 2,
                retry_policy=RetryPolicy(initial=0.05, maximum=5.0),
                failure_limit=10,
                dead_letter=self._refused,
            )
            for _ in range(concurrency)
        ]

    def _sink(self, batch: list[Item]) -> None:
        records = [{name: item.value[name] for name in RECORD_FIELDS} for item in batch]
        request_id = str(uuid.uuid4())
        ids = [request_id] * len(batch)
        try:
            if not self._bulk:
                raise self.api.NoBulk
            outcomes = self.client.submit_batch(records, request_id, self._retried(len(batch)))
        except self.api.BatchTooLarge as exc:
            raise PayloadTooLarge(str(exc)) from exc
        except self.api.NoBulk:
            self._bulk = False
            ids = [str(uuid.uuid4()) for _ in batch]
            outcomes = [
                self.client.submit(record, one, self._retried(1))
                for record, one in zip(records, ids, strict=True)
            ]
        except Exception as exc:  # a bug or a surprise must not hang the job
            reason = f"failed: {type(exc).__name__}: {exc}"
            outcomes = [self.api.Outcome(self.api.FAILED, reason)] * len(batch)
        with self._lock:
            if self._abandoned:
                return  # counted as failed by abandon()
            for outcome in outcomes:
                _count(self.tally, self.api, outcome)
            self._settled += len(batch)
        for item, outcome, one in zip(batch, outcomes, ids, strict=True):
            if outcome.reason:
                self.report(item, outcome.reason, request_id=one)

    def _retried(self, records: int) -> Callable[[int, str, float], None]:
        def retried(attempt: int, reason: str, wait: float) -> None:
            with self._lock:
                self.tally.retries += records

        return retried

    def _refused(self, item: Item, reason: str) -> None:
        """The buffer's dead letter: one record the server refused as too large alone
        (the sink settles everything else itself)."""
        with self._lock:
            if self._abandoned:
                return
            self.tally.rejected += 1
            self._settled += 1
        self.report(item, f"rejected by the server (413): {reason}")

    def run(self, source: Source) -> None:
        """Read in this thread; the buffers' flushers send."""
        buffers, count = self.buffers, len(self.buffers)
        try:
            for chunk in source.chunks():
                if count == 1:
                    self._tracked += buffers[0].track_many(chunk)
                    continue
                parts: list[list[Item]] = [[] for _ in buffers]
                for item in chunk:
                    parts[hash(item.value["test_id"]) % count].append(item)
                for buffer, part in zip(buffers, parts, strict=True):
                    self._tracked += buffer.track_many(part)
        except BufferStopped as exc:  # a buffer failed for good: stop reading
            source.stop()
            self.error = exc

    def in_flight(self) -> int:
        with self._lock:
            return self._tracked - self._settled

    def finish(self) -> None:
        """Deliver everything tracked; what cannot be delivered fails, into the rejects."""
        left: list[tuple[Item, str]] = []
        for buffer in self.buffers:
            try:
                left += [(item, "not delivered") for item in buffer.close()]
            except BufferStopped as exc:
                left += [(item, exc.reason) for item in buffer.drain_pending()]
        for item, reason in left:
            self.tally.failed += 1
            self.report(item, f"failed: {reason}")
        self.client.close()

    def abandon(self) -> int:
        """A second Ctrl-C while closing: the records not settled fail (they may have
        landed; a rerun reports those as duplicates)."""
        self.client.stop.set()
        with self._lock:
            self._abandoned = True
            unconfirmed = self._tracked - self._settled
            self.tally.failed += unconfirmed
        return unconfirmed


def _count(tally: SubmitTally, api: Any, outcome: Outcome) -> None:
    """Count one record's outcome (the caller holds the lock guarding `tally`)."""
    if outcome.kind == api.CREATED:
        tally.created += 1
    elif outcome.kind == api.DUPLICATE:
        tally.duplicates += 1
    elif outcome.kind == api.REJECTED:
        tally.rejected += 1
    else:
        tally.failed += 1


# --- the job -------------------------------------------------------------------------------


Target = StoreTarget | HttpTarget | BulkTarget


def http_target(
    server: str,
    concurrency: int,
    tally: SubmitTally,
    report: Report,
    retry: RetryPolicy,
    batch: bool = True,
    batch_size: int = HTTP_BATCH,
) -> HttpTarget | BulkTarget:
    """The target for an API: batches (BulkTarget) when `batch` and the server has POST
    /tests/batch, else one POST per record (HttpTarget)."""
    if not batch:
        return HttpTarget(server, concurrency, tally, report, retry)
    from patientkit.client.records import RecordsClient

    client = RecordsClient(server, connections=concurrency, retry=retry)
    try:
        client.ping()  # nothing there: NoServer, exit 2
        try:
            bulk = client.has_bulk(lambda attempt, reason, wait: None)
        except RemoteError:  # no final answer: batches (a 404 or 405 to one falls back)
            bulk = True
    except BaseException:
        client.close()
        raise
    if bulk:
        return BulkTarget(client, concurrency, tally, report, batch_size)
    client.close()
    return HttpTarget(server, concurrency, tally, report, retry)


def submit(
    source: Source,
    target: Target,
    on_interrupt: Callable[[int], None] = lambda in_flight: None,
) -> Result:
    """Hand every valid record of the source to the target and settle everything; see
    the module docstring for Ctrl-C."""
    started = time.perf_counter()
    result = Result(source.tally, 0.0)
    try:
        try:
            target.run(source)
        except KeyboardInterrupt:
            _second_at_wait_points()
            result.interrupted = True
            if isinstance(target, HttpTarget):
                target.stop_reading()
            else:
                source.stop()
            on_interrupt(target.in_flight())
        with interrupts.wait_point():  # raises a second Ctrl-C that came before
            target.finish()
    except KeyboardInterrupt:
        result.interrupted = True
        result.abandoned = target.abandon()
    finally:
        _restore_handlers()
        if result.interrupted:  # the report is written whole (workflows/signals.py)
            absorb_stops()
    result.error = source.error or target.error
    result.seconds = time.perf_counter() - started
    return result


_handlers: dict[int, Any] = {}


def _second_at_wait_points() -> None:
    """After the first Ctrl-C (raised where the job was, which it handles), a second one
    stops waiting: raised only while the main thread waits at a wait point (the end of
    delivery), else at the next one, so that it never lands in a finalizer or in the
    handling of the first (core/interrupts.py). Main thread only; else nothing changes."""

    def second(signum: int, frame: Any) -> None:
        if interrupts.waiting():
            raise KeyboardInterrupt
        interrupts.defer()

    if threading.current_thread() is threading.main_thread():
        for sig in STOP_SIGNALS:
            _handlers.setdefault(sig, signal.signal(sig, second))


def _restore_handlers() -> None:
    while _handlers:
        sig, handler = _handlers.popitem()
        signal.signal(sig, handler)
    interrupts.reset()


def run_submit(
    paths: list[str],
    *,
    db: str | Path,
    to: str | None = None,
    concurrency: int = 4,
    rejects: Path | None = None,
    append: bool = False,
    attempts: int = 8,
    batch: bool = True,
    batch_size: int = HTTP_BATCH,
    on_problem: OnProblem = lambda source, line, reason: None,
    on_progress: Callable[[int], None] = lambda read: None,
    on_interrupt: Callable[[int], None] = lambda in_flight: None,
) -> Result:
    """`records submit` (SPEC.md): validate the records of `paths` and submit them to the
    store `db` (`open_store`'s target) or, with `to`, the records API at that base URL
    (`batch`: POST /tests/batch in batches of `batch_size` when the server has it, else
    one POST per record; `concurrency` requests in flight; `attempts` tries each). Every
    invalid, rejected or failed record goes to on_problem(source, line, reason) and to
    the `rejects` file (NDJSON; `append` adds to it). on_progress(read) follows reading;
    on_interrupt(in_flight) is called on the first Ctrl-C.

    Returns the `Result` (its tally, seconds, interrupted, abandoned, error). Raises
    UsageError for an input or rejects file that cannot be opened or a store that cannot
    be; RemoteError (NoServer) when `to` does not answer."""
    from patientkit.inputs import check_paths

    check_paths(paths)
    tally = SubmitTally()
    with Rejects(rejects, append=append, inputs=paths) as rejects_file:
        report = Report(rejects_file, on_problem)
        target: Target
        if to is not None:
            from dataclasses import replace

            from patientkit.client.http import DEFAULT_RETRY

            retry = replace(DEFAULT_RETRY, attempts=attempts)
            target = http_target(to, concurrency, tally, report, retry, batch, batch_size)
        else:
            target = StoreTarget(db, tally, report)
        with few_collections():
            return submit(Source(paths, tally, report, on_progress), target, on_interrupt)

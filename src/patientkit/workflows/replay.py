"""Replay recorded device readings into the store or a readings API, losing nothing.

Inputs are read as a stream (`inputs.read_items`); each reading is checked with the API's
own rules (`core.validation`); an invalid one goes to the dead-letter file with its file,
line and reason. Valid readings go through a `BatchBuffer` to a sink:

* `StoreSink`: one transaction per batch; duplicates of stored (device, instant) pairs are
  ignored and counted. A batch the store refuses for good (a value it cannot hold) is
  answered with `PoisonError`: the buffer bisects it, the refused reading is
  dead-lettered with the store's reason and the rest are stored.
* `ApiSink`: each batch grouped per device into create requests of up to `batch_size`
  readings, sent in tracking order per device. A 400 or 413 (or a body that cannot be
  encoded) splits the request in halves until the reading the server refuses is found,
  so the good ones still land; the refused one is dead-lettered with the server's
  message. Transport errors, 408/425/429 and 5xx are retried by the buffer (with
  backoff, Retry-After honoured); a device's later readings wait behind its failed ones,
  so the first of two readings at one instant is the one stored, as in a clean run.

Re-running the same replay after a crash stores exactly what one clean run stores: what
landed before is ignored as duplicates and the rest lands in the same order.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from patientkit.core import interrupts, validation
from patientkit.core.buffer import BatchBuffer
from patientkit.core.delivery import BufferFull, BufferStopped
from patientkit.core.model import Reading
from patientkit.core.sinks import PoisonError, RetryableError, SinkClosed, SinkResult
from patientkit.errors import PatientkitError
from patientkit.inputs import Item, read_items
from patientkit.rejects import Rejects, entry_line
from patientkit.workflows.store_process import StoreProcess, StoreRefused, StoreUnavailable

if TYPE_CHECKING:  # httpx is imported with --to alone (a replay into the store starts faster)
    from patientkit.client.readings import ReadingsClient

CSV_FIELDS = ("id", "count", "timestamp")
Event = tuple[Reading, str, int]  # the reading (a plain tuple: it pickles fast), source, line
_DIGITS = re.compile(r"[0-9]+")
UNENCODABLE = -1  # the status ApiSink gives a request whose body could not be encoded
ROOM_WAIT = 0.1  # seconds a reading waits for room in a full buffer before a Ctrl-C is seen
SINK_STOPPED = "interrupted"  # the reason of a buffer whose ApiSink stopped (SinkClosed)
INTERRUPTED_CLOSE = 1.0  # seconds to deliver what was read after Ctrl-C (the rest: dead letters)
API_BATCH = 5_000  # readings in one create request, by default
API_MOST_BATCH = 50_000  # readings in one buffer batch to an API (many devices' requests)
STORE_BATCH = 20_000  # readings in one store transaction, by default


@dataclass
class ReplayTally:
    """The counts of a replay (SPEC.md: `readings replay`'s JSON summary): `summary()` is
    what the command prints."""

    read: int = 0
    delivered: int = 0
    duplicates: int | None = 0  # None when the destination is an API (it does not say)
    invalid: int = 0
    dead_lettered: int = 0
    retries: int = 0
    devices: int = 0
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {**asdict(self), "seconds": round(self.seconds, 3)}


def record_of(reading: Reading) -> dict[str, Any]:
    """A reading as an input line, for the dead-letter file (it can be replayed as is)."""
    device_id, count, timestamp, _ = reading
    return {"id": device_id, "count": count, "timestamp": timestamp}


def _leftover_lines(events: list[Event], reason: str) -> list[str]:
    """The dead-letter lines of readings not delivered, as `rejects.entry_line` writes
    them, made by string formatting (each is a valid reading: only the source and the
    reason need JSON's escaping; why: docs/performance.md)."""
    why = entry_line({"reason": reason}, None)[len('{"reason": ') : -len(', "record": null}\n')]
    names: dict[str, str] = {}
    lines = []
    for (device_id, count, timestamp, _), source, line in events:
        name = names.get(source)
        if name is None:
            name = names[source] = entry_line({"source": source}, None)[
                len('{"source": ') : -len(', "record": null}\n')
            ]
        lines.append(
            f'{{"source": {name}, "line": {line}, "reason": {why}, "record": '
            f'{{"id": "{device_id}", "count": {count}, "timestamp": "{timestamp}"}}}}\n'
        )
    return lines


class Parser:
    """Input items to readings, with SPEC.md's messages for the invalid ones; the checks
    of device ids and timestamps are cached."""

    def __init__(self) -> None:
        self.devices: dict[str, str] = {}  # each valid id, to its one shared str object
        self.instants = validation.Instants()

    def readings(self, item: Item) -> list[tuple[Reading | None, str, Any]]:
        """(reading, "", record) for each valid reading; (None, reason, record) if not."""
        value = item.value
        if item.error is not None:
            return [(None, item.error, value)]
        if type(value) is not dict:
            return [(None, validation.NOT_AN_OBJECT, value)]
        device_id = value.get("id")
        known = type(device_id) is str and device_id in self.devices
        problem = "" if known else self._device_problem(device_id)
        if "readings" not in value:
            return [(None, problem, value) if problem else self._reading(device_id, value, value)]
        items = value["readings"]  # the API's create shape: one device, many readings
        if problem or not isinstance(items, list) or not items:
            return [(None, problem or validation.READINGS_REQUIRED, value)]
        return [
            self._reading(device_id, one, {"id": device_id, **one} if type(one) is dict else one)
            for one in items
        ]

    def _device_problem(self, device_id: object) -> str:
        if device_id is None:
            return validation.ID_REQUIRED
        if not validation.is_device_id(device_id):
            return validation.BAD_DEVICE_ID
        self.devices[device_id] = device_id
        return ""

    def _reading(self, device_id: Any, one: Any, record: Any) -> tuple[Reading | None, str, Any]:
        if type(one) is not dict:
            return None, validation.BAD_COUNT, record
        count = one.get("count")
        if type(count) is not int:
            # CSV gives text; more than 19 digits is past MAX_COUNT (and int() of
            # thousands of digits would raise)
            if type(count) is str and _DIGITS.fullmatch(count):
                if len(count.lstrip("0")) >= 20:
                    return None, validation.COUNT_TOO_LARGE, record
                count = int(count)
            if not validation.is_count(count):
                return None, _count_reason(count), record
        elif not 0 < count <= validation.MAX_COUNT:
            return None, _count_reason(count), record
        timestamp = one.get("timestamp")
        instant = self.instants.of(timestamp)
        if instant is None:
            return None, validation.BAD_TIMESTAMP, record
        return (device_id, count, timestamp, instant), "", record  # type: ignore[return-value]


def _count_reason(count: object) -> str:
    """Why a count is invalid: a whole number past what the store holds says so."""
    if type(count) is int and count > validation.MAX_COUNT:
        return validation.COUNT_TOO_LARGE
    return validation.BAD_COUNT


class StoreSink:
    """Each batch in one transaction, written by the store's own process (see store_process.py);
    counts the duplicates the store ignored. A failing store (full disk, I/O error, a
    crashed writer) is retried by the buffer; a batch the store refuses for good (its
    transaction rolled back) is a `PoisonError`, which the buffer bisects."""

    def __init__(self, writer: StoreProcess) -> None:
        self.writer = writer
        self.duplicates = 0
        self.devices: set[str] = set()

    def __call__(self, batch: list[Event]) -> None:
        readings = list(map(itemgetter(0), batch))
        try:
            new = self.writer.call("add_readings", readings)
        except StoreRefused as exc:
            raise PoisonError(f"refused by the store: {exc}") from exc
        except StoreUnavailable as exc:
            raise RetryableError(f"the store failed: {exc}") from exc
        self.duplicates += len(readings) - new
        self.devices.update(map(itemgetter(0), readings))


class ApiSink:
    """Each batch as create requests, per device, of up to batch_size readings, with
    `concurrency` devices in flight at once (one device's requests stay in order)."""

    def __init__(self, client: ReadingsClient, batch_size: int, concurrency: int = 4) -> None:
        self.client, self.batch_size = client, batch_size
        self.devices: set[str] = set()
        self.pool = ThreadPoolExecutor(concurrency, thread_name_prefix="patientkit-post")
        self._stopping = threading.Event()

    def stop(self) -> None:
        """Send no more requests (the delivery time after Ctrl-C is over): the requests in
        flight finish, and every reading not sent yet is handed back as not delivered, so
        that a batch of many devices never keeps the command waiting for all of them."""
        self._stopping.set()

    def close(self, wait: bool = True) -> None:
        """Stop the request threads; without `wait`, requests not started are cancelled
        and the ones in flight are not waited for (a second Ctrl-C)."""
        self.pool.shutdown(wait=wait, cancel_futures=not wait)

    def __call__(self, batch: list[Event]) -> SinkResult | None:
        groups: dict[str, list[int]] = {}
        for index, event in enumerate(batch):
            groups.setdefault(event[0][0], []).append(index)
        rejected: dict[int, str] = {}
        retry: list[int] = []
        failures = []
        if self._stopping.is_set():  # stopped: the batch is handed back, never retried
            raise SinkClosed(SINK_STOPPED)
        try:
            sent = [
                self.pool.submit(self._device, d, batch, i, rejected) for d, i in groups.items()
            ]
        except RuntimeError:  # the request pool is shut down (a second Ctrl-C)
            raise SinkClosed(SINK_STOPPED) from None
        for future in sent:
            waiting, failed = future.result()
            if failed is not None:
                retry.extend(waiting)
                failures.append(failed)
        if not retry and not rejected:
            return None
        retry_after = max((f.retry_after or 0.0 for f in failures), default=0.0) or None
        if len(retry) == len(batch):
            reason = failures[0].message or f"status {failures[0].status}"
            raise RetryableError(reason, retry_after)
        return SinkResult(rejected=rejected, retry=retry, retry_after=retry_after)

    def _device(
        self, device_id: str, batch: list[Event], indices: list[int], rejected: dict[int, str]
    ) -> tuple[list[int], Any]:
        """One device's readings in order; the ones left waiting behind a retryable
        failure (they must be retried, in order) and that failure."""
        for start in range(0, len(indices), self.batch_size):
            if self._stopping.is_set():
                from patientkit.client.readings import Answer

                return indices[start:], Answer(0, "interrupted")
            chunk = indices[start : start + self.batch_size]
            done, failed = self._deliver(device_id, batch, chunk, rejected)
            if failed is not None:
                return indices[start + done :], failed
        return [], None

    def _deliver(
        self, device_id: str, batch: list[Event], chunk: list[int], rejected: dict[int, str]
    ) -> tuple[int, Any]:
        """Send chunk; return how many of its readings, from the front, are settled, and
        the retryable answer that stopped it (None when all are settled)."""
        try:
            answer = self.client.create(device_id, [batch[i][0] for i in chunk])
        except (TypeError, ValueError, OverflowError, RecursionError) as exc:
            from patientkit.client.readings import Answer

            # the body cannot be encoded: a reading of the chunk can never be sent
            answer = Answer(UNENCODABLE, f"cannot be encoded as JSON ({type(exc).__name__})")
        if answer.ok:
            self.devices.add(device_id)
            return len(chunk), None
        if answer.retryable:
            return 0, answer
        if len(chunk) > 1 and answer.status in (400, 413, UNENCODABLE):  # find the one
            half = len(chunk) // 2
            done, failed = self._deliver(device_id, batch, chunk[:half], rejected)
            if failed is not None:
                return done, failed
            done, failed = self._deliver(device_id, batch, chunk[half:], rejected)
            return half + done, failed
        reason = answer.message if answer.status != 413 else "payload too large (413)"
        if answer.status != UNENCODABLE:
            reason = f"refused by the server ({answer.status}): {reason}"
        for index in chunk:
            rejected[index] = reason
        return len(chunk), None


@dataclass
class Replay:
    """One replay run: feed it paths, then read its tally."""

    sink: StoreSink | ApiSink
    rejects: Rejects
    max_batch: int
    flush_interval: float = 1.0
    speed: float | None = None
    on_invalid: Callable[[str, int, str], None] | None = None
    on_progress: Callable[[int], None] | None = None
    tally: ReplayTally = field(default_factory=ReplayTally)
    stop_reason: str = ""  # why delivery stopped early, if it did
    interrupted: bool = False  # stop() was called: reading stopped early
    abandoned: bool = False  # a second Ctrl-C: the job stopped waiting for delivery
    error: PatientkitError | None = None  # an input that could not be read to its end

    def __post_init__(self) -> None:
        self._stopping = threading.Event()

    def stop(self) -> None:
        """Stop reading (safe from a signal handler): what was read is still delivered."""
        self.interrupted = True
        self._stopping.set()

    def abandon(self) -> None:
        """Stop waiting for delivery too (a second Ctrl-C; safe from a signal handler)."""
        self.interrupted = self.abandoned = True
        self._stopping.set()

    def run(self, paths: Iterable[str]) -> ReplayTally:
        """Read, check and deliver every reading; close the buffer, delivering what is
        pending; write what could not be delivered to the dead-letter file.

        Stops reading early after stop() (then delivery gets INTERRUPTED_CLOSE seconds),
        or when an input cannot be read to its end (`error` holds why; what was read is
        delivered). A KeyboardInterrupt (a second Ctrl-C) while reading or delivering
        stops waiting at once (`abandoned`): what the store has not confirmed is left to
        the next run, which stores it. Returns the tally in every one of these cases."""
        started = time.perf_counter()
        buffer: BatchBuffer[Event] = BatchBuffer(
            self.sink,
            max_batch=self.max_batch,
            max_pending=self.max_batch * 4,
            flush_interval=self.flush_interval,
            dead_letter=self._dead_letter,
            key=lambda event: event[0][0],
        )
        stop_reason = ""
        failure: Exception | None = None
        try:
            self._feed(paths, buffer)
        except BufferStopped as exc:
            stop_reason = exc.reason
        except PatientkitError as exc:  # an input unreadable part way: deliver what was read
            self.error = exc
        except interrupts.StopReading:  # a Ctrl-C while an input read waited: deliver
            self.interrupted = True
        except KeyboardInterrupt:
            self.interrupted = self.abandoned = True
        except Exception as exc:  # a bug of ours: deliver what was read first
            failure = exc
            self.interrupted = True
        leftovers = self._close(buffer)
        if isinstance(leftovers, str):
            stop_reason, leftovers = leftovers, buffer.drain_pending()
        if stop_reason == SINK_STOPPED:  # the ApiSink stopped after Ctrl-C: not a failure
            stop_reason, self.interrupted = "", True
        if interrupts.lost():  # a second Ctrl-C swallowed by a finalizer: not lost here
            self.interrupted = self.abandoned = True
        reason = f"not delivered: {stop_reason or 'interrupted'}"
        try:
            self.rejects.write_lines(
                _leftover_lines(leftovers, reason) if self.rejects.path else [""] * len(leftovers)
            )
        except KeyboardInterrupt:
            self.interrupted = self.abandoned = True
        stats = buffer.stats()
        tally = self.tally
        tally.delivered = stats.delivered
        tally.retries = stats.retried
        tally.dead_lettered = self.rejects.count
        tally.devices = len(self.sink.devices)
        tally.duplicates = self.sink.duplicates if isinstance(self.sink, StoreSink) else None
        tally.seconds = time.perf_counter() - started
        self.stop_reason = stop_reason
        if failure is not None:
            raise failure
        return tally

    def _close(self, buffer: BatchBuffer[Event]) -> list[Event] | str:
        """Close the buffer: the events not delivered, or why the buffer stopped. After
        an interrupt (also one that comes while it waits here), delivery gets
        INTERRUPTED_CLOSE seconds; after a second one, none."""
        timeout = None
        if self.abandoned:
            timeout = 0.0
        elif self.interrupted:
            timeout = INTERRUPTED_CLOSE
        try:
            try:
                try:
                    with interrupts.wait_point():  # a Ctrl-C stops this wait
                        return buffer.close(timeout=timeout)
                except interrupts.StopReading:  # the first, while the rest was delivered
                    self.interrupted = True
                    with interrupts.wait_point():
                        return buffer.close(timeout=INTERRUPTED_CLOSE)
            except BufferStopped as exc:
                return exc.reason
            except KeyboardInterrupt:
                self.interrupted = self.abandoned = True
                try:
                    return buffer.close(timeout=0.0)
                except BufferStopped as exc:
                    return exc.reason
        finally:
            if self.interrupted and isinstance(self.sink, ApiSink):
                self.sink.stop()  # the time to deliver is over: no request is started now

    def _feed(self, paths: Iterable[str], buffer: BatchBuffer[Event]) -> None:
        parser = Parser()
        # one str object a device: batches pickled for the store process carry it once
        known_device, instant_of = parser.devices.get, parser.instants.of
        largest = validation.MAX_COUNT
        tally = self.tally
        track = buffer.track  # with ROOM_WAIT: a full buffer is waited on in slices
        pace = _Pace(self.speed, self._stopping) if self.speed else None
        progress = self.on_progress
        for path in paths:
            for item in read_items(path, CSV_FIELDS):
                if self.interrupted:  # a plain attribute: cheaper than stopping.is_set()
                    return
                if progress is not None and not item.line % 4096:  # here: the fast path
                    progress(tally.read)  # below `continue`s, past the end of this loop
                value = item.value
                if type(value) is dict and pace is None and "readings" not in value:
                    # the common case, checked inline: one reading of a device seen before
                    device_id, count = value.get("id"), value.get("count")
                    if type(device_id) is str:
                        device_id = known_device(device_id)
                    if device_id and type(count) is int and 0 < count <= largest:
                        timestamp = value.get("timestamp")
                        instant = instant_of(timestamp)
                        if instant is not None:
                            tally.read += 1
                            # a plain tuple where a Reading is declared: it pickles faster
                            event: Event = (
                                (device_id, count, timestamp, instant),  # type: ignore[assignment]
                                item.source,
                                item.line,
                            )
                            try:
                                track(event, ROOM_WAIT)
                            except BufferFull:
                                if not self._track_slowly(buffer, event):
                                    return
                            continue
                for reading, reason, record in parser.readings(item):
                    tally.read += 1
                    if reading is None:
                        tally.invalid += 1
                        self.rejects.write(item.source, item.line, reason, record)
                        if self.on_invalid is not None:
                            self.on_invalid(item.source, item.line, reason)
                        continue
                    if pace is not None:
                        pace.wait_for(reading[3])
                    try:
                        track((reading, item.source, item.line), ROOM_WAIT)
                    except BufferFull:
                        if not self._track_slowly(buffer, (reading, item.source, item.line)):
                            return

    def _track_slowly(self, buffer: BatchBuffer[Event], event: Event) -> bool:
        """Track an event the full buffer had no room for within ROOM_WAIT seconds: wait
        on in slices of ROOM_WAIT, so that a Ctrl-C (stop(), a flag set by the signal
        handler, which must not take the buffer's lock) ends the wait at once instead of
        when the far side next frees room. False when stopped: the event is then not read
        (the next run reads it), so every reading read stays accounted for."""
        while not self.interrupted:
            try:
                buffer.track(event, timeout=ROOM_WAIT)
                return True
            except BufferFull:
                continue
        self.tally.read -= 1
        return False

    def _dead_letter(self, event: Event, reason: str) -> None:
        reading, source, line = event
        self.rejects.write(source, line, reason, record_of(reading))
        if self.on_invalid is not None:
            self.on_invalid(source, line, reason)


class _Pace:
    """Keeps the recorded spacing between readings, divided by `speed`."""

    def __init__(self, speed: float, stopping: threading.Event) -> None:
        self.speed, self.stopping = speed, stopping
        self.first: int | None = None
        self.started = 0.0

    def wait_for(self, instant: int) -> None:
        if self.first is None:
            self.first, self.started = instant, time.monotonic()
            return
        due = self.started + (instant - self.first) / self.speed
        delay = due - time.monotonic()
        if delay > 0:
            self.stopping.wait(delay)


def run_replay(
    paths: list[str],
    *,
    db: str | Path,
    to: str | None = None,
    batch_size: int | None = None,
    flush_interval: float = 1.0,
    speed: float | None = None,
    dead_letter: Path | None = None,
    append: bool = False,
    concurrency: int = 4,
    on_invalid: Callable[[str, int, str], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> Replay:
    """`readings replay` (SPEC.md): replay the readings of `paths` into the store `db`
    (`open_store`'s target, written from a child process) or, with `to`, the readings API
    at that base URL; readings not delivered go to `dead_letter` (NDJSON; `append` adds to
    it). `batch_size` is the most readings in one create request (default API_BATCH) or
    one store transaction (default STORE_BATCH); `concurrency` devices' requests are in
    flight at once. The first Ctrl-C or SIGTERM stops reading (what was read is still
    delivered), a second stops waiting.

    Returns the finished run: its `tally`, `stop_reason`, `interrupted`, `error` (an
    input unreadable part way). Raises UsageError for an input or dead-letter file that
    cannot be opened or a store that cannot be; RemoteError (NoServer) when `to` does
    not answer."""
    from patientkit.inputs import check_paths
    from patientkit.workflows.signals import stop_requests

    check_paths(paths)
    destination: ReadingsClient | StoreProcess
    if to is not None:
        from patientkit.client.readings import ReadingsClient

        destination = ReadingsClient(to)
        destination.ping()
        batch_size = batch_size or API_BATCH
        sink: StoreSink | ApiSink = ApiSink(destination, batch_size, concurrency)
        max_batch = min(batch_size * 32, API_MOST_BATCH)  # room to group many devices
    else:
        destination = StoreProcess(db)  # before the buffer's threads: it forks
        sink = StoreSink(destination)
        max_batch = batch_size or STORE_BATCH
    with Rejects(dead_letter, append=append, inputs=paths) as rejects:
        run = Replay(
            sink,
            rejects,
            max_batch=max_batch,
            flush_interval=flush_interval,
            speed=speed,
            on_invalid=on_invalid,
            on_progress=on_progress,
        )
        with stop_requests(run.stop, run.abandon):
            try:
                run.run(paths)
            finally:  # a second Ctrl-C stops waiting for the store or the API
                if isinstance(destination, StoreProcess):
                    destination.close(30.0, hurry=lambda: run.abandoned)
                else:
                    destination.close()
                if isinstance(sink, ApiSink):
                    sink.close(wait=not run.abandoned)
    return run

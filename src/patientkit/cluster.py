"""Aggregate an export on a Dask `distributed` cluster (SPEC.md "Scale-out").

`aggregate_on_cluster(scheduler, server, export_id, retry, events)` is
`aggregate.aggregate_export` with the downloads counted on the workers of a Dask
scheduler instead of local processes. The client (this process) reads the export's plan
from the export server (`aggregate.plan_jobs`: download ids and the rows their metadata
says), submits one task per download and merges the partial `Counts` the tasks return.
A task (`count_attempt`) runs on a worker, streams its download from the export server
itself through the same counter as the local path (`ExportClient.count_download`:
rows checked against the metadata) and returns its counts, or raises.

The guarantees are the local ones:

- A failed attempt (transport error, 5xx, a stream cut short, fewer rows than the
  metadata) raises `AttemptFailed` in the task; the client waits the backoff and submits
  the download again from the start, as a new task, up to `retry.attempts` attempts.
- A task lost with its worker is re-run by Dask (the scheduler's allowed failures); if
  Dask gives up (`KilledWorker`) that is one failed attempt. One attempt of a download
  is in flight at a time, and a download's counts are merged once, from the attempt
  that returned them.
- Nothing is returned unless every download was counted; a download that still fails
  raises `DeliveryError` (exit 1), a malformed row its `InputError` (exit 1).
- An interrupt (KeyboardInterrupt in the waiting thread) cancels every future; a running
  task sees its cancellation at its next chunk (1 MB) and stops. Then it propagates.
- Progress: tasks log `[download_id, run, rows, bytes, worker]` events on a topic of this run
  (every PROGRESS_EVERY bytes or PROGRESS_SECONDS seconds); `events.on_progress` hears
  them in the calling thread. What attempts that did not deliver the counts reported is
  taken back, so the rows shown end equal to the rows counted.

Errors that are the cluster's, each one line and exit 2 (`RemoteError`/`UsageError`):
the `dask` extra missing, a scheduler address that is not one, a scheduler that cannot be
reached within `timeout` seconds, no worker within `timeout` seconds, workers whose
patientkit, distributed or Python version differs from the client's, and workers that
cannot connect to the export server (the URL and the worker are named).

The workers use their own environment for the export server: `PATIENTKIT_TOKEN` and
`PATIENTKIT_CA_CERT` must be set where `dask worker` runs (tokens never travel in tasks).
"""

from __future__ import annotations

import contextlib
import heapq
import importlib.metadata
import logging
import platform
import queue
import time
import uuid
import warnings
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any

import httpx

from patientkit.client.exports import ExportClient
from patientkit.client.http import (
    DEFAULT_RETRY,
    certificate_problem,
    describe,
    describe_connect,
    untrusted,
)
from patientkit.core.counting import Counts
from patientkit.core.retry import RetryableError, RetryPolicy
from patientkit.errors import DeliveryError, PatientkitError, RemoteError, UsageError
from patientkit.workflows.aggregate import AggregateHooks, Job, plan_jobs

if TYPE_CHECKING:
    from distributed import Client, Future

INSTALL = "pip install 'patientkit[dask]'"
TIMEOUT = 10.0  # seconds: for the scheduler to answer, and for its first worker
PROGRESS_EVERY = 4 << 20  # bytes between progress events from a task
PROGRESS_SECONDS = 0.5  # and at most this long between them
SCHEMES = ("tcp", "tls", "ws", "wss", "ucx", "inproc")


class AttemptFailed(Exception):
    """In a task: an attempt worth repeating failed. Plain args, so that it pickles."""

    def __init__(
        self, reason: str, retry_after: float | None, worker: str, run: str, unreachable: bool
    ) -> None:
        super().__init__(reason, retry_after, worker, run, unreachable)
        self.reason, self.retry_after, self.worker = reason, retry_after, worker
        self.run, self.unreachable = run, unreachable


class Cancelled(Exception):
    """In a task: the client cancelled it (Ctrl-C); the download stops at once."""


@dataclass(frozen=True)
class Attempt:
    """What a task returns: its download's counts, bytes read and which run it was."""

    download_id: str
    run: str
    counts: Counts
    nbytes: int


def distributed_module() -> ModuleType:
    """`distributed`, or a UsageError (exit 2) that says how to install it."""
    try:
        import distributed
    except ImportError:
        raise UsageError(
            f"--scheduler needs Dask's distributed, which is not installed: {INSTALL}"
        ) from None
    return distributed


def count_attempt(job: Job, topic: str) -> Attempt:
    """In a Dask task: one attempt at counting `job`'s download, from the start.

    Returns an Attempt; raises AttemptFailed (another attempt may succeed), a PatientkitError
    (it would not: a malformed row, more rows than the metadata says, a 404, an untrusted
    certificate; it arrives at the client as itself) or Cancelled. Progress goes to the
    client as events on `topic`."""
    from distributed import get_worker

    worker = get_worker()
    address = worker.address
    key = worker.get_current_task()
    run = uuid.uuid4().hex
    pending = [0, 0]  # rows, bytes not yet reported
    total = [0]
    last = [time.monotonic()]

    def report() -> None:
        if pending[0] or pending[1]:
            worker.log_event(topic, [job.download_id, run, pending[0], pending[1], address])
            pending[0] = pending[1] = 0
        last[0] = time.monotonic()

    def on_chunk(rows: int, nbytes: int) -> None:
        pending[0] += rows
        pending[1] += nbytes
        total[0] += nbytes
        task = worker.state.tasks.get(key)
        if task is None or task.state in ("cancelled", "released", "forgotten"):
            raise Cancelled(key)
        if pending[1] >= PROGRESS_EVERY or time.monotonic() - last[0] >= PROGRESS_SECONDS:
            report()

    def failed(
        reason: str, retry_after: float | None = None, unreachable: bool = False
    ) -> AttemptFailed:
        return AttemptFailed(reason, retry_after, address, run, unreachable)

    try:
        with ExportClient(job.server, first_contact=False) as client:
            counts = client.count_download(job.export_id, job.download_id, job.rows, on_chunk)
    except httpx.ConnectError as exc:
        problem = certificate_problem(exc)
        if problem is not None:  # fails the same way every time: never retried
            raise untrusted(job.server, problem) from None
        raise failed(describe_connect(exc), unreachable=True) from None
    except httpx.TransportError as exc:
        raise failed(describe(exc)) from None
    except RetryableError as exc:
        raise failed(exc.reason, exc.retry_after) from None
    finally:
        report()
    return Attempt(job.download_id, run, counts, total[0])


def aggregate_on_cluster(
    scheduler: str,
    server: str,
    export_id: str,
    retry: RetryPolicy = DEFAULT_RETRY,
    events: AggregateHooks | None = None,
    timeout: float = TIMEOUT,
) -> Counts:
    """Count every download of an export on the Dask cluster at `scheduler`
    (`tcp://HOST:PORT`); the exact total, or an exception (see the module's docstring).
    `timeout` (seconds) bounds the wait for the scheduler and for a first worker."""
    events = events or AggregateHooks()
    distributed = distributed_module()
    client = connect(distributed, scheduler, timeout)
    try:
        wait_for_workers(client, scheduler, timeout)
        check_versions(client, scheduler)
        jobs = plan_jobs(server, export_id, retry, events)
        return _Run(client, distributed, server, retry, events).count(jobs)
    finally:
        with contextlib.suppress(Exception):
            client.close(timeout=2)


def connect(distributed: ModuleType, scheduler: str, timeout: float) -> Client:
    """A client of the scheduler, or one line: not an address, or not answering."""
    scheme, _, rest = scheduler.partition("://")
    if not rest or scheme not in SCHEMES or ":" not in rest:
        raise UsageError(
            f"--scheduler {scheduler!r} is not a Dask scheduler address "
            "(expected tcp://HOST:PORT, as `dask scheduler` prints)"
        )
    if scheme in ("tcp", "tls", "ws", "wss"):  # over TCP: a refused connect is said at once
        _refused(scheduler, rest, timeout)
    logging.getLogger("distributed").setLevel(logging.CRITICAL)  # our one line instead
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Dask's version warning: check_versions says it
            client: Client = distributed.Client(scheduler, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError):
        raise RemoteError(
            f"cannot connect to the Dask scheduler {scheduler} (no answer within "
            f"{timeout:g}s): is it running? Start one with `dask scheduler`"
        ) from None
    return client


def _refused(scheduler: str, rest: str, timeout: float) -> None:
    """RemoteError at once when nothing listens at the scheduler's address (a refused
    connection), as every command says of a server that is not running (SPEC.md,
    Command-line surface), rather than after Dask has retried for `timeout` seconds and
    calling it no answer. Anything else is left to Dask's own connect."""
    import socket

    host, _, port = rest.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=min(timeout, 5)).close()
    except ConnectionRefusedError:
        raise RemoteError(
            f"cannot connect to the Dask scheduler {scheduler} (connection refused): is it "
            "running? Start one with `dask scheduler`"
        ) from None
    except (OSError, ValueError):
        pass


def wait_for_workers(client: Client, scheduler: str, timeout: float) -> None:
    """Return once the scheduler has a worker; after `timeout` seconds, one line."""
    try:
        client.wait_for_workers(1, timeout=timeout)
    except (TimeoutError, OSError):
        raise RemoteError(
            f"the Dask scheduler {scheduler} has no workers (waited {timeout:g}s): start "
            f"some with `dask worker {scheduler}`"
        ) from None


def _versions() -> dict[str, str]:
    """The versions that must match between client and workers (run on both: on a
    worker by `Client.run`, which fails there if patientkit is not installed)."""
    return {
        "patientkit": importlib.metadata.version("patientkit"),
        "distributed": importlib.metadata.version("distributed"),
        "python": ".".join(platform.python_version_tuple()[:2]),
    }


def check_versions(client: Client, scheduler: str) -> None:
    """One line if a worker's patientkit, distributed or Python differs from ours."""
    ours = _versions()
    found = client.run(_versions, on_error="return")
    wrong = []
    for worker, theirs in sorted(found.items()):
        if not isinstance(theirs, dict):
            wrong.append(f"{worker} cannot run patientkit ({_first_line(theirs)})")
            continue
        differ = [f"{k} {theirs[k]} (here {ours[k]})" for k in ours if theirs.get(k) != ours[k]]
        if differ:
            wrong.append(f"{worker} has {', '.join(differ)}")
    if wrong:
        more = f" and {len(wrong) - 1} more" if len(wrong) > 1 else ""
        raise RemoteError(
            f"version mismatch on the Dask cluster {scheduler}: worker {wrong[0]}{more}; "
            "install the same versions on every worker "
            f"(pip install 'patientkit[dask]=={ours['patientkit']}')"
        )


def _first_line(exc: object) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


@dataclass
class _Download:
    job: Job
    attempt: int = 0
    future: Future | None = None
    runs: dict[str, list[int]] = field(default_factory=dict)  # run → rows, bytes shown
    done: bool = False


class _Run:
    """One aggregation on the cluster: submits, resubmits, merges, reports."""

    def __init__(
        self,
        client: Client,
        distributed: ModuleType,
        server: str,
        retry: RetryPolicy,
        events: AggregateHooks,
    ) -> None:
        self.client, self.distributed, self.server = client, distributed, server
        self.retry, self.events = retry, events
        self.token = uuid.uuid4().hex[:12]
        self.topic = f"patientkit-progress-{self.token}"
        self.inbox: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.ended: set[str] = set()  # runs whose further progress events are stale
        self.downloads: dict[str, _Download] = {}
        self.by_key: dict[Any, _Download] = {}  # the attempt in flight, by its task key
        self.due: list[tuple[float, str]] = []  # (monotonic time, download id) to resubmit

    def count(self, jobs: list[Job]) -> Counts:
        total = Counts()
        if not jobs:
            return total
        self.downloads = {job.download_id: _Download(job) for job in jobs}
        self.client.subscribe_topic(
            self.topic, lambda event: self.inbox.put(("progress", event[1]))
        )
        try:
            for download in self.downloads.values():
                self._submit(download)
            left = len(jobs)
            while left:
                wait = max(0.0, self.due[0][0] - time.monotonic()) if self.due else 1.0
                try:
                    kind, item = self.inbox.get(timeout=min(wait, 1.0))
                except queue.Empty:
                    self._resubmit_due()
                    continue
                if kind == "progress":
                    self._progress(item)
                elif self._finished(item, total):
                    left -= 1
                self._resubmit_due()
        except BaseException:
            self._cancel()
            raise
        finally:
            with contextlib.suppress(Exception):
                self.client.unsubscribe_topic(self.topic)
        return total

    def _submit(self, download: _Download) -> None:
        download.attempt += 1
        job = download.job
        future = self.client.submit(
            count_attempt,
            job,
            self.topic,
            key=f"patientkit-count-{self.token}-{job.download_id}-{download.attempt}",
            pure=False,
        )
        download.future = future
        self.by_key[future.key] = download
        future.add_done_callback(lambda f: self.inbox.put(("done", f)))

    def _resubmit_due(self) -> None:
        now = time.monotonic()
        while self.due and self.due[0][0] <= now:
            _, download_id = heapq.heappop(self.due)
            self._submit(self.downloads[download_id])

    def _progress(self, message: Any) -> None:
        download_id, run, rows, nbytes, _worker = message
        download = self.downloads.get(download_id)
        if download is None or download.done or run in self.ended:
            return
        shown = download.runs.setdefault(run, [0, 0])
        shown[0] += rows
        shown[1] += nbytes
        if self.events.on_progress is not None:
            self.events.on_progress(rows, nbytes)

    def _take_back(self, download: _Download, rows: int = 0, nbytes: int = 0) -> None:
        """Show `rows`, `nbytes` for the download instead of what its runs reported."""
        shown_rows = sum(r for r, _ in download.runs.values())
        shown_bytes = sum(b for _, b in download.runs.values())
        self.ended.update(download.runs)
        download.runs.clear()
        if self.events.on_progress is not None and (rows, nbytes) != (shown_rows, shown_bytes):
            self.events.on_progress(rows - shown_rows, nbytes - shown_bytes)

    def _finished(self, future: Future, total: Counts) -> bool:
        """Handle a future that ended: True when its download is counted."""
        download = self.by_key.pop(future.key, None)
        if download is None or download.done:
            return False  # not one of ours in flight (cannot happen)
        job = download.job
        if future.status == "finished":
            attempt: Attempt = future.result()
            self.ended.add(attempt.run)
            self._take_back(download, attempt.counts.rows, attempt.nbytes)
            download.done = True
            total.merge(attempt.counts)
            if self.events.on_done is not None:
                self.events.on_done(job.download_id, attempt.counts.rows)
            return True
        if future.status == "cancelled":
            raise DeliveryError(
                f"download {job.download_id}: the Dask scheduler cancelled its task "
                "(scheduler restarted or connection lost)"
            )
        exc = future.exception()
        if isinstance(exc, AttemptFailed):
            self.ended.add(exc.run)
            self._retry_or_fail(download, exc.reason, exc.retry_after, exc)
            return False
        if isinstance(exc, self.distributed.KilledWorker):
            reason = "its worker died while counting it, more than Dask allows"
            self._retry_or_fail(download, reason, None, None)
            return False
        if isinstance(exc, PatientkitError):  # would fail again; it pickles whole (errors.py)
            raise exc
        raise DeliveryError(
            f"download {job.download_id}: its task failed on the cluster: "
            f"{type(exc).__name__}: {_first_line(exc)}"
        )

    def _retry_or_fail(
        self,
        download: _Download,
        reason: str,
        retry_after: float | None,
        exc: AttemptFailed | None,
    ) -> None:
        self._take_back(download)
        job = download.job
        if download.attempt >= self.retry.attempts:
            if exc is not None and exc.unreachable:
                raise RemoteError(
                    f"worker {exc.worker} cannot reach the export server {self.server} "
                    f"({reason}, {download.attempt} attempts): --server must be a URL "
                    "that the Dask workers can reach"
                )
            raise DeliveryError(
                f"download {job.download_id}: {reason} (after {download.attempt} attempts)"
            )
        delay = self.retry.delay(download.attempt - 1, retry_after=retry_after)
        if self.events.on_retry is not None:
            where = f" on worker {exc.worker}" if exc is not None else ""
            self.events.on_retry(
                f"download {job.download_id}", download.attempt, reason + where, delay
            )
        heapq.heappush(self.due, (time.monotonic() + delay, job.download_id))

    def _cancel(self) -> None:
        """Cancel every future still out (Ctrl-C or a failure): nothing more counted."""
        futures = [d.future for d in self.downloads.values() if d.future is not None]
        with contextlib.suppress(Exception):
            self.client.cancel(futures, force=True)

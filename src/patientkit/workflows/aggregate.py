"""Aggregate an export over HTTP: every download streamed, counted and checked, on
`concurrency` worker processes, merged into one exact total or nothing at all.

A download is one job for a worker. A failed attempt (transport error, 5xx, a stream
cut short, fewer rows than its metadata says) throws away that attempt's counts and is
tried again from the start, with backoff, up to `retry.attempts` times. A download
that still fails, or holds a malformed row, fails the whole aggregation: partial totals
are never returned.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from patientkit.client.exports import ExportClient
from patientkit.client.http import DEFAULT_RETRY, transport_failure
from patientkit.core import workers
from patientkit.core.counting import Counts
from patientkit.core.retry import RetryableError, RetryPolicy, with_retries
from patientkit.errors import DeliveryError, PatientkitError

PROGRESS_EVERY = 4 << 20  # bytes between progress messages from a worker


@dataclass(frozen=True)
class Job:
    """One download to count in a worker: where it is, the rows its metadata promises, and
    how to retry it."""

    server: str
    export_id: str
    download_id: str
    rows: int
    retry: RetryPolicy


@dataclass
class DownloadCount:
    """What a worker made of one download: its counts, or the error (and exit code) that
    failed it."""

    download_id: str
    counts: Counts | None
    error: str | None = None
    exit_code: int = 1


# Messages from workers to the parent, as plain tuples:
#   ("progress", download_id, rows, bytes)          counted since the last message
#   ("retry", download_id, attempt, reason, delay, rows, bytes)   an attempt failed;
#                                                   rows/bytes of it are taken back
@dataclass
class AggregateHooks:
    """What the caller wants to hear about; every hook is optional."""

    on_start: Callable[[int, int], None] | None = None  # downloads, rows expected
    on_progress: Callable[[int, int], None] | None = None  # rows, bytes
    on_retry: Callable[[str, int, str, float], None] | None = None  # what, attempt, why, wait
    on_done: Callable[[str, int], None] | None = None  # download id, rows


def count_download(job: Job) -> DownloadCount:
    """In a worker: count one download, retrying failed attempts from the start."""
    taken = {"rows": 0, "bytes": 0}  # of the current attempt, reported as progress
    pending = {"rows": 0, "bytes": 0}

    def on_chunk(rows: int, nbytes: int) -> None:
        taken["rows"] += rows
        taken["bytes"] += nbytes
        pending["rows"] += rows
        pending["bytes"] += nbytes
        if pending["bytes"] >= PROGRESS_EVERY:
            flush()

    def flush() -> None:
        if pending["bytes"] or pending["rows"]:
            workers.send(("progress", job.download_id, pending["rows"], pending["bytes"]))
            pending["rows"] = pending["bytes"] = 0

    def on_retry(attempt: int, reason: str, delay: float) -> None:
        flush()
        workers.send(
            ("retry", job.download_id, attempt, reason, delay, taken["rows"], taken["bytes"])
        )
        taken["rows"] = taken["bytes"] = 0

    def attempt() -> Counts:
        return client.count_download(job.export_id, job.download_id, job.rows, on_chunk)

    with ExportClient(job.server, first_contact=False) as client:  # the parent's answered
        try:
            counts = with_retries(attempt, job.retry, on_retry, transient=transport_failure)
        except RetryableError as exc:
            flush()
            return DownloadCount(job.download_id, None, error=f"download {job.download_id}: {exc}")
        except PatientkitError as exc:
            flush()
            return DownloadCount(job.download_id, None, error=str(exc), exit_code=exc.exit_code)
    flush()
    return DownloadCount(job.download_id, counts)


def aggregate_export(
    server: str,
    export_id: str,
    concurrency: int,
    retry: RetryPolicy = DEFAULT_RETRY,
    events: AggregateHooks | None = None,
) -> Counts:
    """Count every download of an export; the exact total, or an exception."""
    events = events or AggregateHooks()
    jobs = plan_jobs(server, export_id, retry, events)
    total = Counts()
    if not jobs:
        return total

    def on_message(message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "progress" and events.on_progress is not None:
            events.on_progress(message[2], message[3])
        elif kind == "retry":
            _, download_id, attempt, reason, delay, rows, nbytes = message
            if events.on_progress is not None:
                events.on_progress(-rows, -nbytes)
            if events.on_retry is not None:
                events.on_retry(f"download {download_id}", attempt, reason, delay)

    with workers.WorkerPool(max(1, min(concurrency, len(jobs))), on_message) as pool:
        for outcome in pool.imap_unordered(count_download, jobs):
            if outcome.counts is None:
                error = DeliveryError(outcome.error or "download failed")
                error.exit_code = outcome.exit_code
                raise error
            total.merge(outcome.counts)
            if events.on_done is not None:
                events.on_done(outcome.download_id, outcome.counts.rows)
    return total


def plan_jobs(server: str, export_id: str, retry: RetryPolicy, events: AggregateHooks) -> list[Job]:
    """One Job per download of the export, with the rows its metadata says (the local
    pool's plan and `patientkit.cluster`'s); `events.on_start` hears their number and
    rows. Raises RemoteError (exit 2) for an export or download the server lacks."""

    def note_retry(what: str) -> Callable[[int, str, float], None]:
        def hook(attempt: int, reason: str, delay: float) -> None:
            if events.on_retry is not None:
                events.on_retry(what, attempt, reason, delay)

        return hook

    with ExportClient(server, retry) as client:
        download_ids = client.download_ids(export_id, note_retry(f"export {export_id}"))
        jobs = [
            Job(
                server,
                export_id,
                download_id,
                client.download(
                    export_id, download_id, note_retry(f"metadata of download {download_id}")
                )["rows"],
                retry,
            )
            for download_id in download_ids
        ]
    if events.on_start is not None:
        events.on_start(len(jobs), sum(job.rows for job in jobs))
    return jobs

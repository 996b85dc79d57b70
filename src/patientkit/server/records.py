"""The test records API, on the store: exactly SPEC.md's rules, messages and codes.

    POST /tests              200 {"status": "success", "test_id": …} | 400 | 409 | 413
    POST /tests/batch        200 {"results": [verdicts], "created", "duplicates", "invalid"}
                             | 400 {"error": "Invalid JSON"} | 413
    GET  /tests?clinic_id=C  200 [records, each with created_at], streamed | 400

Validation is `core.validation.record_problem`, written by hand and shared with the CLI.

A POST that carries its own `X-Request-ID` is stored idempotently: the record and the
answer go into the store in one transaction (`Store.add_records_once`), so a client that
lost the answer (a dropped connection, `serve --chaos`) and retries with the same id gets
the original answer again — 200, not 409 — and can count exactly what it created. A
request without the header gets a fresh id that nobody can repeat, so its answer is not
kept.

A batch (`POST /tests/batch`, see `batch`) is NDJSON or a JSON array of up to
`MAX_BATCH` records, each judged by the same `record_problem` as a single POST and
answered with the same message; its valid records are stored in one transaction, and
with its own `X-Request-ID` its whole answer is kept with them (`Store.add_batch_once`),
so a repeated batch gets its original answer.

Writes go through one writer thread (`RecordWriter`), a group commit: it takes every POST
waiting and answers them all in one transaction, each as if it came alone, in order. One
connection writes, so the server's threads never queue on SQLite's write lock (whose
busy handler sleeps in steps of milliseconds), and under load one commit serves many
requests. Other processes writing the same file still take turns through the lock.

Logs: one JSON line per request (the middleware), plus one per record decision here, all
with the request id. They name `test_id` and `clinic_id` — identifiers that systems
issue, needed to trace a record from a log line to the store — and never the health data
(`patient_id`, `test_type`, `result`) nor the body, nor a query string value (SPEC.md:
a listing's `clinic_id` is not logged). Identifiers are cut to
`MAX_LOGGED_ID` characters so that a hostile body cannot flood the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from itertools import islice
from typing import Any, NamedTuple

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from patientkit.core import validation
from patientkit.core.model import RECORD_FIELDS, RecordAnswer
from patientkit.core.store import Store
from patientkit.inputs import Item, array_items, breaks_array, ndjson_items
from patientkit.server import metrics
from patientkit.server.bodies import NotJson, TooLarge, read_body, read_json
from patientkit.server.logs import log
from patientkit.server.middleware import REQUEST_ID
from patientkit.server.stores import Stores

CONFLICT = "Conflict: test_id exists"
PAGE = 500  # records read from the store per step of a streamed list
GROUP = 500  # most POSTs answered by one transaction
STORE_UNAVAILABLE = "The store is unavailable; retry later."
MAX_LOGGED_ID = 100
MAX_BATCH = 10_000  # records in one POST /tests/batch
TOO_MANY = f"Too many records: a batch holds at most {MAX_BATCH}."
NDJSON = "application/x-ndjson"


def error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _dumps(document: object) -> str:
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"))


def _id(value: str) -> str:
    return value if len(value) <= MAX_LOGGED_ID else value[:MAX_LOGGED_ID] + "…"


Pending = tuple[dict[str, str], str | None, asyncio.Future[RecordAnswer]]
Work = Callable[[Store], Any]


class Job(NamedTuple):
    """A batch's work: run alone, in a transaction of its own."""

    work: Work
    future: asyncio.Future[Any]


class RecordWriter:
    """The one thread that writes records for the server: a group commit of single
    POSTs, and batches, each in a transaction of its own, on that thread's store of
    `stores` (its own SQLite connection; the process's PostgreSQL pool)."""

    def __init__(self, stores: Stores) -> None:
        self.stores = stores
        self._lock = threading.Lock()
        self._waiting = threading.Condition(self._lock)
        self._queue: list[Pending | Job] = []
        self._thread: threading.Thread | None = None

    async def add(self, record: dict[str, str], request_id: str | None) -> RecordAnswer:
        """The answer to one POST, once the transaction that stored it has committed."""
        future: asyncio.Future[RecordAnswer] = asyncio.get_running_loop().create_future()
        self._put((record, request_id, future))
        return await future

    async def run(self, work: Work) -> Any:
        """work(store)'s result, run on the writer's connection between group commits
        (work makes its own transaction); its exception is raised here."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._put(Job(work, future))
        return await future

    def _put(self, entry: Pending | Job) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="patientkit-records-writer", daemon=True
                )
                self._thread.start()
            self._queue.append(entry)
            if len(self._queue) == 1:
                self._waiting.notify()

    def _run(self) -> None:
        store = self.stores.get()
        while True:
            with self._lock:
                while not self._queue:
                    self._waiting.wait()
                first = self._queue[0]
                if isinstance(first, Job):  # a batch: alone
                    job: Job | None = first
                    self._queue = self._queue[1:]
                else:
                    job = None
                    size = 1
                    while size < min(GROUP, len(self._queue)) and not isinstance(
                        self._queue[size], Job
                    ):
                        size += 1
                    batch: list[Pending] = self._queue[:size]  # type: ignore[assignment]
                    self._queue = self._queue[size:]
            if job is not None:
                _call_in_loop(job.future, _settle_job, job.future, _attempt(job.work, store))
                continue
            try:
                answers = store.add_records_once(
                    [(record, request_id) for record, request_id, _ in batch], _answer
                )
                outcome: list[RecordAnswer] | BaseException = answers
            except Exception as exc:  # nothing of the batch was stored: it rolled back
                log("store failed", logging.ERROR, error=type(exc).__name__, records=len(batch))
                outcome = exc
            loops: dict[asyncio.AbstractEventLoop, list[int]] = {}
            for index, (_, _, future) in enumerate(batch):
                loops.setdefault(future.get_loop(), []).append(index)
            for indices in loops.values():  # one loop, but for tests' clients
                _call_in_loop(batch[indices[0]][2], _settle, batch, outcome, indices)


def _call_in_loop(future: asyncio.Future[Any], call: Callable[..., None], *args: Any) -> None:
    """call(*args) in the event loop of `future`, unless that loop has closed (nobody
    waits for the answer any more)."""
    with contextlib.suppress(RuntimeError):
        future.get_loop().call_soon_threadsafe(call, *args)


class _Failed:
    """A job's exception, carried to the event loop."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc


def _attempt(work: Work, store: Store) -> Any:
    try:
        return work(store)
    except Exception as exc:  # nothing of the batch was stored: it rolled back
        log("store failed", logging.ERROR, error=type(exc).__name__)
        return _Failed(exc)


def _settle_job(future: asyncio.Future[Any], outcome: Any) -> None:
    if future.done():
        return  # the client went away
    if isinstance(outcome, _Failed):
        future.set_exception(outcome.exc)
    else:
        future.set_result(outcome)


def _settle(
    batch: Sequence[Pending], outcome: list[RecordAnswer] | BaseException, indices: list[int]
) -> None:
    for index in indices:
        future = batch[index][2]
        if future.done():
            continue  # the client went away
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome[index])


def _answer(record: dict[str, str], created: bool) -> RecordAnswer:
    """The answer to a POST of the record, kept with its request id."""
    if created:
        return RecordAnswer(200, _dumps({"status": "success", "test_id": record["test_id"]}))
    return RecordAnswer(409, _dumps({"error": CONFLICT}))


def routes(stores: Stores, max_body: int, bulk: bool = True) -> list[Route]:
    """The records API's routes; without `bulk`, no /tests/batch (a POST there is 404,
    as on the original records server: for testing clients' fallback)."""
    writer = RecordWriter(stores)

    async def submit(request: Request) -> Response:
        request_id = request.scope["state"]["request_id"]
        try:
            body = await read_json(request, max_body)
        except TooLarge as exc:
            log("record refused", request_id=request_id, reason="body too large")
            return error(str(exc), 413)
        except NotJson as exc:  # answered as SPEC's "Invalid JSON"; the log says why
            reason = f"{validation.INVALID_JSON}: {exc}"
            log("record invalid", request_id=request_id, reason=reason)
            return error(validation.INVALID_JSON, 400)
        problem = validation.record_problem(body)
        if problem is not None:
            log("record invalid", request_id=request_id, reason=problem)
            return error(problem, 400)
        record = {field: body[field] for field in RECORD_FIELDS}
        test_id = record["test_id"]
        own_id = request.headers.get(REQUEST_ID) == request_id  # the client's: remember it
        try:
            given = await writer.add(record, request_id if own_id else None)
        except Exception:
            return error(STORE_UNAVAILABLE, 503)
        metrics.count(
            request, "records_created" if given.status == 200 else "records_duplicates", 1
        )
        log(
            "record stored" if given.status == 200 else "record duplicate",
            request_id=request_id,
            test_id=_id(test_id),
            clinic_id=_id(record["clinic_id"]),
            status=given.status,
        )
        return Response(given.body, status_code=given.status, media_type="application/json")

    async def list_records(request: Request) -> Response:
        request_id = request.scope["state"]["request_id"]
        clinic_id = request.query_params.get("clinic_id")
        if clinic_id is None or not clinic_id.strip():
            log("records not listed", request_id=request_id, reason=validation.CLINIC_REQUIRED)
            return error(validation.CLINIC_REQUIRED, 400)
        return StreamingResponse(
            _listing(stores, clinic_id, request_id), media_type="application/json"
        )

    async def submit_batch(request: Request) -> Response:
        request_id = request.scope["state"]["request_id"]
        try:
            body = await read_body(request, max_body)
        except TooLarge as exc:
            log("batch refused", request_id=request_id, reason="body too large")
            return error(str(exc), 413)
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        verdicts = await run_in_threadpool(batch_verdicts, body, kind)
        if verdicts == TOO_MANY:
            log("batch refused", request_id=request_id, reason=TOO_MANY)
            return error(TOO_MANY, 413)
        if isinstance(verdicts, str):  # answered as SPEC's "Invalid JSON"; the log says why
            reason = f"{validation.INVALID_JSON}: {verdicts}"
            log("batch invalid", request_id=request_id, reason=reason)
            return error(validation.INVALID_JSON, 400)
        own_id = request.headers.get(REQUEST_ID) == request_id
        records = [verdict for verdict in verdicts if isinstance(verdict, dict)]

        def work(store: Store) -> tuple[str, bool]:
            return store.add_batch_once(
                records,
                request_id if own_id else None,
                lambda created: _batch_answer(verdicts, created),
            )

        try:
            answer, repeated = await writer.run(work)
        except Exception:
            return error(STORE_UNAVAILABLE, 503)
        if not repeated:
            counts = json.loads(answer)
            metrics.count(request, "records_created", counts["created"])
            metrics.count(request, "records_duplicates", counts["duplicates"])
        log(
            "batch repeated" if repeated else "batch stored",
            request_id=request_id,
            records=len(verdicts),
        )
        return Response(answer, media_type="application/json")

    return [
        Route("/tests/batch", submit_batch, methods=["POST"]),
        Route("/tests", submit, methods=["POST"]),
        Route("/tests", list_records, methods=["GET"]),
    ][0 if bulk else 1 :]


async def _listing(stores: Stores, clinic_id: str, request_id: str) -> AsyncIterator[bytes]:
    """The JSON array of a clinic's records, a page at a time: each page is read in a
    worker thread on that thread's own connection, and no transaction stays open while
    the client reads."""
    after: tuple[str, str] | None = None
    count = 0
    while True:
        page = await run_in_threadpool(_page, stores, clinic_id, after)
        if page:
            text = ",".join(_dumps(record) for record in page)
            yield (("[" if count == 0 else ",") + text).encode()
            count += len(page)
        if len(page) < PAGE:
            break
        after = (page[-1]["created_at"], page[-1]["test_id"])
    yield b"]" if count else b"[]"
    log("records listed", request_id=request_id, count=count)  # no query string value


def _page(stores: Stores, clinic_id: str, after: tuple[str, str] | None) -> list[dict[str, str]]:
    """One page of the listing, on this worker thread's own connection."""
    return stores.get().records_page(clinic_id, after, PAGE)


# --- batches ---------------------------------------------------------------------------

Verdict = dict[str, str] | tuple[str | None, str]  # a valid record, or (test_id, error)


def batch_items(body: bytes, kind: str) -> list[Item] | str:
    """The records of a batch body, in order (each an Item: a value, or why it is not
    JSON), or the reason to refuse the whole body: TOO_MANY past MAX_BATCH records, else
    a reason for "Invalid JSON" (it is neither NDJSON nor a JSON array).

    `kind` is the media type: application/x-ndjson is NDJSON, one record a non-blank line
    (a line that is not JSON is one invalid record); application/json must be a JSON
    array; anything else is an array when it starts with `[`, else NDJSON. An array
    whose structure is broken (not closed, no comma, data after it) is refused whole,
    since its records cannot be told apart; an element that cannot be taken (a number
    too long, nesting too deep, a lone surrogate escape) is one invalid record."""
    start = body.lstrip(b"\xef\xbb\xbf \t\r\n")
    is_array = kind == "application/json" or (kind != NDJSON and start[:1] == b"[")
    if is_array:
        items = list(islice(array_items(io.BytesIO(body), "body"), MAX_BATCH + 1))
        if items and breaks_array(items[-1].error):
            return items[-1].error or validation.INVALID_JSON
    else:
        if not start:
            return "the body holds no record"
        items = list(islice(ndjson_items(io.BytesIO(body), "body"), MAX_BATCH + 1))
    if len(items) > MAX_BATCH:
        return TOO_MANY
    return items


def batch_verdicts(body: bytes, kind: str) -> list[Verdict] | str:
    """Each record of the body (`batch_items`) judged as a single POST would be: the
    record's five fields when valid, else (its test_id if it has a string one, else None;
    the single POST's message). Or the reason to refuse the body (see batch_items)."""
    items = batch_items(body, kind)
    if isinstance(items, str):
        return items
    verdicts: list[Verdict] = []
    for item in items:
        value = item.value
        problem = validation.INVALID_JSON if item.error else validation.record_problem(value)
        if problem is None:
            verdicts.append({field: value[field] for field in RECORD_FIELDS})
        else:
            test_id = value.get("test_id") if isinstance(value, dict) else None
            verdicts.append((test_id if isinstance(test_id, str) else None, problem))
    return verdicts


def _batch_answer(verdicts: Sequence[Verdict], created: Sequence[bool]) -> str:
    """The batch's answer: each verdict in order, the valid records' from `created`."""
    results: list[dict[str, object]] = []
    made = iter(created)
    counts = {"created": 0, "duplicates": 0, "invalid": 0}
    for verdict in verdicts:
        if isinstance(verdict, dict):
            if next(made):
                results.append({"test_id": verdict["test_id"], "status": 200})
                counts["created"] += 1
            else:
                results.append({"test_id": verdict["test_id"], "status": 409, "error": CONFLICT})
                counts["duplicates"] += 1
        else:
            results.append({"test_id": verdict[0], "status": 400, "error": verdict[1]})
            counts["invalid"] += 1
    return _dumps({"results": results, **counts})

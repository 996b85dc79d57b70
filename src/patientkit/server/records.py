"""The test records API, on the store: exactly SPEC.md's rules, messages and codes.

    POST /tests              200 {"status": "success", "test_id": …} | 400 | 409 | 413
    GET  /tests?clinic_id=C  200 [records, each with created_at], streamed | 400

Validation is `core.validation.record_problem`, written by hand and shared with the CLI.

A POST that carries its own `X-Request-ID` is stored idempotently: the record and the
answer go into the store in one transaction (`Store.add_records_once`), so a client that
lost the answer (a dropped connection, `serve --chaos`) and retries with the same id gets
the original answer again — 200, not 409 — and can count exactly what it created. A
request without the header gets a fresh id that nobody can repeat, so its answer is not
kept.

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
import json
import logging
import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from patientkit.core import validation
from patientkit.core.storage import RECORD_FIELDS, RecordAnswer, Store
from patientkit.server.bodies import NotJson, TooLarge, read_json
from patientkit.server.logs import log
from patientkit.server.middleware import REQUEST_ID
from patientkit.server.stores import Stores

CONFLICT = "Conflict: test_id exists"
PAGE = 500  # records read from the store per step of a streamed list
GROUP = 500  # most POSTs answered by one transaction
STORE_UNAVAILABLE = "The store is unavailable; retry later."
MAX_LOGGED_ID = 100


def error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _dumps(document: object) -> str:
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"))


def _id(value: str) -> str:
    return value if len(value) <= MAX_LOGGED_ID else value[:MAX_LOGGED_ID] + "…"


Pending = tuple[dict[str, str], str | None, asyncio.Future[RecordAnswer]]


class RecordWriter:
    """The one thread that writes records for the server: a group commit."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._waiting = threading.Condition(self._lock)
        self._queue: list[Pending] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    async def add(self, record: dict[str, str], request_id: str | None) -> RecordAnswer:
        """The answer to one POST, once the transaction that stored it has committed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[RecordAnswer] = loop.create_future()
        with self._lock:
            if self._thread is None:
                self._loop = loop
                self._thread = threading.Thread(
                    target=self._run, name="patientkit-records-writer", daemon=True
                )
                self._thread.start()
            self._queue.append((record, request_id, future))
            if len(self._queue) == 1:
                self._waiting.notify()
        return await future

    def _run(self) -> None:
        store = Store(self.path)
        while True:
            with self._lock:
                while not self._queue:
                    self._waiting.wait()
                batch, self._queue = self._queue[:GROUP], self._queue[GROUP:]
            try:
                answers = store.add_records_once(
                    [(record, request_id) for record, request_id, _ in batch], _answer
                )
                outcome: list[RecordAnswer] | BaseException = answers
            except Exception as exc:  # nothing of the batch was stored: it rolled back
                log("store failed", logging.ERROR, error=type(exc).__name__, records=len(batch))
                outcome = exc
            assert self._loop is not None
            self._loop.call_soon_threadsafe(_settle, batch, outcome)


def _settle(batch: Sequence[Pending], outcome: list[RecordAnswer] | BaseException) -> None:
    for index, (_, _, future) in enumerate(batch):
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


def routes(stores: Stores, max_body: int) -> list[Route]:
    writer = RecordWriter(stores.path)

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

    return [
        Route("/tests", submit, methods=["POST"]),
        Route("/tests", list_records, methods=["GET"]),
    ]


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

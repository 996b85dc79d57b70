"""The test records API, on the store: exactly SPEC.md's rules, messages and codes.

    POST /tests              200 {"status": "success", "test_id": …} | 400 | 409 | 413
    GET  /tests?clinic_id=C  200 [records, each with created_at], streamed | 400

Validation is `core.validation.record_problem`, written by hand and shared with the CLI.

A POST that carries its own `X-Request-ID` is stored idempotently: the record and the
answer go into the store in one transaction (`Store.add_record_once`), so a client that
lost the answer (a dropped connection, `serve --chaos`) and retries with the same id gets
the original answer again — 200, not 409 — and can count exactly what it created. A
request without the header gets a fresh id that nobody can repeat, so its answer is not
kept.

Logs: one JSON line per request (the middleware), plus one per record decision here, all
with the request id. They name `test_id` and `clinic_id` — identifiers that systems
issue, needed to trace a record from a log line to the store — and never the health data
(`patient_id`, `test_type`, `result`) nor the body. Identifiers are cut to
`MAX_LOGGED_ID` characters so that a hostile body cannot flood the log.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from patientkit.core import validation
from patientkit.core.storage import RECORD_FIELDS, RecordAnswer
from patientkit.server.bodies import NotJson, TooLarge, read_json
from patientkit.server.logs import log
from patientkit.server.middleware import REQUEST_ID
from patientkit.server.stores import Stores

CONFLICT = "Conflict: test_id exists"
PAGE = 500  # records read from the store per step of a streamed list
MAX_LOGGED_ID = 100


def error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _dumps(document: object) -> str:
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"))


def answer_for(test_id: str, created: bool) -> RecordAnswer:
    if created:
        return RecordAnswer(200, _dumps({"status": "success", "test_id": test_id}))
    return RecordAnswer(409, _dumps({"error": CONFLICT}))


def _id(value: str) -> str:
    return value if len(value) <= MAX_LOGGED_ID else value[:MAX_LOGGED_ID] + "…"


def routes(stores: Stores, max_body: int) -> list[Route]:
    async def submit(request: Request) -> Response:
        request_id = request.scope["state"]["request_id"]
        try:
            body = await read_json(request, max_body)
        except TooLarge:
            log("record refused", request_id=request_id, reason="body too large")
            return error(f"Request body is larger than {max_body} bytes.", 413)
        except NotJson:
            body = None  # answered as SPEC's "Invalid JSON", like any non-object
        problem = validation.record_problem(body)
        if problem is not None:
            log("record invalid", request_id=request_id, reason=problem)
            return error(problem, 400)
        record = {field: body[field] for field in RECORD_FIELDS}
        test_id = record["test_id"]
        if request.headers.get(REQUEST_ID) == request_id:  # the client's own id: keep the answer
            given = await run_in_threadpool(
                lambda: stores.get().add_record_once(
                    record, request_id, lambda created: answer_for(test_id, created)
                )
            )
        else:
            created = await run_in_threadpool(lambda: stores.get().add_records([record])[0])
            given = answer_for(test_id, created)
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
        page = await run_in_threadpool(
            lambda after=after: stores.get().records_page(clinic_id, after, PAGE)
        )
        if page:
            text = ",".join(_dumps(record) for record in page)
            yield (("[" if count == 0 else ",") + text).encode()
            count += len(page)
        if len(page) < PAGE:
            break
        after = (page[-1]["created_at"], page[-1]["test_id"])
    yield b"]" if count else b"[]"
    log("records listed", request_id=request_id, clinic_id=_id(clinic_id), count=count)

"""ASGI middleware: correlation ids with one log line per request, and chaos."""

from __future__ import annotations

import json
import logging
import random
import time
import uuid
from collections.abc import Callable, Sequence

from starlette.requests import ClientDisconnect
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from patientkit.server.logs import log
from patientkit.server.metrics import route_template

REQUEST_ID = "x-request-id"
_REQUEST_ID = REQUEST_ID.encode()  # as ASGI headers name it
MAX_REQUEST_ID = 200


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


class RequestLog:
    """Gives each request a correlation id (the incoming X-Request-ID, else a new UUID),
    returns it in the X-Request-ID header, and logs one JSON line when the answer is
    done: the route's template (of `routes`), never the raw path nor the query string.
    Handlers find the id in scope["state"]["request_id"] for their own log lines.
    `observe(method, route, status, seconds)`, if given, counts each request (metrics).

    A client that hangs up before its answer is complete (mid-download, mid-body) is no
    fault of the server: its line is a warning with `dropped` saying when it hung up,
    and whatever the app raised because of it (Starlette's ClientDisconnect, a failed
    write) ends there, without a traceback or a 500 for a request that cannot be
    answered. The server goes on serving."""

    def __init__(
        self,
        app: ASGIApp,
        routes: Sequence[BaseRoute] = (),
        observe: Callable[[str, str, int, float], None] | None = None,
    ) -> None:
        self.app, self.routes, self.observe = app, routes, observe
        # the router leaves the matched route's endpoint in the scope: its template at once
        self.templates: dict[object, str] = {
            route.endpoint: route.path for route in routes if isinstance(route, Route)
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = _header(scope, _REQUEST_ID)
        request_id = given if given and len(given) <= MAX_REQUEST_ID else str(uuid.uuid4())
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 0
        sent = 0
        complete = False  # the last part of the answer was handed to the server
        hung_up = False  # the client disconnected (the server told the app so)

        async def receive_watching() -> Message:
            nonlocal hung_up
            message = await receive()
            if message["type"] == "http.disconnect" and not complete:
                hung_up = True
            return message

        async def send_with_id(message: Message) -> None:
            nonlocal status, sent, complete
            if hung_up:
                return  # nobody to answer: not even the 500 of an error it caused
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [h for h in message.get("headers", []) if h[0] != _REQUEST_ID]
                headers.append((_REQUEST_ID, request_id.encode("latin-1")))
                message = {**message, "headers": headers}
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
                complete = not message.get("more_body", False)
            await send(message)

        outcome = "ok"
        try:
            await self.app(scope, receive_watching, send_with_id)
        except (ClientDisconnect, OSError):
            if not hung_up:
                outcome = "error"
                raise
        except Exception:
            outcome = "error"
            raise
        finally:
            dropped = None
            if hung_up:
                dropped = (
                    "the client disconnected mid-answer"
                    if status
                    else "the client disconnected before the answer (mid-request)"
                )
            route = self.templates.get(scope.get("endpoint")) or route_template(
                self.routes, scope
            )  # not routed: refused before (401), or no route (404)
            seconds = time.perf_counter() - started
            if self.observe is not None:
                self.observe(scope["method"], route, status, seconds)
            log(
                "request",
                logging.WARNING
                if outcome != "ok" or status >= 500 or dropped or scope["state"].get("chaos")
                else logging.INFO,
                request_id=request_id,
                method=scope["method"],
                route=route,
                status=status,
                bytes=sent,
                ms=round(seconds * 1000, 2),
                chaos=scope["state"].get("chaos"),
                **({"dropped": dropped} if dropped else {}),
            )


class Chaos:
    """Makes `rate` of the requests fail, for testing clients against a hostile network.

    Half of them are answered 503 without being processed. The other half are processed
    and then cut off: a streamed body after some bytes, any other answer after its headers
    (the change took effect, but the client never reads the answer)."""

    UNAFFECTED = frozenset({"/api/ping"})

    def __init__(self, app: ASGIApp, rate: float, seed: int | None = None) -> None:
        self.app, self.rate = app, rate
        self.random = random.Random(seed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["path"] in self.UNAFFECTED
            or self.random.random() >= self.rate
        ):
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        if self.random.random() < 0.5:
            state["chaos"] = "503"
            await _unavailable(send)
            return
        state["chaos"] = "cut"
        budget = self.random.randint(0, 4 << 20)  # bytes of a stream that get through

        async def cutting_send(message: Message) -> None:
            nonlocal budget
            if message["type"] != "http.response.body":
                await send(message)
                return
            if not message.get("more_body", False):
                raise ChaosCut  # a whole answer: never sent
            body = message.get("body", b"")
            if len(body) >= budget:
                await send({"type": "http.response.body", "body": body[:budget], "more_body": True})
                raise ChaosCut
            budget -= len(body)
            await send(message)

        try:
            await self.app(scope, receive, cutting_send)
        except* ChaosCut:
            pass  # uvicorn closes a connection whose answer is not complete


class ChaosCut(Exception):
    """Raised inside chaos to drop the connection without a complete answer (on purpose:
    no fault of the server, never logged as one)."""

    pass


async def _unavailable(send: Send) -> None:
    body = json.dumps({"detail": "Service unavailable (chaos)"}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", b"0"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})

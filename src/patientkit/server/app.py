"""The one Starlette application behind `patientkit serve`: all three APIs on one port,
with bearer-token authentication, metrics, the OpenAPI document, and errors (404, 405,
500) in each API's own JSON shape (SPEC.md "The server")."""

from __future__ import annotations

import logging
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp

from patientkit.server import exports, openapi, readings, records
from patientkit.server.auth import BearerAuth, error_body
from patientkit.server.bodies import MAX_BODY
from patientkit.server.logs import log
from patientkit.server.metrics import Metrics
from patientkit.server.middleware import Chaos, ChaosCut, RequestLog
from patientkit.server.stores import Stores


def ping(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def http_error(request: Request, exc: Exception) -> Response:
    """404 and 405 of the router (no such route, a method the route does not take) in the
    error shape of the API the path belongs to, with Starlette's words and headers."""
    assert isinstance(exc, HTTPException)
    return JSONResponse(
        error_body(request.url.path, exc.detail, exc.status_code),
        status_code=exc.status_code,
        headers=exc.headers,
    )


async def server_error(request: Request, exc: Exception) -> Response:
    """A fault of ours: 500 in the API's shape; the log says what (no request data). A
    client that hung up is no fault (RequestLog logs it; nobody gets this answer), nor is
    an answer chaos cuts on purpose (ChaosCut: RequestLog names it)."""
    if not isinstance(exc, ClientDisconnect | OSError | ChaosCut):
        log(
            "server error",
            logging.ERROR,
            request_id=request.scope.get("state", {}).get("request_id"),
            error=type(exc).__name__,
        )
    return JSONResponse(error_body(request.url.path, "Internal server error", 500), 500)


def build_app(
    db: str | Path,
    exports_dir: Path | None = None,
    chaos: float = 0.0,
    chaos_seed: int | None = None,
    max_body: int = MAX_BODY,
    bulk: bool = True,
    tokens: list[str] | None = None,
    metrics: bool = True,
) -> ASGIApp:
    """The application; without `bulk` it has no `POST /tests/batch` (404 there, like the
    original records server), for testing clients that fall back to single POSTs. With
    `tokens`, every request but GET /api/ping needs one (see auth.BearerAuth); without
    `metrics`, no /metrics and nothing counted (for measuring what they cost). `db` is
    the store's target (a SQLite path or a PostgreSQL URL: `patientkit.stores`)."""
    stores = Stores(db)
    counters = Metrics() if metrics else None
    routes: list[BaseRoute] = [
        Route("/api/ping", ping),
        *exports.routes(exports.Catalog(exports_dir)),
        *readings.routes(stores, max_body),
        *records.routes(stores, max_body, bulk),
    ]
    if counters is not None:
        routes.append(Route("/metrics", counters.endpoint))
    routes.append(Route("/openapi.json", openapi.endpoint(bulk=bulk, metrics=metrics)))
    starlette = Starlette(
        routes=routes,
        exception_handlers={404: http_error, 405: http_error, Exception: server_error},
    )
    starlette.state.metrics = counters
    app: ASGIApp = starlette
    if chaos > 0:
        app = Chaos(app, chaos, chaos_seed)
    if tokens:
        app = BearerAuth(app, tokens)
    return RequestLog(app, routes, counters.observe if counters is not None else None)

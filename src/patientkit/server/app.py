"""The one Starlette application behind `patientkit serve`: all three APIs on one port."""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from patientkit.server import exports, readings, records
from patientkit.server.bodies import MAX_BODY
from patientkit.server.middleware import Chaos, RequestLog
from patientkit.server.stores import Stores


def ping(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def build_app(
    db: str | Path,
    exports_dir: Path | None = None,
    chaos: float = 0.0,
    chaos_seed: int | None = None,
    max_body: int = MAX_BODY,
    bulk: bool = True,
) -> ASGIApp:
    """The application; without `bulk` it has no `POST /tests/batch` (404 there, like the
    original records server), for testing clients that fall back to single POSTs. `db`
    is the store's target (a SQLite path or a PostgreSQL URL: `patientkit.stores`)."""
    stores = Stores(db)
    routes = [
        Route("/api/ping", ping),
        *exports.routes(exports.Catalog(exports_dir)),
        *readings.routes(stores, max_body),
        *records.routes(stores, max_body, bulk),
    ]
    app: ASGIApp = Starlette(routes=routes)
    if chaos > 0:
        app = Chaos(app, chaos, chaos_seed)
    return RequestLog(app)

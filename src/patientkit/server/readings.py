"""The device readings API, on the store: exactly SPEC.md's rules, messages and codes."""

from __future__ import annotations

from collections.abc import Callable

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from patientkit.core import validation
from patientkit.core.store import Store
from patientkit.server import metrics
from patientkit.server.bodies import NotJson, TooLarge, read_json
from patientkit.server.stores import Stores


def error(message: str, status: int) -> JSONResponse:
    """The error body of the readings API; both names of the code, for old and new clients."""
    return JSONResponse(
        {"status": "error", "error_message": message, "status_code": status, "error_code": status},
        status_code=status,
    )


def routes(stores: Stores, max_body: int) -> list[Route]:
    instants = validation.Instants()  # shared by requests: timestamps recur by the hour

    async def create(request: Request) -> Response:
        try:
            body = await read_json(request, max_body)
        except TooLarge as exc:
            return error(str(exc), 413)
        except NotJson:
            return error(validation.NOT_AN_OBJECT, 400)
        try:
            readings = validation.create_request(body, instants)
        except validation.Invalid as exc:
            return error(exc.message, 400)
        stored = await run_in_threadpool(lambda: stores.get().add_readings(readings))
        metrics.count(request, "readings_stored", stored)
        metrics.count(request, "readings_duplicates", len(readings) - stored)
        return JSONResponse({"status": "ok"}, status_code=201)

    def device_total(
        key: str, read: Callable[[Store, str], object]
    ) -> Callable[[Request], Response]:
        """A GET of one device's total: {key: read(store, device_id)}."""

        def answer(request: Request) -> Response:
            device_id = request.path_params["device_id"]
            if not validation.is_device_id(device_id):
                return error(validation.BAD_DEVICE_ID, 400)
            value = read(stores.get(), device_id)
            if value is None:
                return error(validation.NOT_FOUND, 404)
            return JSONResponse({key: value})

        return answer

    return [
        Route("/api/device-readings/create", create, methods=["POST"]),
        Route(
            "/api/device-readings/{device_id}/latest-timestamp",
            device_total("timestamp", lambda store, device_id: store.latest_timestamp(device_id)),
        ),
        Route(
            "/api/device-readings/{device_id}/cumulative-count",
            device_total(
                "cumulative_count", lambda store, device_id: store.cumulative_count(device_id)
            ),
        ),
    ]

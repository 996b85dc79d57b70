"""`GET /metrics`: the server's counters in Prometheus text format (SPEC.md "The server",
Metrics), kept by prometheus-client.

    patientkit_http_requests_total{method,route,status}       requests answered
    patientkit_http_request_duration_seconds{method,route}    histogram, seconds
    patientkit_readings_stored_total                          readings new to the store
    patientkit_readings_duplicates_ignored_total              readings already there
    patientkit_records_created_total                          records created
    patientkit_records_duplicates_refused_total               records refused as 409
    patientkit_export_bytes_served_total                      CSV bytes sent (cut or whole)
    patientkit_export_rows_served_total                       rows of downloads sent whole

`route` is the route's template (`/api/device-readings/{device_id}/cumulative-count`),
never the raw path: ids would make a series per device. A path no route matches is
`unmatched`; a method the API does not use is `other`. A record answered again from its
request id (a retry) counts as the verdict it repeats.

With `serve --workers N` each worker is a process of its own: prometheus-client's
multiprocess mode (`PROMETHEUS_MULTIPROC_DIR`, set by `serve` before the workers start)
keeps each worker's values in a file there, and any worker's `/metrics` sums them all.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match
from starlette.types import Scope

from patientkit.server.worker import MULTIPROCESS_VARIABLE

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def route_template(routes: Sequence[BaseRoute], scope: Scope) -> str:
    """The template of the route that `scope`'s path belongs to (whatever its method),
    or `unmatched`."""
    for route in routes:
        match, _ = route.matches(scope)
        if match is not Match.NONE:
            return str(getattr(route, "path", UNMATCHED))
    return UNMATCHED


class Metrics:
    """The server's metrics, in a registry of their own (so that each app built in one
    process, as tests do, counts alone)."""

    def __init__(self) -> None:
        disable_created_metrics()  # no `_created` twin of every series: half the text
        self.registry = CollectorRegistry(auto_describe=True)
        self.multiprocess_dir = os.environ.get(MULTIPROCESS_VARIABLE) or None
        self._series: dict[tuple[str, str, int], tuple[Any, Any]] = {}

        def counter(name: str, help: str, labels: Iterable[str] = ()) -> Counter:
            return Counter(name, help, list(labels), registry=self.registry)

        self.requests = counter(
            "patientkit_http_requests", "HTTP requests answered.", ("method", "route", "status")
        )
        self.duration = Histogram(
            "patientkit_http_request_duration_seconds",
            "Time from a request's arrival to the end of its answer, in seconds.",
            ["method", "route"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.readings_stored = counter(
            "patientkit_readings_stored", "Device readings stored (new to the store)."
        )
        self.readings_duplicates = counter(
            "patientkit_readings_duplicates_ignored",
            "Device readings ignored as duplicates of stored ones.",
        )
        self.records_created = counter("patientkit_records_created", "Test records created.")
        self.records_duplicates = counter(
            "patientkit_records_duplicates_refused",
            "Test records refused because their test_id was stored (409).",
        )
        self.export_bytes = counter(
            "patientkit_export_bytes_served", "Bytes of export CSV sent to clients."
        )
        self.export_rows = counter(
            "patientkit_export_rows_served", "Rows of export downloads sent whole."
        )

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one answered request (status 0: none was sent). The labelled series are
        kept here once made (a few dozen: templates, methods, statuses), since making the
        label lookup each time costs more than counting."""
        method = method if method in METHODS else "other"
        key = (method, route, status)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = (
                self.requests.labels(method, route, str(status)),
                self.duration.labels(method, route),
            )
        series[0].inc()
        series[1].observe(seconds)

    def exposition(self) -> bytes:
        """Every metric in Prometheus text format: this process's, or with multiprocess
        mode, every worker's summed."""
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self.multiprocess_dir)
        return generate_latest(registry)

    async def endpoint(self, request: Request) -> Response:
        from starlette.concurrency import run_in_threadpool

        body = await run_in_threadpool(self.exposition)
        return Response(body, media_type=CONTENT_TYPE_LATEST)


def of(request: Request) -> Metrics | None:
    """The app's metrics (None when the server runs without them)."""
    return getattr(request.app.state, "metrics", None)


def count(request: Request, name: str, amount: int) -> None:
    """Add `amount` to the app's counter `name` (an attribute of Metrics), if any."""
    metrics = of(request)
    if metrics is not None and amount:
        getattr(metrics, name).inc(amount)


def counted_stream(request: Request, chunks: Iterator[bytes], rows: Any) -> Iterator[bytes]:
    """`chunks`, adding their bytes to export_bytes as they go, and `rows()` (the
    download's row count) to export_rows once the last chunk is sent."""
    metrics = of(request)
    if metrics is None:
        yield from chunks
        return
    for chunk in chunks:
        yield chunk
        metrics.export_bytes.inc(len(chunk))
    metrics.export_rows.inc(rows())

"""The app factory of a `serve --workers N` process, in a module of its own: uvicorn's
supervisor pickles a reference to it for each worker it spawns, so the supervisor imports
this module alone, not the app's (Starlette, the three APIs, prometheus-client: some
0.06 CPU-s of its start-up, and memory it never uses). Each worker imports the app."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from starlette.types import ASGIApp

# prometheus-client's multiprocess mode: the folder of the workers' values (set by
# `serve` before the workers start; see server/metrics.py)
MULTIPROCESS_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


def worker_app(settings: dict[str, object], log_format: str, quiet: bool, level: str) -> ASGIApp:
    """The app of one `serve --workers N` process (uvicorn calls it there, as a factory):
    its logs configured as the parent's, then build_app(**settings)."""
    from patientkit.server import logs
    from patientkit.server.app import build_app

    logs.configure(log_format, quiet=quiet, level=level, chaos=bool(settings.get("chaos")))
    return build_app(**settings)  # type: ignore[arg-type]

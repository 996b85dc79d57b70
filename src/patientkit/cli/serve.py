"""`patientkit serve`: the export, readings and records APIs on one port."""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from patientkit.cli import output
from patientkit.cli.options import DEFAULT_DB, Db
from patientkit.errors import UsageError

if TYPE_CHECKING:
    import socket
    from collections.abc import Callable

EXAMPLES = """
Examples:

  patientkit export generate demo exports && patientkit serve --exports exports

  patientkit serve --port 0 --chaos 0.3    # a free port; 30% of requests fail
"""


class LogFormat(StrEnum):
    """`serve --log-format`: one JSON object a line, or text for people."""

    text = "text"
    json = "json"


def serve(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port; 0 picks a free one (printed).")] = 8000,
    exports: Annotated[
        Path | None, typer.Option(help="Folder of exports: EXPORT_ID/DOWNLOAD_UUID.csv[.gz].")
    ] = None,
    chaos: Annotated[
        float, typer.Option(help="Fraction of requests to fail (0 to 1), for testing clients.")
    ] = 0.0,
    chaos_seed: Annotated[
        int | None, typer.Option(help="Seed of the chaos, to repeat a run exactly.")
    ] = None,
    db: Db = DEFAULT_DB,
    max_body: Annotated[
        int, typer.Option(min=1, help="Largest request body in bytes; larger is answered 413.")
    ] = 16 << 20,
    bulk: Annotated[
        bool,
        typer.Option(
            "--bulk/--no-bulk",
            hidden=True,
            help="Serve POST /tests/batch (--no-bulk: 404 there, like the original server).",
        ),
    ] = True,
    log_format: Annotated[
        LogFormat | None,
        typer.Option(
            help="text (a line for people) or json (a JSON object a line, for machines). "
            "Default: text on a terminal, json otherwise.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Serve the export, readings and records APIs on one port (127.0.0.1 by default).

    On a terminal, one line says where it serves and what, and each request is a short
    text line; otherwise (or with --log-format json) the logs are JSON lines on stderr,
    one a request. -q keeps warnings, errors and the line that says where it serves.
    """
    if not 0.0 <= chaos <= 1.0:
        raise UsageError(f"--chaos must be between 0 and 1, not {chaos}")
    if exports is not None and not exports.is_dir():
        raise UsageError(f"--exports {exports}: no such folder")
    import logging  # here, not at the top: every command imports this module at start-up

    import uvicorn

    from patientkit.server import logs
    from patientkit.server.app import build_app
    from patientkit.server.middleware import QuietCuts
    from patientkit.stores import shown

    if log_format is None:
        log_format = LogFormat.text if sys.stderr.isatty() else LogFormat.json
    logs.configure(log_format.value, quiet=output.is_quiet())
    if chaos:
        logging.getLogger("uvicorn.error").addFilter(QuietCuts())
    sock = _bind(host, port)
    app = build_app(db, exports, chaos=chaos, chaos_seed=chaos_seed, max_body=max_body, bulk=bulk)
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off")
    url = f"http://{host}:{sock.getsockname()[1]}"
    where = str(exports) if exports else None

    def ready() -> None:
        logs.log("serving", url=url, db=shown(db), exports=where, chaos=chaos)

    _server_class(ready)(config).run(sockets=[sock])
    logs.log("stopped", url=url)


def _server_class(on_ready: Callable[[], None]) -> type:
    """uvicorn's Server, except that: `on_ready` runs once it accepts requests (and
    catches Ctrl-C and SIGTERM, so that one right after the `serving` line stops it
    cleanly); and a Ctrl-C or SIGTERM that stopped it gracefully is not raised again
    afterwards (uvicorn re-raises it, which ended us with `error: interrupted` and 130):
    a server asked to stop that stops cleanly exits 0."""
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, telling `on_ready` once it listens."""

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if not self.should_exit:
                on_ready()

        async def _serve(self, sockets: list[socket.socket] | None = None) -> None:
            await super()._serve(sockets)
            self._captured_signals.clear()

    return Server


serve.__doc__ = f"{serve.__doc__}\n{EXAMPLES}"


def _bind(host: str, port: int) -> socket.socket:
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(
        family, socket.SOCK_STREAM, socket.IPPROTO_TCP
    )  # so asyncio sets TCP_NODELAY
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    return sock

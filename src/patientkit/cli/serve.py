"""`patientkit serve`: the export, readings and records APIs on one port."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from patientkit.cli.options import DEFAULT_DB, Db
from patientkit.errors import UsageError

if TYPE_CHECKING:
    import socket

EXAMPLES = """
Examples:

  patientkit export generate demo exports && patientkit serve --exports exports

  patientkit serve --port 0 --chaos 0.3    # a free port; 30% of requests fail
"""


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
) -> None:
    """Serve the export, readings and records APIs on one port (127.0.0.1 by default).

    On a terminal, one line says where it serves and each request is a text line;
    otherwise (or with --log-format json) the logs are JSON lines on stderr. -q keeps only
    warnings and errors.
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

    logs.configure()
    if chaos:
        logging.getLogger("uvicorn.error").addFilter(QuietCuts())
    sock = _bind(host, port)
    app = build_app(db, exports, chaos=chaos, chaos_seed=chaos_seed, max_body=max_body)
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off")
    url = f"http://{host}:{sock.getsockname()[1]}"
    logs.log("serving", url=url, db=str(db), exports=str(exports) if exports else None, chaos=chaos)
    uvicorn.Server(config).run(sockets=[sock])


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

"""`patientkit serve`: the export, readings and records APIs on one port."""

from __future__ import annotations

import inspect
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


class LogLevel(StrEnum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


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
    token_file: Annotated[
        Path | None,
        typer.Option(
            help="Accepted bearer tokens, one a line (# comments); must not be readable by "
            "others. Default: PATIENTKIT_TOKEN if set, else no authentication.",
            show_default=False,
        ),
    ] = None,
    insecure_no_auth: Annotated[
        bool,
        typer.Option(
            "--insecure-no-auth",
            help="Serve an address other than loopback without tokens (anyone who reaches "
            "it may read and write everything).",
        ),
    ] = False,
    tls_cert: Annotated[
        Path | None, typer.Option(help="TLS certificate (PEM): serve HTTPS.", show_default=False)
    ] = None,
    tls_key: Annotated[
        Path | None, typer.Option(help="TLS private key (PEM) of --tls-cert.", show_default=False)
    ] = None,
    workers: Annotated[
        int, typer.Option(min=1, help="Processes serving the one listening socket.")
    ] = 1,
    grace: Annotated[
        float,
        typer.Option(
            min=0, help="Seconds that requests in flight may take to finish on SIGTERM/Ctrl-C."
        ),
    ] = 10.0,
    log_format: Annotated[
        LogFormat | None,
        typer.Option(
            help="text (a line for people) or json (a JSON object a line, for machines). "
            "Default: text on a terminal, json otherwise.",
            show_default=False,
        ),
    ] = None,
    log_level: Annotated[
        LogLevel, typer.Option(help="Least level logged (-q: warning).")
    ] = LogLevel.info,
    metrics: Annotated[
        bool,
        typer.Option(
            "--metrics/--no-metrics",
            hidden=True,
            help="Serve GET /metrics and count (--no-metrics: to measure what they cost).",
        ),
    ] = True,
) -> None:
    """Serve the export, readings and records APIs on one port (127.0.0.1 by default).

    On a terminal, one line says where it serves and what, and each request is a short
    text line; otherwise (or with --log-format json) the logs are JSON lines on stderr,
    one a request. -q keeps warnings, errors and the line that says where it serves.

    With tokens (--token-file, or PATIENTKIT_TOKEN) every request but GET /api/ping needs
    `Authorization: Bearer TOKEN`; an address other than loopback is refused without them.
    SIGTERM or Ctrl-C stops accepting, lets requests in flight finish (--grace), exit 0.
    """
    if not 0.0 <= chaos <= 1.0:
        raise UsageError(f"--chaos must be between 0 and 1, not {chaos}")
    if exports is not None and not exports.is_dir():
        raise UsageError(f"--exports {exports}: no such folder")

    import uvicorn

    from patientkit.server import auth, logs
    from patientkit.stores import shown

    tokens = auth.load_tokens(token_file)
    if not tokens and not auth.is_loopback(host) and not insecure_no_auth:
        raise UsageError(
            f"refusing to serve {host} without authentication: give --token-file FILE or "
            "set PATIENTKIT_TOKEN (or --insecure-no-auth to let anyone who reaches it in)"
        )
    if (tls_cert is None) != (tls_key is None):
        raise UsageError("--tls-cert and --tls-key go together: give both or neither")
    if tls_cert is not None and tls_key is not None:
        _check_tls(tls_cert, tls_key)
    if log_format is None:
        log_format = LogFormat.text if sys.stderr.isatty() else LogFormat.json
    quiet = output.is_quiet()
    logs.configure(log_format.value, quiet=quiet, level=log_level.value, chaos=bool(chaos))
    sock = _bind(host, port)
    settings: dict[str, object] = {
        "db": db,
        "exports_dir": exports,
        "chaos": chaos,
        "chaos_seed": chaos_seed,
        "max_body": max_body,
        "bulk": bulk,
        "tokens": tokens,
        "metrics": metrics,
    }
    tls = {"ssl_certfile": str(tls_cert), "ssl_keyfile": str(tls_key)} if tls_cert else {}
    common: dict[str, object] = {
        "log_config": None,
        "access_log": False,
        "lifespan": "off",
        "timeout_graceful_shutdown": grace,
        **tls,
    }
    scheme = "https" if tls_cert else "http"
    url = f"{scheme}://{_url_host(host)}:{sock.getsockname()[1]}"
    where = str(exports) if exports else None

    def ready() -> None:
        logs.log(
            "serving",
            url=url,
            db=shown(db),
            exports=where,
            chaos=chaos,
            workers=workers,
            auth=bool(tokens),
        )

    if workers == 1:
        from patientkit.server.app import build_app  # not in a supervisor of workers

        app = build_app(**settings)  # type: ignore[arg-type]
        config = uvicorn.Config(app, **common)  # type: ignore[arg-type]
        _server_class(ready)(config).run(sockets=[sock])
    else:
        _serve_workers(settings, common, workers, sock, ready, log_format.value, quiet, log_level)
    logs.log("stopped", url=url)


def _serve_workers(
    settings: dict[str, object],
    common: dict[str, object],
    workers: int,
    sock: socket.socket,
    ready: Callable[[], None],
    log_format: str,
    quiet: bool,
    log_level: str,
) -> None:
    """N uvicorn worker processes on `sock`, each building its own app (worker_app), with
    prometheus-client in multiprocess mode (a folder of theirs, removed at the end)."""
    import functools
    import os
    import shutil
    import tempfile

    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from patientkit.server.worker import MULTIPROCESS_VARIABLE, worker_app
    from patientkit.stores import open_store

    open_store(settings["db"]).close()  # type: ignore[arg-type]  # create and migrate, here
    folder = tempfile.mkdtemp(prefix="patientkit-metrics-")
    os.environ[MULTIPROCESS_VARIABLE] = folder  # the workers inherit it
    factory = functools.partial(worker_app, settings, log_format, quiet, str(log_level))
    config = uvicorn.Config(factory, factory=True, workers=workers, **common)  # type: ignore[arg-type]

    class Supervisor(Multiprocess):
        def init_processes(self) -> None:
            super().init_processes()
            for process in self.processes:
                process.wait_until_ready(config.timeout_worker_healthcheck, self.should_exit)
            if not self.should_exit.is_set():
                ready()

        def terminate_all(self) -> None:
            """Stopping: close this process's copy of the listening socket first, so that
            once the workers close theirs a new client is refused at once. (Kept open, it
            let the kernel take connections no one would answer: a client hung until
            the workers ended, up to --grace, instead of being refused as with one.)"""
            for sock in self.sockets:
                sock.close()
            super().terminate_all()

    try:
        Supervisor(config, sockets=[sock]).run()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _check_tls(cert: Path, key: Path) -> None:
    """UsageError (exit 2, one line) unless cert and key load as a TLS server's."""
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if isinstance(exc, ssl.SSLError):
            reason = exc.reason or str(exc)
        raise UsageError(
            f"--tls-cert {cert} --tls-key {key}: cannot load them ({reason})"
        ) from None


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


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


serve.__doc__ = f"{inspect.cleandoc(serve.__doc__ or '')}\n{EXAMPLES}"


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

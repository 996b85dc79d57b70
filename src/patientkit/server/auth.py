"""Bearer-token authentication of `patientkit serve` (SPEC.md "The server", Authentication).

Tokens come from `--token-file FILE` (one a line; blank lines and `#` comments ignored;
a file that group or others may read or write is refused, as ssh refuses a private key)
or, without a file, from `PATIENTKIT_TOKEN`. With tokens, every request but
`GET /api/ping` must carry `Authorization: Bearer <token>`; any other is answered 401
with `WWW-Authenticate: Bearer` in the error shape of the API its path belongs to
(`api_of`, `error_body`). Tokens are compared with `hmac.compare_digest` against every
accepted token (no early exit: the time taken does not say which or how much matched),
and never logged: no log line of ours carries a header.
"""

from __future__ import annotations

import hmac
import json
import os
import stat
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from patientkit.errors import UsageError

TOKEN_VARIABLE = "PATIENTKIT_TOKEN"
NOT_AUTHENTICATED = "Not authenticated"
OPEN = frozenset({("GET", "/api/ping"), ("HEAD", "/api/ping")})
_AUTHORIZATION = b"authorization"


def read_token_file(path: Path) -> list[str]:
    """The tokens of a token file, in order. Raises UsageError (exit 2) for a file that
    cannot be read, that group or others may read or write (mode & 0o077; the fix is
    `chmod 600`), or that holds no token."""
    try:
        mode = path.stat().st_mode
        if mode & 0o077:
            raise UsageError(
                f"--token-file {path}: others may read it (mode {stat.S_IMODE(mode):04o}); "
                f"make it private with `chmod 600 {path}`"
            )
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"--token-file {path}: not UTF-8 text") from None
    except OSError as exc:
        raise UsageError(f"--token-file {path}: cannot read it ({exc.strerror})") from None
    tokens = [
        line.strip()
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    for number, token in enumerate(tokens, 1):
        if any(char.isspace() for char in token) or not token.isprintable():
            raise UsageError(
                f"--token-file {path}: token {number} holds a space or a control character"
            )
    if not tokens:
        raise UsageError(f"--token-file {path}: no token in it (one a line, # for comments)")
    return tokens


def load_tokens(token_file: Path | None, environ: dict[str, str] | None = None) -> list[str]:
    """The accepted tokens: the file's when given, else PATIENTKIT_TOKEN's (one token,
    surrounding space stripped), else none (authentication off). Raises UsageError as
    read_token_file does."""
    if token_file is not None:
        return read_token_file(token_file)
    token = (os.environ if environ is None else environ).get(TOKEN_VARIABLE, "").strip()
    return [token] if token else []


def is_loopback(host: str) -> bool:
    """Whether binding `host` only lets this machine in: `localhost`, 127.0.0.0/8, ::1."""
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


# --- the error shape of each API -------------------------------------------------------


def api_of(path: str) -> str:
    """Which API a path belongs to: "readings", "records" or "exports" (also anything
    else: /metrics, /openapi.json, unknown paths answer in the exports' `detail` shape)."""
    if path == "/api/ping" or path.startswith("/api/device-readings"):
        return "readings"
    if path == "/tests" or path.startswith("/tests/"):
        return "records"
    return "exports"


def error_body(path: str, message: str, status: int) -> dict[str, object]:
    """The error document of the API of `path` (SPEC.md): `{"detail": m}` for exports,
    `{"status": "error", "error_message": m, "status_code": s, "error_code": s}` for
    readings, `{"error": m}` for records."""
    api = api_of(path)
    if api == "readings":
        return {
            "status": "error",
            "error_message": message,
            "status_code": status,
            "error_code": status,
        }
    if api == "records":
        return {"error": message}
    return {"detail": message}


async def send_error(
    send: Send,
    path: str,
    message: str,
    status: int,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """Answer `status` with the error document of the API of `path`."""
    body = json.dumps(error_body(path, message, status)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BearerAuth:
    """ASGI middleware: lets through `GET /api/ping` and requests whose Authorization
    header is `Bearer <one of tokens>`; answers any other 401 with `WWW-Authenticate:
    Bearer` in its API's error shape. The body of a refused request is not read."""

    def __init__(self, app: ASGIApp, tokens: list[str]) -> None:
        if not tokens:
            raise ValueError("BearerAuth needs at least one token")
        self.app = app
        self.tokens = [f"Bearer {token}".encode() for token in tokens]

    def accepts(self, header: bytes | None) -> bool:
        """Whether the Authorization header's value carries an accepted token; the same
        comparisons whatever the header holds (every token, in constant time each)."""
        given = header or b""
        found = False
        for expected in self.tokens:
            found |= hmac.compare_digest(given, expected)
        return found

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (scope["method"], scope["path"]) in OPEN:
            await self.app(scope, receive, send)
            return
        header = None
        for key, value in scope.get("headers", []):
            if key == _AUTHORIZATION:
                header = value
                break
        if self.accepts(header):
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})["auth"] = "refused"
        await send_error(
            send, scope["path"], NOT_AUTHENTICATED, 401, [(b"www-authenticate", b"Bearer")]
        )

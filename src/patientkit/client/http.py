"""What every patientkit HTTP client shares: one httpx client setup, retry with backoff,
and one translation of transport failures into patientkit errors.

Retryable (`patientkit.core.retry`): transport errors (refused, reset, cut off
mid-answer, timeouts; `transport_failure`) and the statuses 408, 425, 429 and 5xx;
`Retry-After` is honoured, as seconds or as an HTTP-date. Everything else is final.

Except on first contact: a client whose very first connection is refused (or cannot be
made at all) raises `NoServer` at once, for every command alike: nothing is listening
there, and retrying for seconds would only hide the one thing to say (which URL, and
that `patientkit serve` starts one). Once a server has answered, a refused connection is
retried as before (a server restarting mid-run).
"""

from __future__ import annotations

import functools
import os
import ssl
from typing import Any, Self

import httpx

from patientkit import __version__
from patientkit.core.retry import RetryPolicy, parse_retry_after
from patientkit.errors import RemoteError, UsageError

RETRYABLE_STATUS = frozenset({408, 425, 429})
TIMEOUT = httpx.Timeout(connect=5.0, read=60.0, write=60.0, pool=60.0)


DEFAULT_RETRY = RetryPolicy(attempts=6, initial=0.1, maximum=5.0, retry_after_limit=60.0)
"""How our HTTP clients retry: 6 attempts, waits of at most 5 s, a Retry-After of at
most 60 s honoured."""


def is_retryable_status(status: int) -> bool:
    return status in RETRYABLE_STATUS or status >= 500


def retry_after(response: httpx.Response) -> float | None:
    """The answer's Retry-After in seconds (delta-seconds or HTTP-date), or None."""
    return parse_retry_after(response.headers.get("retry-after"))


def describe(exc: httpx.HTTPError) -> str:
    """A short reason for a transport failure, without URLs or secrets."""
    if isinstance(exc, httpx.ConnectError):
        return "connection refused or unreachable"
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out ({type(exc).__name__})"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "connection dropped mid-answer"
    return f"{type(exc).__name__}: {exc}".rstrip(": ")


def transport_failure(exc: BaseException) -> str | None:
    """For `with_retries(transient=...)`: a transport error (refused, reset, cut off,
    timed out) is worth another attempt; its short reason, or None for anything else —
    a certificate that does not verify included: it fails the same way every time."""
    if not isinstance(exc, httpx.TransportError) or certificate_problem(exc) is not None:
        return None
    return describe(exc)


class NoServer(RemoteError):
    """The first connection to a server failed: nothing listens at that URL (exit 2)."""


def no_server(server: str, exc: BaseException) -> NoServer:
    """The one message for a server not there on first contact, for every command."""
    url = server.rstrip("/")
    if _refused(exc):
        return NoServer(
            f"cannot connect to {url} (connection refused): is the server running? "
            "Start one with `patientkit serve`"
        )
    return NoServer(
        f"cannot connect to {url} ({describe_connect(exc)}): check the URL, or start a "
        "server with `patientkit serve`"
    )


def _refused(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def describe_connect(exc: BaseException) -> str:
    """The OS's reason a connection could not be made (`Name or service not known`)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror
        seen = seen.__cause__ or seen.__context__
    return "cannot connect"


CA_VARIABLE = "PATIENTKIT_CA_CERT"


@functools.cache
def default_context(cafile: str | None = None, capath: str | None = None) -> ssl.SSLContext:
    """What httpx verifies with by default (`verify=True`): the bundle that SSL_CERT_FILE
    or SSL_CERT_DIR names (`cafile`, `capath`), else certifi's. Made once a process for
    each: loading a bundle is 25-50 ms of CPU, and httpx loaded it again for every client
    and transport (each worker's, each records thread's, each of a run's clients), an
    http:// one too. One context serves any number of them (a forked worker inherits it)."""
    if cafile:
        return ssl.create_default_context(cafile=cafile)
    if capath:
        return ssl.create_default_context(capath=capath)
    import certifi

    return ssl.create_default_context(cafile=certifi.where())


class CertificateError(RemoteError):
    """The server's TLS certificate is not trusted (exit 2, never retried: it would fail
    the same way again)."""


def tls_verify(server: str) -> ssl.SSLContext:
    """What a client of `server` verifies TLS with: for an https:// URL with
    PATIENTKIT_CA_CERT set, a context trusting that CA bundle (instead of the system's);
    else httpx's default, made once a process (`default_context`). Raises UsageError for
    a bundle that cannot be loaded."""
    path = os.environ.get(CA_VARIABLE)
    if not path or not server.startswith("https://"):
        return default_context(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))
    try:
        return ssl.create_default_context(cafile=path)
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
        raise UsageError(
            f"{CA_VARIABLE} {path}: cannot load it as a CA bundle ({reason})"
        ) from None


def certificate_problem(exc: BaseException) -> str | None:
    """The verifier's reason when `exc` (or what caused it) is a failed TLS certificate
    check, else None."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen.verify_message or str(seen)
        seen = seen.__cause__ or seen.__context__
    return None


def untrusted(server: str, reason: str) -> CertificateError:
    """The one line for a server whose certificate does not verify."""
    return CertificateError(
        f"{server.rstrip('/')}: TLS certificate not trusted ({reason}); set {CA_VARIABLE} "
        "to the CA bundle that signed it"
    )


class NotAuthenticated(RemoteError):
    """The server refused our credentials (401 or 403): no bearer token, or one it does
    not accept (exit 2, never retried: every request would be refused alike)."""


TOKEN_VARIABLE = "PATIENTKIT_TOKEN"


def refused_credentials(server: str, status: int) -> NotAuthenticated | None:
    """The one line for an answer of 401 or 403 (our bearer token missing or refused), or
    None for any other status: every client raises it where it meets such an answer."""
    if status not in (401, 403):
        return None
    given = "was refused" if os.environ.get(TOKEN_VARIABLE) else "is not set"
    return NotAuthenticated(
        f"{server.rstrip('/')} answered {status}: it needs a bearer token and "
        f"{TOKEN_VARIABLE} {given}; set it to one of the server's tokens"
    )


def check_credentials(http: httpx.Client, server: str) -> None:
    """Before any work: one request that needs the server's bearer token when it has
    tokens (SPEC.md "The server": every route but GET /api/ping), so a missing or wrong
    PATIENTKIT_TOKEN is one line and exit 2 (NotAuthenticated) instead of every record
    refused. Any other answer passes (a server without /openapi.json answers 404)."""
    try:
        status = http.get("/openapi.json").status_code
    except httpx.TransportError:
        return  # the caller's own requests meet it, retried as theirs are
    error = refused_credentials(server, status)
    if error is not None:
        raise error


class FirstContact(httpx.BaseTransport):
    """Around a client's transport: until one request has had an answer, a connection
    that cannot be made raises NoServer (not retried); after that, errors pass as they
    are (retried by the callers). Timeouts are never turned into NoServer. A certificate
    that does not verify is CertificateError, on any request (never retried)."""

    def __init__(self, inner: httpx.BaseTransport, server: str) -> None:
        self.inner, self.server = inner, server
        self.contacted = False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        try:
            response = self.inner.handle_request(request)
        except httpx.ConnectError as exc:
            problem = certificate_problem(exc)
            if problem is not None:
                raise untrusted(self.server, problem) from None
            if self.contacted:
                raise
            raise no_server(self.server, exc) from None
        self.contacted = True
        return response

    def close(self) -> None:
        self.inner.close()


DEFAULT_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)


def make_client(
    server: str,
    limits: httpx.Limits = DEFAULT_LIMITS,
    first_contact: bool = True,
) -> httpx.Client:
    """An httpx client for our APIs: base URL, user agent, bearer token from the
    environment (PATIENTKIT_TOKEN, never printed), pooled keep-alive connections, TLS
    verified against PATIENTKIT_CA_CERT when set (`tls_verify`), else httpx's default.

    With `first_contact` (the default), a first connection that cannot be made raises
    NoServer at once (see FirstContact); pass False where the server has answered this
    run already (a worker process of a job the parent started). Raises RemoteError for
    a URL that is not http(s)."""
    headers = {"user-agent": f"patientkit/{__version__}"}
    token = os.environ.get("PATIENTKIT_TOKEN")
    if token:
        headers["authorization"] = f"Bearer {token}"
    if not server.startswith(("http://", "https://")):
        raise RemoteError(f"server URL must start with http:// or https://, not {server!r}")
    transport: httpx.BaseTransport = httpx.HTTPTransport(limits=limits, verify=tls_verify(server))
    if first_contact:
        transport = FirstContact(transport, server)
    return httpx.Client(
        base_url=server.rstrip("/"), headers=headers, timeout=TIMEOUT, transport=transport
    )


def json_body(response: httpx.Response, what: str) -> Any:
    """The JSON of an answer, or a RemoteError naming what was asked."""
    try:
        return response.json()
    except (ValueError, RecursionError):  # not JSON, a number too long, nesting too deep
        raise RemoteError(f"{what}: the server answered malformed JSON") from None


class ApiClient:
    """A client of one of our APIs: `self.http` (`make_client`) for `server`, closed by
    close() or at the end of a `with` block."""

    def __init__(self, server: str, first_contact: bool = True) -> None:
        self.server = server
        self.http = make_client(server, first_contact=first_contact)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

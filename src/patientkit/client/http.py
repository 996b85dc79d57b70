"""What every patientkit HTTP client shares: one httpx client setup, retry with backoff,
and one translation of transport failures into patientkit errors.

Retryable: transport errors (refused, reset, cut off mid-answer, timeouts) and the
statuses 408, 425, 429 and 5xx; `Retry-After` is honoured. Everything else is final.

Except on first contact: a client whose very first connection is refused (or cannot be
made at all) raises `NoServer` at once, for every command alike: nothing is listening
there, and retrying for seconds would only hide the one thing to say (which URL, and
that `patientkit serve` starts one). Once a server has answered, a refused connection is
retried as before (a server restarting mid-run).
"""

from __future__ import annotations

import os
import random
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Self, TypeVar

import httpx

from patientkit import __version__
from patientkit.errors import RemoteError, UsageError

T = TypeVar("T")

RETRYABLE_STATUS = frozenset({408, 425, 429})
TIMEOUT = httpx.Timeout(connect=5.0, read=60.0, write=60.0, pool=60.0)


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter: attempt n waits uniform(0, min(cap, base*2**n))."""

    attempts: int = 6
    base: float = 0.1
    cap: float = 5.0

    def delay(self, failures: int, retry_after: float | None = None) -> float:
        jittered = random.uniform(0, min(self.cap, self.base * 2 ** (failures - 1)))
        return max(jittered, min(retry_after, 60.0)) if retry_after is not None else jittered


DEFAULT_BACKOFF = Backoff()


class Retryable(Exception):
    """A failure worth another attempt."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason, self.retry_after = reason, retry_after


def is_retryable_status(status: int) -> bool:
    return status in RETRYABLE_STATUS or status >= 500


def retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


def describe(exc: httpx.HTTPError) -> str:
    """A short reason for a transport failure, without URLs or secrets."""
    if isinstance(exc, httpx.ConnectError):
        return "connection refused or unreachable"
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out ({type(exc).__name__})"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "connection dropped mid-answer"
    return f"{type(exc).__name__}: {exc}".rstrip(": ")


def with_retries(
    attempt: Callable[[], T],
    backoff: Backoff,
    on_retry: Callable[[int, str, float], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run attempt() until it succeeds; on Retryable or a transport error wait and retry.

    After the last attempt, raise the last failure as Retryable.
    """
    for failures in range(1, backoff.attempts + 1):
        try:
            return attempt()
        except (Retryable, httpx.TransportError) as exc:
            reason = exc.reason if isinstance(exc, Retryable) else describe(exc)
            if failures == backoff.attempts:
                raise Retryable(f"{reason} (after {failures} attempts)") from exc
            wait = backoff.delay(failures, getattr(exc, "retry_after", None))
            if on_retry is not None:
                on_retry(failures, reason, wait)
            sleep(wait)
    raise AssertionError("unreachable")


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


class CertificateError(RemoteError):
    """The server's TLS certificate is not trusted (exit 2, never retried: it would fail
    the same way again)."""


def tls_verify(server: str) -> ssl.SSLContext | bool:
    """What a client of `server` verifies TLS with: for an https:// URL with
    PATIENTKIT_CA_CERT set, a context trusting that CA bundle (instead of the system's);
    else True (httpx's default, the system store). Raises UsageError for a bundle that
    cannot be loaded."""
    path = os.environ.get(CA_VARIABLE)
    if not path or not server.startswith("https://"):
        return True
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
    verified against PATIENTKIT_CA_CERT when set (`tls_verify`).

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

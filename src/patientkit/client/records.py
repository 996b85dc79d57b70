"""Client of the test records API: submit records with safe retries, list a clinic.

`submit(record, request_id)` sends one POST /tests and retries it, with the same
`X-Request-ID`, on transport errors and 408/425/429/5xx. The server remembers the answer it
gave to each (request id, test_id), so a retry after a lost answer gets that answer again:
created stays created, and only a record that was already stored counts as a duplicate.

`submit_batch(records, request_id)` does the same for many records in one POST
/tests/batch (NDJSON): the server keeps a batch's whole answer with its request id, so a
retried batch gets its original verdicts. Each record's `Outcome` is the one a single
POST would have given it. A server without bulk answers 404 or 405 there: `has_bulk()`
asks once (an empty batch), and `submit_batch` raises `NoBulk`; 413 raises
`BatchTooLarge` (the caller sends halves).

The POSTs go straight to an httpx transport with only the headers the API needs, skipping
what `Client.post` runs per request (the cookie jar, auth and redirect machinery) and the
headers the server would then have to parse. Each thread that submits
has its own transport holding one keep-alive connection: N threads, N pooled connections,
and no pool lock for them to queue on (a shared pool's lock, taken twice per request,
turned into a convoy behind the GIL). With a proxy set in the environment the POSTs go
through the client instead, which honours it.
"""

from __future__ import annotations

import io
import json
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from patientkit.client.http import (
    DEFAULT_RETRY,
    certificate_problem,
    check_credentials,
    describe,
    is_retryable_status,
    make_client,
    refused_credentials,
    retry_after,
    tls_verify,
    transport_failure,
    untrusted,
)
from patientkit.core.retry import Retries, RetryableError, RetryPolicy, with_retries
from patientkit.errors import RemoteError

CREATED = "created"
DUPLICATE = "duplicate"
REJECTED = "rejected"
FAILED = "failed"
MAX_MESSAGE = 300  # characters of a server's answer quoted in a reason
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")

OnRetry = Callable[[int, str, float], None]
NDJSON = "application/x-ndjson"
NO_BULK = frozenset({404, 405})  # what a server without POST /tests/batch answers there


class NoBulk(Exception):
    """The server has no POST /tests/batch (it answered 404 or 405)."""


class BatchTooLarge(Exception):
    """The server refused a batch as too large (413); the message is its answer's."""


@dataclass(frozen=True)
class Outcome:
    """How one record ended: created, duplicate, rejected (reason) or failed (reason)."""

    kind: str
    reason: str = ""


CREATED_OUTCOME = Outcome(CREATED)
DUPLICATE_OUTCOME = Outcome(DUPLICATE)


class RecordsClient:
    """One pooled httpx client for up to `connections` requests at once, from any thread."""

    def __init__(
        self, server: str, connections: int = 1, retry: RetryPolicy = DEFAULT_RETRY
    ) -> None:
        self.server, self.retry = server.rstrip("/"), retry
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        self.http = make_client(server, limits=limits)
        self._verify = tls_verify(server)  # PATIENTKIT_CA_CERT, as make_client's
        self._local = threading.local()
        self._transports: list[httpx.HTTPTransport] = []
        self._transports_lock = threading.Lock()
        self.stop = threading.Event()  # set: no more retries (the caller gives up)
        self._url = self.http.base_url.join("tests")
        self._batch_url = self.http.base_url.join("tests/batch")
        self._headers = {
            name: value
            for name, value in self.http.headers.items()
            if name in ("user-agent", "authorization")
        }
        self._headers.update(
            {"host": self._url.netloc.decode("ascii"), "content-type": "application/json"}
        )
        self._timeout = {"timeout": self.http.timeout.as_dict()}
        proxied = any(
            os.environ.get(name) or os.environ.get(name.lower()) for name in PROXY_VARIABLES
        )
        self._post = self._post_through_client if proxied else self._post_to_transport

    def close(self) -> None:
        with self._transports_lock:
            for transport in self._transports:
                transport.close()
            self._transports.clear()
        self.http.close()

    def _transport(self) -> httpx.HTTPTransport:
        """This thread's own transport: one keep-alive connection."""
        transport = getattr(self._local, "transport", None)
        if transport is None:
            one = httpx.Limits(max_connections=1, max_keepalive_connections=1)
            transport = self._local.transport = httpx.HTTPTransport(limits=one, verify=self._verify)
            with self._transports_lock:
                self._transports.append(transport)
        return transport

    def __enter__(self) -> RecordsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ping(self) -> None:
        """One request, so that an unreachable server is a clear error before any work.
        Any HTTP answer will do: the server is there."""
        try:
            self.http.get("/api/ping")
        except httpx.TransportError as exc:
            raise RemoteError(f"cannot reach {self.server}: {describe(exc)}") from None
        check_credentials(self.http, self.server)

    def _post_to_transport(
        self, body: bytes, request_id: str, batch: bool = False
    ) -> httpx.Response:
        headers = {**self._headers, "x-request-id": request_id}
        if batch:
            headers["content-type"] = NDJSON
        request = httpx.Request(
            "POST",
            self._batch_url if batch else self._url,
            content=body,
            headers=headers,
            extensions=self._timeout,
        )
        try:
            response = self._transport().handle_request(request)
        except httpx.ConnectError as exc:
            problem = certificate_problem(exc)
            if problem is not None:
                raise untrusted(self.server, problem) from None
            raise
        try:
            response.read()
        finally:
            response.close()
        return response

    def _post_through_client(
        self, body: bytes, request_id: str, batch: bool = False
    ) -> httpx.Response:
        kind = NDJSON if batch else "application/json"
        headers = {"content-type": kind, "x-request-id": request_id}
        return self.http.post("/tests/batch" if batch else "/tests", content=body, headers=headers)

    def has_bulk(self, on_retry: OnRetry) -> bool:
        """Whether the server takes POST /tests/batch: an empty batch (it stores nothing)
        answered 404 or 405 says no; any other final answer says yes (a refusal such as
        401 then comes back for each batch, as it would for each record). Retried like a
        record; RemoteError if the server never answers."""

        def attempt() -> bool:
            response = self.http.post(
                "/tests/batch", content=b"[]", headers={"content-type": "application/json"}
            )
            if is_retryable_status(response.status_code):
                raise RetryableError(f"status {response.status_code}", retry_after(response))
            return response.status_code not in NO_BULK

        try:
            return with_retries(
                attempt, self.retry, on_retry, self._sleep, transient=transport_failure
            )
        except _GaveUp:
            raise RemoteError(f"{self.server}: interrupted while waiting to retry") from None
        except RetryableError as exc:
            raise RemoteError(f"{self.server}/tests/batch: {exc}") from None

    def submit_batch(
        self, records: list[dict[str, Any]], request_id: str, on_retry: OnRetry
    ) -> list[Outcome]:
        """Each record's outcome, in order, from one POST /tests/batch retried with the
        same request id on transport errors and 408/425/429/5xx (after the last attempt
        every record has failed). Raises NoBulk on 404/405, BatchTooLarge on 413 (with
        more than one record; one record alone is rejected with the server's message, as
        a single POST would be)."""
        body = "".join(
            [
                json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"
                for record in records
            ]
        ).encode()
        count = len(records)

        def attempt() -> list[Outcome]:
            response = self._post(body, request_id, True)
            status = response.status_code
            if 200 <= status < 300:
                return _verdicts(response, count)
            if status in NO_BULK:
                raise NoBulk(f"status {status}")
            if status == 413 and count > 1:
                raise BatchTooLarge(_message(response))
            if is_retryable_status(status):
                raise RetryableError(f"status {status}", retry_after(response))
            reason = f"rejected by the server ({status}): {_message(response)}"
            return [Outcome(REJECTED, reason)] * count

        try:
            return with_retries(
                attempt, self.retry, on_retry, self._sleep, transient=transport_failure
            )
        except _GaveUp:
            return [Outcome(FAILED, "failed: interrupted while waiting to retry")] * count
        except RetryableError as exc:
            failed = f"failed after {exc.attempts} attempts: {exc.reason}"
            return [Outcome(FAILED, failed)] * count

    def submit(self, record: dict[str, Any], request_id: str, on_retry: OnRetry) -> Outcome:
        body = json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode()

        def attempt() -> Outcome:
            response = self._post(body, request_id)
            status = response.status_code
            if 200 <= status < 300:
                return Outcome(CREATED)
            if status == 409:
                return Outcome(DUPLICATE)
            if is_retryable_status(status):
                raise RetryableError(f"status {status}", retry_after(response))
            return Outcome(REJECTED, f"rejected by the server ({status}): {_message(response)}")

        try:
            return with_retries(
                attempt, self.retry, on_retry, self._sleep, transient=transport_failure
            )
        except _GaveUp:
            return Outcome(FAILED, "failed: interrupted while waiting to retry")
        except RetryableError as exc:
            return Outcome(FAILED, f"failed after {exc.attempts} attempts: {exc.reason}")

    def _sleep(self, seconds: float) -> None:
        if self.stop.wait(seconds):
            raise _GaveUp

    def clinic_records(self, clinic_id: str, on_retry: OnRetry) -> Iterator[dict[str, Any]]:
        """Every record of a clinic, streamed from GET /tests?clinic_id=C and decoded
        element by element. An answer cut off part way is asked for again, and the
        records already given are skipped (the list is in a stable order: oldest first,
        and a record added meanwhile comes last)."""
        from patientkit.inputs import array_items

        given = 0
        retries = Retries(self.retry, on_retry, self._sleep, transient=transport_failure)
        while True:
            seen, before = 0, given
            try:
                with self.http.stream("GET", "/tests", params={"clinic_id": clinic_id}) as answer:
                    status = answer.status_code
                    if is_retryable_status(status):
                        raise RetryableError(f"status {status}", retry_after(answer))
                    if status != 200:
                        answer.read()
                        raise refused_credentials(self.server, status) or RemoteError(
                            f"GET {self.server}/tests: status {status}: {_message(answer)}"
                        )
                    stream = io.BufferedReader(_ResponseStream(answer.iter_bytes()))
                    for item in array_items(stream, f"{self.server}/tests"):
                        if item.error is not None:
                            raise RemoteError(f"GET {self.server}/tests: {item.error}")
                        if not isinstance(item.value, dict):
                            raise RemoteError(f"GET {self.server}/tests: a record is not an object")
                        seen += 1
                        if seen > given:
                            given += 1
                            yield item.value
                    return
            except Exception as exc:
                try:
                    retries.failed(exc, progressed=given > before)  # progress: a new count
                except RetryableError as final:
                    raise RemoteError(
                        f"cannot list {self.server}/tests: {final.reason} "
                        f"(after {final.attempts} attempts; {given} records listed)"
                    ) from None


def _verdicts(response: httpx.Response, count: int) -> list[Outcome]:
    """The outcomes of a batch's 200 answer: each result's status as a single POST's
    (2xx created, 409 duplicate, else rejected with its error). An answer that does not
    hold one result per record fails them all: which of them landed cannot be known."""
    try:
        results = response.json()["results"]
        if not isinstance(results, list) or len(results) != count:
            raise ValueError
        outcomes = []
        for result in results:
            status = result["status"]
            if not isinstance(status, int):
                raise ValueError
            if 200 <= status < 300:
                outcomes.append(CREATED_OUTCOME)
            elif status == 409:
                outcomes.append(DUPLICATE_OUTCOME)
            else:
                message = str(result.get("error", ""))[:MAX_MESSAGE]
                outcomes.append(Outcome(REJECTED, f"rejected by the server ({status}): {message}"))
        return outcomes
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        reason = "failed: the server's answer to the batch does not give one verdict a record"
        return [Outcome(FAILED, reason)] * count


class _GaveUp(Exception):
    """Raised out of a retry's sleep when the caller stopped waiting."""


def _message(response: httpx.Response) -> str:
    """The server's `error` (or `detail`) message, else the start of its answer."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        for key in ("error", "detail", "error_message"):
            if isinstance(body.get(key), str):
                return body[key][:MAX_MESSAGE]
    text = response.text.strip()[:MAX_MESSAGE]
    return text or response.reason_phrase


class _ResponseStream(io.RawIOBase):
    """A readable raw stream over the chunks of an answer."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks, self.pending = chunks, b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self.pending:
            chunk = next(self.chunks, None)
            if chunk is None:
                return 0
            self.pending = chunk
        size = min(len(buffer), len(self.pending))
        buffer[:size] = self.pending[:size]
        self.pending = self.pending[size:]
        return size

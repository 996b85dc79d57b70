"""Client of the export API: discovery, metadata, and one counted download."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from patientkit.client.http import (
    DEFAULT_RETRY,
    ApiClient,
    is_retryable_status,
    json_body,
    refused_credentials,
    retry_after,
    transport_failure,
)
from patientkit.core.counting import Counts, CsvCounter, CsvError
from patientkit.core.retry import RetryableError, RetryPolicy, with_retries
from patientkit.errors import DeliveryError, RemoteError

CHUNK = 1 << 20
OnRetry = Callable[[int, str, float], None]


class ExportClient(ApiClient):
    """The export API (SPEC.md: exports): export and download ids, metadata, and each
    download streamed and counted; failed attempts retried with `backoff`."""

    def __init__(
        self, server: str, retry: RetryPolicy = DEFAULT_RETRY, first_contact: bool = True
    ) -> None:
        super().__init__(server, first_contact)
        self.retry = retry

    def _check(self, response: httpx.Response, path: str, not_found: str) -> None:
        """Pass a 200; raise RetryableError for an answer worth another attempt, else
        RemoteError."""
        status = response.status_code
        if status == 404:
            raise RemoteError(f"{not_found} on {self.server} (404)")
        if is_retryable_status(status):
            raise RetryableError(f"status {status}{_detail(response)}", retry_after(response))
        if status != 200:
            raise refused_credentials(self.server, status) or RemoteError(
                f"GET {self.server}{path}: unexpected status {status}"
            )

    def _get_json(self, path: str, not_found: str, on_retry: OnRetry | None = None) -> Any:
        what = f"GET {self.server}{path}"

        def attempt() -> Any:
            response = self.http.get(path)
            self._check(response, path, not_found)
            return json_body(response, what)

        try:
            body = with_retries(attempt, self.retry, on_retry, transient=transport_failure)
        except RetryableError as exc:
            raise RemoteError(f"cannot get {what}: {exc}") from None
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, dict):
            raise RemoteError(f"{what}: the answer has no 'data' object")
        return data

    def export_ids(self, on_retry: OnRetry | None = None) -> list[str]:
        data = self._get_json("/api/export", "the export list was not found", on_retry)
        return _strings(data.get("export_ids"), "export_ids")

    def download_ids(self, export_id: str, on_retry: OnRetry | None = None) -> list[str]:
        data = self._get_json(
            f"/api/export/{export_id}", f"export '{export_id}' not found", on_retry
        )
        return _strings(data.get("download_ids"), "download_ids")

    def download(
        self, export_id: str, download_id: str, on_retry: OnRetry | None = None
    ) -> dict[str, Any]:
        path = f"/api/export/{export_id}/{download_id}"
        data = self._get_json(path, f"download '{download_id}' not found", on_retry)
        rows = data.get("rows")
        if not isinstance(rows, int) or isinstance(rows, bool) or rows < 0:
            raise RemoteError(f"GET {self.server}{path}: 'rows' is not a count: {rows!r}")
        return data

    def count_download(
        self,
        export_id: str,
        download_id: str,
        expected_rows: int,
        on_chunk: Callable[[int, int], None] | None = None,
    ) -> Counts:
        """Stream one download through a counter: one attempt, no retry.

        Raises RetryableError for a failure worth another attempt (transport, 5xx, a short
        download), CsvError for bad data, RemoteError for a final refusal, DeliveryError
        for more rows than the metadata says or a body that cannot be decoded.
        `on_chunk(rows, bytes)` reports progress.
        """
        source = f"{export_id}/{download_id}"
        counter = CsvCounter(source)
        path = f"/api/export/{export_id}/{download_id}/data"
        with self.http.stream("GET", path) as response:
            self._check(response, path, f"download {source} not found")
            try:
                for chunk in response.iter_bytes(CHUNK):
                    rows = counter.counts.rows
                    counter.feed(chunk)
                    if on_chunk is not None:
                        on_chunk(counter.counts.rows - rows, len(chunk))
            except httpx.DecodingError as exc:  # its Content-Encoding: truncated or corrupt
                raise DeliveryError(
                    f"download {download_id}: cannot decode it, truncated or corrupt ({exc})"
                ) from None
        try:
            counts = counter.finish()
        except CsvError:
            if counter.counts.rows < expected_rows:  # the stream stopped inside a row
                raise RetryableError(_short(counter.counts.rows, expected_rows)) from None
            raise
        if counts.rows < expected_rows:
            raise RetryableError(_short(counts.rows, expected_rows))
        if counts.rows > expected_rows:
            raise DeliveryError(
                f"download {source}: counted {counts.rows:,} rows, "
                f"but its metadata says {expected_rows:,}"
            )
        return counts


def _detail(response: httpx.Response) -> str:
    """': <detail>' of an export API error answer, if it has one (a streamed answer's
    body is not read)."""
    try:
        detail = response.json().get("detail") if response.is_closed else None
    except (ValueError, AttributeError, httpx.HTTPError):
        return ""
    return f": {detail}" if isinstance(detail, str) and detail else ""


def _short(counted: int, expected: int) -> str:
    return f"short download: counted {counted:,} of {expected:,} rows"


def _strings(value: Any, name: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RemoteError(f"the server's '{name}' is not a list of strings")
    return value

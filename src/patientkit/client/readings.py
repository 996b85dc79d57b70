"""Client of the device readings API."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx

from patientkit.client.http import (
    ApiClient,
    check_credentials,
    describe,
    is_retryable_status,
    json_body,
    refused_credentials,
    retry_after,
)
from patientkit.core import validation
from patientkit.core.model import Reading
from patientkit.errors import PatientkitError, RemoteError, UsageError

CREATE = "/api/device-readings/create"


class Answer:
    """What a create request got: ok, or a status with the server's message."""

    __slots__ = ("message", "retry_after", "status")

    def __init__(self, status: int, message: str = "", retry_after: float | None = None) -> None:
        self.status, self.message, self.retry_after = status, message, retry_after

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def retryable(self) -> bool:
        return self.status == 0 or is_retryable_status(self.status)


def error_message(response: httpx.Response) -> str:
    """The `error_message` of an error answer (either name of the code is fine)."""
    try:
        body = response.json()
    except (ValueError, RecursionError):
        return f"status {response.status_code}"
    if isinstance(body, dict) and isinstance(body.get("error_message"), str):
        return body["error_message"]
    return f"status {response.status_code}"


class ReadingsClient(ApiClient):
    """The device readings API (SPEC.md: readings): create requests and a device's totals."""

    def ping(self) -> None:
        """Fail with RemoteError (exit 2) unless the server answers its ping."""
        try:
            response = self.http.get("/api/ping")
        except httpx.TransportError as exc:
            raise RemoteError(f"cannot reach {self.server}: {describe(exc)}") from None
        if response.status_code != 200:
            raise RemoteError(f"{self.server}/api/ping answered status {response.status_code}")
        check_credentials(self.http, self.server)

    def create(self, device_id: str, readings: Sequence[Reading]) -> Answer:
        """POST one create request; transport failures come back as status 0."""
        body = {
            "id": device_id,
            "readings": [{"count": r[1], "timestamp": r[2]} for r in readings],
        }
        try:
            response = self.http.post(CREATE, json=body)
        except httpx.TransportError as exc:
            return Answer(0, describe(exc))
        if 200 <= response.status_code < 300:
            return Answer(response.status_code)
        return Answer(response.status_code, error_message(response), retry_after(response))

    def _get(self, device_id: str, what: str, key: str) -> Any:
        path = f"/api/device-readings/{device_id}/{what}"
        try:
            response = self.http.get(path)
        except httpx.TransportError as exc:
            raise RemoteError(f"cannot reach {self.server}: {describe(exc)}") from None
        if response.status_code == 404:
            message = error_message(response)
            if message == validation.NOT_FOUND:  # the device's; not a route the server lacks
                message = f"no readings for device {device_id}"
            raise PatientkitError(message)
        if response.status_code == 400:
            raise UsageError(error_message(response))
        if response.status_code != 200:
            raise refused_credentials(self.server, response.status_code) or RemoteError(
                f"GET {self.server}{path}: status {response.status_code}"
            )
        body = json_body(response, f"GET {self.server}{path}")
        if not isinstance(body, dict) or key not in body:
            raise RemoteError(f"GET {self.server}{path}: the answer has no '{key}'")
        return body[key]

    def latest_timestamp(self, device_id: str) -> str:
        return str(self._get(device_id, "latest-timestamp", "timestamp"))

    def cumulative_count(self, device_id: str) -> int:
        """The device's total, exactly as the server sent it: a JSON integer of any size
        (read by json as a Python int). A float or anything else is a RemoteError, never
        rounded into a wrong total."""
        value = self._get(device_id, "cumulative-count", "cumulative_count")
        if type(value) is not int:
            raise RemoteError(
                f"{self.server}: the cumulative count is not an integer: {str(value)[:40]}"
            )
        return value

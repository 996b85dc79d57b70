"""Reading request bodies with a size limit: over the limit is 413, never read whole.

A body is parsed by `core.jsontext`, the same parser as the CLI's inputs: anything it
refuses (not JSON, not UTF-8, a number too long, nesting too deep, a lone surrogate
escape) is `NotJson`, which each API answers with its own 400 — never a 500.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from patientkit.core import jsontext

MAX_BODY = 16 << 20  # bytes


class TooLarge(Exception):
    """A body over the limit; its message is the one to answer with."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"Request body is larger than {limit} bytes.")


class NotJson(Exception):
    """A body that is not one acceptable JSON value; the message is the reason (for logs:
    it holds no data from the body)."""


async def read_body(request: Request, limit: int) -> bytes:
    """The body's bytes; TooLarge past `limit` bytes (declared or sent)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLarge(limit)
    parts, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise TooLarge(limit)
        parts.append(part)
    return b"".join(parts)


def parse_json(body: bytes) -> Any:
    """The JSON value of a body; NotJson with the reason if jsontext refuses it."""
    try:
        return jsontext.loads(body)
    except jsontext.BadJson as exc:
        raise NotJson(exc.reason) from None


async def read_json(request: Request, limit: int) -> Any:
    """The JSON of the body; TooLarge past `limit` bytes, NotJson if it does not parse."""
    return parse_json(await read_body(request, limit))

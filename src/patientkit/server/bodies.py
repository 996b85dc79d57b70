"""Reading request bodies with a size limit: over the limit is 413, never read whole."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

MAX_BODY = 16 << 20  # bytes


class TooLarge(Exception):
    """A body over the limit; its message is the one to answer with."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"Request body is larger than {limit} bytes.")


class NotJson(Exception):
    pass


async def read_json(request: Request, limit: int) -> Any:
    """The JSON of the body; TooLarge past `limit` bytes, NotJson if it does not parse."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLarge(limit)
    parts, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise TooLarge(limit)
        parts.append(part)
    try:
        return json.loads(b"".join(parts))
    except ValueError:
        raise NotJson from None

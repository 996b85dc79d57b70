"""The rules of SPEC.md for readings and test records, with their exact messages.

Shared by the server (which answers them as 400s) and the CLI (which checks every input
record before it sends anything). Written by hand: no schema library decides for us.
"""

from __future__ import annotations

import re
from datetime import datetime
from itertools import chain
from typing import Any, TypeGuard

from patientkit.core.model import RECORD_FIELDS, Reading, record_values

ID_REQUIRED = "Field 'id' is required."
READINGS_REQUIRED = "Field 'readings' is required."
BAD_DEVICE_ID = "Device ID must be valid UUID string."
BAD_COUNT = "Field 'readings' contains invalid 'count' value. Must be positive integer."
BAD_TIMESTAMP = (
    "Field 'readings' contains invalid 'timestamp' value. Must be ISO-8061 timestamp string."
)
NOT_FOUND = "Device readings not found."
NOT_AN_OBJECT = "Request body must be a JSON object."

INVALID_JSON = "Invalid JSON"
# NUL (U+0000) in a record's field makes it invalid (SPEC.md's "Invalid or missing field"):
# PostgreSQL text cannot hold it and SQLite can, so both stores refuse it here, before
# storing, and answer alike.
NUL = "\x00"
CLINIC_REQUIRED = "clinic_id is required"

MAX_COUNT = 2**63 - 1  # the largest single count a SQLite INTEGER holds (totals have no limit)
# the CLI's reason for a whole count past MAX_COUNT: BAD_COUNT ("Must be positive integer")
# would not be true of it; the API answers BAD_COUNT, the only message SPEC.md gives it
COUNT_TOO_LARGE = f"count: number too large for the store (at most {MAX_COUNT})"
_UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
_TIMESTAMP = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}[+-][0-9]{2}:?[0-9]{2}"
)


class Invalid(ValueError):
    """A rule broken; the message is SPEC.md's, word for word."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def is_device_id(value: object) -> TypeGuard[str]:
    """A canonical lowercase UUID4 string."""
    return isinstance(value, str) and _UUID4.fullmatch(value) is not None


def instant_of(value: object) -> int | None:
    """UTC seconds of a `%Y-%m-%dT%H:%M:%S%z` timestamp (offset +0100 or +01:00), or None."""
    if not isinstance(value, str) or _TIMESTAMP.fullmatch(value) is None:
        return None
    text = value if value[-3] == ":" else f"{value[:-2]}:{value[-2:]}"
    try:
        return int(datetime.fromisoformat(text).timestamp())
    except ValueError:  # 2021-02-30, hour 25, an offset of 24 hours or more
        return None


_SIXTY = {f"{n:02d}": n for n in range(60)}


class Instants:
    """instant_of with a cache per (date and hour, offset): a replay sees thousands of
    readings in each hour, so the full parse runs once an hour and offset, and the rest
    of a timestamp is checked and added from a table. Same answers as instant_of."""

    def __init__(self, limit: int = 1 << 16) -> None:
        self.hours: dict[tuple[str, str], int] = {}
        self.seen: dict[str, int] = {}  # whole timestamps, the cheapest hit
        self.limit = limit

    def of(self, value: object) -> int | None:
        if type(value) is not str:
            return None
        instant = self.seen.get(value)
        if instant is None:
            instant = self._parse(value)
            if instant is not None:
                if len(self.seen) >= self.limit:
                    self.seen.clear()
                self.seen[value] = instant
        return instant

    def _parse(self, value: str) -> int | None:
        if len(value) not in (24, 25):
            return None
        minute, second = _SIXTY.get(value[14:16]), _SIXTY.get(value[17:19])
        if minute is None or second is None or value[13] != ":" or value[16] != ":":
            return None
        key = (value[:13], value[19:])
        base = self.hours.get(key)
        if base is None:
            instant = instant_of(value)
            if instant is None:
                return None
            if len(self.hours) >= self.limit:
                self.hours.clear()
            base = self.hours[key] = instant - minute * 60 - second
        return base + minute * 60 + second


def is_count(value: object) -> bool:
    """An integer > 0; a boolean is not an integer."""
    return type(value) is int and 0 < value <= MAX_COUNT


def reading(device_id: str, item: object, instants: Instants | None = None) -> Reading:
    """One reading of a device, or Invalid naming what is wrong with it."""
    if not isinstance(item, dict) or not is_count(item.get("count")):
        raise Invalid(BAD_COUNT)
    timestamp = item.get("timestamp")
    instant = instant_of(timestamp) if instants is None else instants.of(timestamp)
    if instant is None:
        raise Invalid(BAD_TIMESTAMP)
    assert isinstance(timestamp, str)
    return Reading(device_id, item["count"], timestamp, instant)


def create_request(body: object, instants: Instants | None = None) -> list[Reading]:
    """A create request's readings, all valid, or Invalid for the first problem found."""
    if not isinstance(body, dict):
        raise Invalid(NOT_AN_OBJECT)
    device_id = body.get("id")
    if device_id is None:
        raise Invalid(ID_REQUIRED)
    if not is_device_id(device_id):
        raise Invalid(BAD_DEVICE_ID)
    items = body.get("readings")
    if not isinstance(items, list) or not items:
        raise Invalid(READINGS_REQUIRED)
    return [reading(device_id, item, instants) for item in items]


def bad_record_field(record: dict[str, Any]) -> str | None:
    """The first of the five fields that is missing or not a non-empty string without NUL
    (U+0000), or None. A string of only white space counts as empty."""
    try:  # a valid record, checked in C: a missing field or a non-string raises
        values = record_values(record)
        if all(map(str.strip, values)) and NUL not in "".join(values):
            return None
    except (KeyError, TypeError):
        pass
    for field in RECORD_FIELDS:
        value = record.get(field)
        if not isinstance(value, str) or not value.strip() or NUL in value:
            return field
    return None


def all_records_valid(values: list[Any]) -> bool:
    """Whether record_problem would find nothing wrong with any of `values`: the same
    test for a list at once, in C loops (False: ask record_problem of each)."""
    try:
        if not set(map(type, values)) <= {dict}:
            return False
        fields = list(chain.from_iterable(map(record_values, values)))
        return all(map(str.strip, fields)) and NUL not in "".join(fields)
    except (KeyError, TypeError):  # a field missing, or not a string
        return False


def record_problem(body: object) -> str | None:
    """SPEC.md's error for a records POST body, or None when it is valid."""
    if not isinstance(body, dict):
        return INVALID_JSON
    field = bad_record_field(body)
    return f"Invalid or missing field: {field}" if field else None

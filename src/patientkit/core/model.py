"""The domain types that validation and every store share (SPEC.md: the readings API and
the records API).

* `Reading`: one device reading, validated: (device_id, count, timestamp as sent, instant
  in UTC seconds).
* `RECORD_FIELDS`: the five fields of a test record, in the order stores and CSV files
  hold them; `record_values(record)` gives them as a tuple.
* `RecordAnswer`: the answer a records request got (status, JSON body text), which a
  store keeps with the request id so that a retried request gets it again.
"""

from __future__ import annotations

import operator
import time
from dataclasses import dataclass
from typing import NamedTuple

RECORD_FIELDS = ("test_id", "patient_id", "clinic_id", "test_type", "result")
record_values = operator.itemgetter(*RECORD_FIELDS)  # a record's five fields, as a tuple
RECORD_COLUMNS = (*RECORD_FIELDS, "created_at")  # a stored record: its fields, when stored
BATCH_KEY = ""  # the request log's test_id for a batch's answer: never a record's test_id


def compact_offset(timestamp: str) -> str:
    """`2021-09-29T16:09:15+01:00` → `2021-09-29T16:09:15+0100` (the API's %z form, in
    which every store answers a reading's timestamp)."""
    return timestamp[:-3] + timestamp[-2:] if timestamp[-3:-2] == ":" else timestamp


def utc_now() -> str:
    """Now in UTC as `YYYY-MM-DDTHH:MM:SS.ffffffZ`: a stored record's `created_at`."""
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"


class Reading(NamedTuple):
    """One device reading, validated (a tuple: millions are made in a replay)."""

    device_id: str
    count: int  # type: ignore[assignment]  # a field named like tuple.count
    timestamp: str  # as sent, offset included
    instant: int  # UTC seconds


@dataclass(frozen=True)
class RecordAnswer:
    """The answer a records request got: the status and the JSON body text."""

    status: int
    body: str

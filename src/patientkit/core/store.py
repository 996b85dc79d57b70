"""What the engines and the server need of a store, as a `typing.Protocol`.

`patientkit.core.storage.SQLiteStore` implements it; `patientkit.stores.open_store(target)`
chooses the implementation by the target's form. Engines and the server name only this
protocol, so a second store (PostgreSQL) is one more class, not a special case.

A store object whose `shared` is False (SQLite) is one connection: use it from one
thread at a time. One whose `shared` is True (PostgreSQL, a connection pool) serves every
thread of its process, and must not cross a fork. Every write is one transaction; the
semantics of each method (what "created" means, which of two duplicates wins, idempotent
answers by request id) are those documented on `SQLiteStore`.

Failures are told apart the same way whatever the store (`DATA_ERRORS`): a call whose
values the store can never take raises one of them (the backend's own, or `DataRefused`,
which a store raises for its backend's data errors) and stored nothing; the same call
would fail again, so callers refuse those values for good (dead-letter, reject). Any
other exception (a lock held too long, a server restarting past the store's own retry
deadline) is transient: the call may be tried again.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

from patientkit.core.model import Reading, RecordAnswer


class DataRefused(ValueError):
    """A store can never take the values of a call (the same call fails the same way): a
    value its backend cannot hold, or one that breaks a constraint. Nothing of the call
    was stored. The message says why, without the values."""


# What a store call raises when a value itself cannot be stored: it cannot be bound (an
# integer past 64 bits, a str with a lone surrogate, an unsupported type), the backend
# cannot hold it (DataRefused), or it breaks a constraint. Retrying cannot help.
DATA_ERRORS: tuple[type[Exception], ...] = (
    DataRefused,
    sqlite3.IntegrityError,
    sqlite3.DataError,
    sqlite3.InterfaceError,
    ValueError,
    TypeError,
    OverflowError,
)


def refusal(exc: BaseException) -> str:
    """A short reason for a DATA_ERRORS exception (no values quoted for Unicode errors)."""
    if isinstance(exc, UnicodeError):
        detail = getattr(exc, "reason", "") or "invalid text"
        return f"{type(exc).__name__}: {detail}"
    return f"{type(exc).__name__}: {exc}"


class Store(Protocol):
    """A store of device readings and test records (SPEC.md: the readings and records
    APIs, `store info`). Errors opening or using it are `UsageError` (exit 2) or the
    backend's own errors for values it can never hold (`DATA_ERRORS`)."""

    shared: bool  # one instance serves every thread of a process (see the module's doc)

    def close(self) -> None:
        """Close the connection."""
        ...

    def __enter__(self) -> Store: ...

    def __exit__(self, *exc: object) -> None: ...

    def schema_version(self) -> int:
        """The version of the schema the store has (migrations applied)."""
        ...

    def add_readings(self, readings: Sequence[Reading]) -> int:
        """Store readings in one transaction; how many were new (duplicates of a stored
        (device, instant) are ignored)."""
        ...

    def latest_timestamp(self, device_id: str) -> str | None:
        """The device's latest timestamp, in the offset it was stored with (+HHMM), or
        None if it has no readings."""
        ...

    def cumulative_count(self, device_id: str) -> int | None:
        """The exact sum of the device's counts, or None if it has no readings."""
        ...

    def reading_totals(self) -> tuple[int, int, int]:
        """(devices, readings, exact sum of counts) of the whole store."""
        ...

    def add_records(self, records: Sequence[dict[str, str]]) -> list[bool]:
        """Store records in one transaction; for each, True if created (the first of a
        test_id wins; a stored record is never overwritten)."""
        ...

    def add_record_once(
        self, record: dict[str, str], request_id: str, answer: Callable[[bool], RecordAnswer]
    ) -> RecordAnswer:
        """Store one record for a request, idempotently by (request id, test_id)."""
        ...

    def add_records_once(
        self,
        requests: Sequence[tuple[dict[str, str], str | None]],
        answer: Callable[[dict[str, str], bool], RecordAnswer],
    ) -> list[RecordAnswer]:
        """`add_record_once` for many requests in one transaction, answered in order."""
        ...

    def add_batch_once(
        self,
        records: Sequence[dict[str, str]],
        request_id: str | None,
        answer: Callable[[list[bool]], str],
    ) -> tuple[str, bool]:
        """Store a batch in one transaction, idempotently by request id: (body, True) for
        a request id already answered, else (answer(created), False)."""
        ...

    def records_for_clinic(self, clinic_id: str, page: int = 1000) -> Iterator[dict[str, str]]:
        """Every record of a clinic, oldest first, `page` records a query."""
        ...

    def records_page(
        self, clinic_id: str, after: tuple[str, str] | None, limit: int
    ) -> list[dict[str, str]]:
        """Up to `limit` records of a clinic after (created_at, test_id) `after`."""
        ...

    def record_count(self) -> int:
        """How many records the store holds."""
        ...

    def info(self) -> dict[str, object]:
        """What `store info` prints: backend, schema_version, readings, devices, records,
        clinics, bytes."""
        ...

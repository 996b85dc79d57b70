"""What the engines and the server need of a store: the protocol `Store`.

`patientkit.core.storage.SQLiteStore` and `patientkit.postgres.PostgresStore` implement it
(both on the abstract base `StoreBase`); `patientkit.stores.open_store(target)` chooses
the implementation by the target's form. Engines and the server name only `Store`. What
every store does the same way lives here once, in `StoreBase`: the idempotent answers by
request id (`add_records_once`, `add_batch_once`), the created flags of a batch
(`created_in_order`), paging by clinic (`records_for_clinic`); a store supplies its
transactions and statements (the `_write`, `_insert_records`, `_stored_answers`,
`_log_answers` hooks) and its reads.

A store object whose `shared` is False (SQLite) is one connection: use it from one
thread at a time. One whose `shared` is True (PostgreSQL, a connection pool) serves every
thread of its process, and must not cross a fork. Every write is one transaction; the
semantics of each method (what "created" means, which of two duplicates wins, idempotent
answers by request id) are those documented on `Store`.

Failures are told apart the same way whatever the store (`DATA_ERRORS`): a call whose
values the store can never take raises one of them (the backend's own, or `DataRefused`,
which a store raises for its backend's data errors) and stored nothing; the same call
would fail again, so callers refuse those values for good (dead-letter, reject). Any
other exception (a lock held too long, a server restarting past the store's own retry
deadline) is transient: the call may be tried again.
"""

from __future__ import annotations

import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, Self, TypeVar

from patientkit.core.model import BATCH_KEY, Reading, RecordAnswer, utc_now

T = TypeVar("T")


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


def created_in_order(records: Sequence[dict[str, str]], fresh: set[str]) -> list[bool]:
    """For each record in order, whether it was created: its test_id is among `fresh` (the
    test_ids the insert stored) and no earlier record of the same test_id took it. Empties
    `fresh` of the test_ids it hands out."""
    if len(fresh) == len(records):
        return [True] * len(records)
    created = []
    for record in records:
        test_id = record["test_id"]
        created.append(test_id in fresh)
        fresh.discard(test_id)
    return created


class Store(Protocol):
    """What the engines and the server need of a store of device readings and test records
    (SPEC.md: the readings and records APIs, `store info`). Errors opening or using it are
    `UsageError` (exit 2), or `DATA_ERRORS` for values it can never hold. Implemented by
    `SQLiteStore` and `PostgresStore`, both on `StoreBase`."""

    shared: bool  # one instance serves every thread of a process (see the module's doc)

    def close(self) -> None:
        """Close the connection."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...

    def schema_version(self) -> int:
        """The version of the schema the store has (migrations applied)."""
        ...

    def add_readings(self, readings: Sequence[Reading]) -> int:
        """Store readings in one transaction; how many were new (duplicates of a stored
        (device, instant), or of one earlier in `readings`, are ignored)."""
        ...

    def latest_timestamp(self, device_id: str) -> str | None:
        """The device's latest timestamp, in the offset it was stored with (+HHMM), or
        None if it has no readings."""
        ...

    def cumulative_count(self, device_id: str) -> int | None:
        """The exact sum of the device's counts (of any size), or None if it has no
        readings."""
        ...

    def reading_totals(self) -> tuple[int, int, int]:
        """(devices, readings, exact sum of counts) of the whole store."""
        ...

    def add_records(self, records: Sequence[dict[str, str]]) -> list[bool]:
        """Store records in one transaction; for each, True if created, False if its
        test_id was already stored or came earlier in `records` (the first one wins; a
        stored record is never overwritten). Their created_at is the time taken inside the
        transaction (UTC, microseconds; on SQLite once it holds the write lock, so
        created_at follows the order of commits)."""
        ...

    def add_record_once(
        self, record: dict[str, str], request_id: str, answer: Callable[[bool], RecordAnswer]
    ) -> RecordAnswer:
        """Store one record for a request, idempotently: a request id already answered for
        this test_id gets its first answer again. answer(created) makes the answer, which
        is stored in the same transaction as the record."""
        ...

    def add_records_once(
        self,
        requests: Sequence[tuple[dict[str, str], str | None]],
        answer: Callable[[dict[str, str], bool], RecordAnswer],
    ) -> list[RecordAnswer]:
        """`add_record_once` for many requests in one transaction (a server's group
        commit), each answered exactly as if it came alone, in order; answer(record,
        created) makes each answer. A request id of None is not remembered (nobody can
        repeat it). Three steps whatever the number of requests: the stored answers, the
        records of the requests not answered before (nor by an earlier one here), the new
        answers."""
        ...

    def add_batch_once(
        self,
        records: Sequence[dict[str, str]],
        request_id: str | None,
        answer: Callable[[list[bool]], str],
    ) -> tuple[str, bool]:
        """Store a batch of valid records in one transaction, idempotently by request id:
        (the answer's body, True) when `request_id` already has a batch answer (nothing is
        stored again), else (answer(created), False) where created says for each record
        whether it was created (`add_records`). The answer is kept with the request id
        under `BATCH_KEY` in the same transaction; a request id of None is not remembered.
        The backend's errors propagate (rolled back: nothing stored)."""
        ...

    def records_for_clinic(self, clinic_id: str, page: int = 1000) -> Iterator[dict[str, str]]:
        """Every record of a clinic, oldest first, read through the index `page` records a
        query (no transaction stays open while the caller consumes them)."""
        ...

    def records_page(
        self, clinic_id: str, after: tuple[str, str] | None, limit: int
    ) -> list[dict[str, str]]:
        """Up to `limit` records of a clinic that come after the (created_at, test_id) of
        `after` (None: from the start), in that order, through the clinic index."""
        ...

    def record_count(self) -> int:
        """How many records the store holds."""
        ...

    def info(self) -> dict[str, object]:
        """What `store info` prints: backend, schema_version, readings, devices, records,
        clinics, bytes."""
        ...


class StoreBase(ABC):
    """What every store does the same way, once: the record writes with their idempotent
    answers (`add_records`, `add_record_once`, `add_records_once`, `add_batch_once`) and
    paging by clinic, on the hooks a store supplies (`_write`, `_insert_records`,
    `_stored_answers`, `_log_answers`, `records_page`, `close`). A subclass implements the
    rest of `Store`; the semantics of each method are documented there."""

    @abstractmethod
    def close(self) -> None:
        """Close the connection."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @abstractmethod
    def _write(self, work: Callable[[Any], T]) -> T:
        """work(tx) in one write transaction on the store's connection `tx`, retried as
        the store retries transient failures; its result."""

    @abstractmethod
    def _insert_records(
        self, tx: Any, records: Sequence[dict[str, str]], created_at: str
    ) -> list[bool]:
        """Insert the records with `created_at`, in the transaction `tx`: for each, in
        order, whether it was created (`created_in_order`: the first of a test_id wins, a
        stored record is never overwritten)."""

    @abstractmethod
    def _stored_answers(
        self, tx: Any, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], RecordAnswer]:
        """The answers the request log holds for those (request id, test_id) keys."""

    @abstractmethod
    def _log_answers(self, tx: Any, log: Sequence[tuple[str, str, int, str]]) -> None:
        """Remember (request id, test_id, status, body) answers in the request log."""

    def add_records(self, records: Sequence[dict[str, str]]) -> list[bool]:
        """As `Store.add_records`."""
        if not records:
            return []
        return self._write(lambda tx: self._insert_records(tx, records, utc_now()))

    def add_record_once(
        self, record: dict[str, str], request_id: str, answer: Callable[[bool], RecordAnswer]
    ) -> RecordAnswer:
        """As `Store.add_record_once`."""
        return self.add_records_once([(record, request_id)], lambda _, created: answer(created))[0]

    def add_records_once(
        self,
        requests: Sequence[tuple[dict[str, str], str | None]],
        answer: Callable[[dict[str, str], bool], RecordAnswer],
    ) -> list[RecordAnswer]:
        """As `Store.add_records_once`."""
        if not requests:
            return []

        def work(tx: Any) -> list[RecordAnswer]:
            keys = [(rid, record["test_id"]) for record, rid in requests if rid is not None]
            known = self._stored_answers(tx, keys) if keys else {}
            seen = set(known)
            attempts: list[dict[str, str]] = []
            for record, rid in requests:
                key = (rid, record["test_id"]) if rid is not None else None
                if key is None or key not in seen:
                    attempts.append(record)
                    if key is not None:
                        seen.add(key)
            flags = iter(self._insert_records(tx, attempts, utc_now()) if attempts else [])
            answers = []
            log: list[tuple[str, str, int, str]] = []
            for record, rid in requests:
                key = (rid, record["test_id"]) if rid is not None else None
                if key is not None and key in known:
                    answers.append(known[key])
                    continue
                given = answer(record, next(flags))
                if key is not None:
                    known[key] = given
                    log.append((*key, given.status, given.body))
                answers.append(given)
            if log:
                self._log_answers(tx, log)
            return answers

        return self._write(work)

    def add_batch_once(
        self,
        records: Sequence[dict[str, str]],
        request_id: str | None,
        answer: Callable[[list[bool]], str],
    ) -> tuple[str, bool]:
        """As `Store.add_batch_once`."""

        def work(tx: Any) -> tuple[str, bool]:
            if request_id is not None:
                stored = self._stored_answers(tx, [(request_id, BATCH_KEY)])
                if stored:
                    return stored[(request_id, BATCH_KEY)].body, True
            created = self._insert_records(tx, records, utc_now()) if records else []
            body = answer(created)
            if request_id is not None:
                self._log_answers(tx, [(request_id, BATCH_KEY, 200, body)])
            return body, False

        return self._write(work)

    def records_for_clinic(self, clinic_id: str, page: int = 1000) -> Iterator[dict[str, str]]:
        """As `Store.records_for_clinic`."""
        after: tuple[str, str] | None = None
        while True:
            rows = self.records_page(clinic_id, after, page)
            yield from rows
            if len(rows) < page:
                return
            after = (rows[-1]["created_at"], rows[-1]["test_id"])

    @abstractmethod
    def records_page(
        self, clinic_id: str, after: tuple[str, str] | None, limit: int
    ) -> list[dict[str, str]]:
        """Up to `limit` records of a clinic that come after the (created_at, test_id) of
        `after` (None: from the start), in that order, through the clinic index."""

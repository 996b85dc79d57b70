"""The SQLite store: device readings and test records in one file.

* WAL mode, a busy timeout, and every write in a `BEGIN IMMEDIATE` transaction: a writer
  takes the write lock before it reads anything, so it waits for the lock (the busy
  timeout) instead of failing on a lock upgrade; if SQLite still answers "database is
  locked" the transaction is retried from the start until `lock_deadline`. Several
  processes may write one file at once and none fails or loses a row.
* `synchronous=NORMAL`: a commit survives the process being killed; after an OS crash or
  power loss the last commits may roll back, never half of one.
* The schema has a version (`PRAGMA user_version`) and a list of migrations, applied in
  order, each in its own write transaction, so two processes opening a new file at once
  do not both migrate it.

Readings are unique per (device, instant in UTC) and the first stored wins: the original
timestamp text is kept so that the latest timestamp is answered in the offset it was
stored with. Per-device totals (cumulative count, latest instant) live in `devices`, kept
by a trigger on every new reading, in the same transaction, so no query scans readings.

A cumulative count is an exact integer of any size, while SQLite's INTEGER is 64 bits
(a sum past 2^63 - 1 would silently become a float). So it is kept as two integers,
`count_high * 2^62 + count_low` with `0 <= count_low < 2^62`: the trigger adds a reading's
count (at most 2^63 - 1, which validation enforces) in those two parts and carries, and
no step ever leaves 64 bits (`count_high` grows by at most 2 a reading).

Test records are unique per test_id, never overwritten; clinic_id is indexed. A request
log keyed by (request id, test_id) remembers each answer so that a retried request gets
its original answer again; a batch's whole answer is kept under (request id, `BATCH_KEY`),
the empty test_id, which no single record can have (a test_id is a non-empty string).

A `SQLiteStore` is one connection: use it from one thread (the server keeps one per
thread). It derives from `patientkit.core.store.Store` (which holds the record writes'
logic common to both stores); the domain types come from
`patientkit.core.model` (re-exported here).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from itertools import chain
from pathlib import Path
from typing import TypeVar

from patientkit.core.model import (
    RECORD_COLUMNS,
    RECORD_FIELDS,
    Reading,
    RecordAnswer,
    compact_offset,
    record_values,
)
from patientkit.core.store import StoreBase, created_in_order
from patientkit.errors import UsageError

__all__ = [
    "RECORD_FIELDS",
    "SCHEMA_VERSION",
    "Reading",
    "RecordAnswer",
    "SQLiteStore",
    "describe",
    "record_values",
]

T = TypeVar("T")

BUSY_TIMEOUT = 30.0  # seconds SQLite waits for a lock before it answers "locked"
LOCK_DEADLINE = 300.0  # seconds we keep retrying a locked write before giving up
CACHE_KIB = 32 << 10  # page cache per connection
CHECKPOINT_PAGES = 8192  # WAL pages between checkpoints (each one fsyncs: not too often)
ROWS_PER_STATEMENT = 8000  # readings in one multi-row INSERT (4 values each)
RECORDS_PER_STATEMENT = 5000  # records in one multi-row INSERT (6 values each)

MIGRATIONS: list[str | Callable[[sqlite3.Connection], None]] = [
    # 1: device readings, with per-device totals kept beside them
    """
    CREATE TABLE readings (
        device_id TEXT NOT NULL,
        instant INTEGER NOT NULL,      -- seconds since the epoch, UTC
        count INTEGER NOT NULL,
        timestamp TEXT NOT NULL,       -- as it was sent, offset included
        PRIMARY KEY (instant, device_id)  -- time first: replays append near the end
    ) WITHOUT ROWID;
    CREATE TABLE devices (
        device_id TEXT PRIMARY KEY,
        cumulative_count INTEGER NOT NULL,
        latest_instant INTEGER NOT NULL,
        latest_timestamp TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE TRIGGER readings_add_to_devices AFTER INSERT ON readings BEGIN
        INSERT INTO devices (device_id, cumulative_count, latest_instant, latest_timestamp)
        VALUES (NEW.device_id, NEW.count, NEW.instant, NEW.timestamp)
        ON CONFLICT (device_id) DO UPDATE SET
            cumulative_count = cumulative_count + excluded.cumulative_count,
            latest_timestamp = CASE WHEN excluded.latest_instant > latest_instant
                               THEN excluded.latest_timestamp ELSE latest_timestamp END,
            latest_instant = max(latest_instant, excluded.latest_instant);
    END;
    """,
    # 2: test records, and the answers given to each request id
    """
    CREATE TABLE test_records (
        test_id TEXT PRIMARY KEY,
        patient_id TEXT NOT NULL,
        clinic_id TEXT NOT NULL,
        test_type TEXT NOT NULL,
        result TEXT NOT NULL,
        created_at TEXT NOT NULL       -- UTC, ISO 8601
    );
    CREATE INDEX test_records_clinic ON test_records (clinic_id, created_at, test_id);
    CREATE TABLE request_log (
        request_id TEXT NOT NULL,
        test_id TEXT NOT NULL,
        status INTEGER NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (request_id, test_id)
    ) WITHOUT ROWID;
    """,
]
LOW_BITS = 62  # a cumulative count is count_high << LOW_BITS | count_low
LOW_MASK = (1 << LOW_BITS) - 1
EXACT_TOTALS_TRIGGER = f"""
    CREATE TRIGGER readings_add_to_devices AFTER INSERT ON readings BEGIN
        INSERT INTO devices (device_id, count_high, count_low, latest_instant, latest_timestamp)
        VALUES (NEW.device_id, NEW.count >> {LOW_BITS}, NEW.count & {LOW_MASK},
                NEW.instant, NEW.timestamp)
        ON CONFLICT (device_id) DO UPDATE SET
            count_high = count_high + excluded.count_high
                         + ((count_low + excluded.count_low) >> {LOW_BITS}),
            count_low = (count_low + excluded.count_low) & {LOW_MASK},
            latest_timestamp = CASE WHEN excluded.latest_instant > latest_instant
                               THEN excluded.latest_timestamp ELSE latest_timestamp END,
            latest_instant = max(latest_instant, excluded.latest_instant);
    END;
"""


def _exact_totals(db: sqlite3.Connection) -> None:
    """Migration 3: the cumulative count in two 64-bit parts (see the module's doc), each
    device's total summed again from its readings, exactly (a total that had overflowed
    into a float is mended). Sums of 31-bit pieces cannot overflow below 2^32 readings a
    device; Python adds them up."""
    db.execute(
        "CREATE TABLE devices_exact (device_id TEXT PRIMARY KEY, count_high INTEGER NOT NULL,"
        " count_low INTEGER NOT NULL, latest_instant INTEGER NOT NULL,"
        " latest_timestamp TEXT NOT NULL) WITHOUT ROWID"
    )
    totals = {
        device_id: (high << 62) + (middle << 31) + low
        for device_id, high, middle, low in db.execute(
            "SELECT device_id, sum(count >> 62), sum((count >> 31) & 2147483647),"
            " sum(count & 2147483647) FROM readings GROUP BY device_id"
        )
    }
    rows = [
        (
            device_id,
            totals.get(device_id, 0) >> LOW_BITS,
            totals.get(device_id, 0) & LOW_MASK,
            instant,
            timestamp,
        )
        for device_id, instant, timestamp in db.execute(
            "SELECT device_id, latest_instant, latest_timestamp FROM devices"
        )
    ]
    db.executemany("INSERT INTO devices_exact VALUES (?, ?, ?, ?, ?)", rows)
    db.execute("DROP TRIGGER IF EXISTS readings_add_to_devices")
    db.execute("DROP TABLE devices")
    db.execute("ALTER TABLE devices_exact RENAME TO devices")
    for statement in _statements(EXACT_TOTALS_TRIGGER):
        db.execute(statement)


MIGRATIONS.append(_exact_totals)  # 3: exact cumulative counts past 2^63 - 1
SCHEMA_VERSION = len(MIGRATIONS)


class SQLiteStore(StoreBase):
    """The store in one SQLite file (see the module's doc): `SQLiteStore(path)` opens it,
    creating and migrating it as needed; UsageError if it cannot be opened, is of a newer
    schema, or stays locked past `lock_deadline` seconds. A `patientkit.core.store.Store`."""

    shared = False  # one connection: one thread at a time (the server keeps one per thread)

    def __init__(
        self,
        path: str | Path,
        busy_timeout: float = BUSY_TIMEOUT,
        lock_deadline: float = LOCK_DEADLINE,
    ) -> None:
        self.path = str(path)
        self.lock_deadline = lock_deadline
        try:
            self.db = sqlite3.connect(
                self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
            self.db.execute(f"PRAGMA wal_autocheckpoint={CHECKPOINT_PAGES}")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise UsageError(f"cannot open the store {self.path}: {exc}") from None

    def close(self) -> None:
        self.db.close()

    # -- transactions ---------------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run work(db) in one write transaction, retried while the file is locked."""
        deadline = time.monotonic() + self.lock_deadline
        pause = 0.005
        while True:
            try:
                with self._transaction() as db:
                    return work(db)
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                if time.monotonic() > deadline:
                    raise UsageError(f"the store {self.path} stayed locked: {exc}") from None
                time.sleep(pause)
                pause = min(pause * 2, 0.5)

    def _write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        return self.write(work)

    def schema_version(self) -> int:
        return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        if self.schema_version() == SCHEMA_VERSION:
            return

        def step(db: sqlite3.Connection) -> bool:
            version = self.schema_version()
            if version > SCHEMA_VERSION:
                raise UsageError(
                    f"the store {self.path} has schema version {version}, newer than this "
                    f"patientkit knows ({SCHEMA_VERSION}); upgrade patientkit"
                )
            if version == SCHEMA_VERSION:
                return False
            migration = MIGRATIONS[version]
            if callable(migration):
                migration(db)
            else:
                for statement in _statements(migration):
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {version + 1}")
            return True

        while self.write(step):
            pass

    # -- readings -------------------------------------------------------------------------

    def add_readings(self, readings: Sequence[Reading]) -> int:
        """Store readings in one transaction; return how many were new (the rest were
        duplicates of a stored (device, instant) and are ignored)."""
        if not readings:
            return 0
        return self.write(
            lambda db: _insert_rows(db, "readings", Reading._fields, readings, ROWS_PER_STATEMENT)
        )

    def latest_timestamp(self, device_id: str) -> str | None:
        row = self.db.execute(
            "SELECT latest_timestamp FROM devices WHERE device_id = ?", (device_id,)
        ).fetchone()
        return compact_offset(row[0]) if row else None

    def cumulative_count(self, device_id: str) -> int | None:
        """The exact sum of the device's stored counts (of any size), or None if it has
        no readings."""
        row = self.db.execute(
            "SELECT count_high, count_low FROM devices WHERE device_id = ?", (device_id,)
        ).fetchone()
        return (int(row[0]) << LOW_BITS) + int(row[1]) if row else None

    def reading_totals(self) -> tuple[int, int, int]:
        """(devices, readings, exact sum of counts) of the whole store, for checks and
        tests. The low parts are summed in 31-bit pieces: no sum overflows below 2^32
        devices."""
        devices, high, middle, low = self.db.execute(
            f"SELECT count(*), coalesce(sum(count_high), 0),"
            f" coalesce(sum(count_low >> 31), 0), coalesce(sum(count_low & {(1 << 31) - 1}), 0)"
            " FROM devices"
        ).fetchone()
        readings = self.db.execute("SELECT count(*) FROM readings").fetchone()[0]
        counts = (int(high) << LOW_BITS) + (int(middle) << 31) + int(low)
        return int(devices), int(readings), counts

    # -- test records ---------------------------------------------------------------------

    def _insert_records(
        self, tx: sqlite3.Connection, records: Sequence[dict[str, str]], created_at: str
    ) -> list[bool]:
        return _insert_records(tx, records, created_at)

    def _stored_answers(
        self, tx: sqlite3.Connection, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], RecordAnswer]:
        """One lookup a key, through the request log's primary key."""
        found = {}
        for key in keys:
            row = tx.execute(
                "SELECT status, body FROM request_log WHERE request_id = ? AND test_id = ?", key
            ).fetchone()
            if row:
                found[key] = RecordAnswer(int(row[0]), row[1])
        return found

    def _log_answers(
        self, tx: sqlite3.Connection, log: Sequence[tuple[str, str, int, str]]
    ) -> None:
        tx.executemany(
            "INSERT INTO request_log (request_id, test_id, status, body) VALUES (?, ?, ?, ?)",
            log,
        )

    def records_page(
        self, clinic_id: str, after: tuple[str, str] | None, limit: int
    ) -> list[dict[str, str]]:
        """Up to `limit` records of a clinic that come after the (created_at, test_id) of
        `after` (None: from the start), in that order, through the clinic index."""
        rows = self.db.execute(
            f"SELECT {', '.join(RECORD_COLUMNS)} "
            "FROM test_records WHERE clinic_id = ? AND (created_at, test_id) > (?, ?) "
            "ORDER BY created_at, test_id LIMIT ?",
            (clinic_id, *(after or ("", "")), limit),
        ).fetchall()
        return [dict(zip(RECORD_COLUMNS, row, strict=True)) for row in rows]

    def record_count(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM test_records").fetchone()[0])

    def info(self) -> dict[str, object]:
        """What `store info` prints of this store (`describe`)."""
        return describe(self.path)


def _statements(script: str) -> Iterator[str]:
    """The statements of a script, one by one (a trigger's body holds semicolons too):
    executescript() would commit the transaction a migration runs in."""
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                yield pending
            pending = ""


def _insert_rows(
    db: sqlite3.Connection,
    table: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[object]],
    most: int,
) -> int:
    """Multi-row INSERT OR IGNORE of `rows` (tuples of `columns`), in the caller's
    transaction: a row whose key is stored, or came earlier in `rows`, is ignored. Returns
    how many were new. (A trigger's changes are not counted: readings' trigger keeps
    `devices`.)

    Up to `most` rows a statement, fewer if SQLite allows fewer variables (why multi-row
    statements: docs/performance.md)."""
    width = len(columns)
    per_statement = min(most, db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // width)
    head = f"INSERT OR IGNORE INTO {table} ({', '.join(columns)}) VALUES "
    placeholder = "(" + ",".join("?" * width) + ")"
    new = 0
    for start in range(0, len(rows), per_statement):
        part = rows[start : start + per_statement]
        new += db.execute(
            head + ",".join([placeholder] * len(part)), list(chain.from_iterable(part))
        ).rowcount
    return new


def _insert_records(
    db: sqlite3.Connection, records: Sequence[dict[str, str]], created_at: str
) -> list[bool]:
    """INSERT OR IGNORE the records in order, in the caller's transaction, in multi-row
    statements (`_insert_rows`).

    Which ones were created: when the number of changes equals the number of records,
    all of them (the usual case, no further query). Otherwise the new rows are those
    whose rowid is above the largest rowid before the insert (the write lock is held,
    so nobody else added any), and of records that share a test_id only the first can
    be the one created."""
    (before,) = db.execute("SELECT coalesce(max(rowid), 0) FROM test_records").fetchone()
    # created_at is bound once a statement, as ?1, which every row repeats first: each row's
    # five values go from the dicts into the parameters without a tuple made per row
    width = len(RECORD_FIELDS)
    limit = db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) - 1
    per_statement = min(RECORDS_PER_STATEMENT, limit // width)
    head = f"INSERT OR IGNORE INTO test_records (created_at, {', '.join(RECORD_FIELDS)}) VALUES "
    row = "(?1," + ",".join("?" * width) + ")"  # a bare ? after ?1 is ?2, then on
    new = 0
    for start in range(0, len(records), per_statement):
        part = records[start : start + per_statement]
        values = [created_at, *chain.from_iterable(map(record_values, part))]
        new += db.execute(head + ",".join([row] * len(part)), values).rowcount
    if new == len(records):
        return [True] * new
    fresh = {
        test_id
        for (test_id,) in db.execute("SELECT test_id FROM test_records WHERE rowid > ?", (before,))
    }
    return created_in_order(records, fresh)


def must_exist(store: Path) -> None:
    """Raise UsageError (exit 2) unless `store` is a file: `STORE: no such store`, or
    `STORE: is a folder, not a store`. For commands that only read, which never create a
    store."""
    if not store.is_file():
        raise UsageError(
            f"{store}: no such store"
            if not store.exists()
            else f"{store}: is a folder, not a store"
        )


def describe(path: str | Path) -> dict[str, object]:
    """What a SQLite store holds, without creating, migrating or writing it:
    `{"backend": "sqlite", "schema_version", "readings", "devices", "records", "clinics",
    "bytes"}`. `bytes` is the file's size plus its write-ahead log's (`-wal`: committed
    writes not yet copied into the file), what the store occupies now; the `-shm` index
    is not counted. Devices come from the per-device totals; readings, records and
    clinics are counted (readings and records scan their table's key, clinics the
    clinic index). A store of an older schema is described as it is (tables it does not
    have yet count 0). Raises UsageError for a missing file or one that is not a store.
    """
    store = Path(path)
    must_exist(store)
    db = _open_existing(store)
    try:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}

        def count(sql: str, table: str) -> int:
            return int(db.execute(sql).fetchone()[0]) if table in tables else 0

        info: dict[str, object] = {
            "backend": "sqlite",
            "schema_version": int(db.execute("PRAGMA user_version").fetchone()[0]),
            "readings": count("SELECT count(*) FROM readings", "readings"),
            "devices": count("SELECT count(*) FROM devices", "devices"),
            "records": count("SELECT count(*) FROM test_records", "test_records"),
            "clinics": count("SELECT count(DISTINCT clinic_id) FROM test_records", "test_records"),
        }
    except sqlite3.DatabaseError as exc:
        raise UsageError(f"cannot read the store {store}: {exc}") from None
    finally:
        db.close()
    wal = store.with_name(store.name + "-wal")
    info["bytes"] = store.stat().st_size + (wal.stat().st_size if wal.is_file() else 0)
    return info


def _open_existing(store: Path) -> sqlite3.Connection:
    """A connection to an existing file that never creates one: read-write (`mode=rw`, so
    that closing it tidies the WAL files as any last connection does), else read-only
    for a file or folder we may not write. UsageError for a file that is not SQLite."""
    from urllib.parse import quote

    uri = f"file:{quote(str(store.resolve()))}"
    for mode in ("rw", "ro"):
        try:
            db = sqlite3.connect(f"{uri}?mode={mode}", uri=True, timeout=BUSY_TIMEOUT)
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return db
        except sqlite3.DatabaseError as exc:
            reason = exc
            if "readonly" not in str(exc) and "unable to open" not in str(exc):
                break
    raise UsageError(f"cannot open the store {store}: {reason}") from None

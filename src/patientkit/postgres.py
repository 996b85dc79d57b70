"""The PostgreSQL store: the SQLite store's semantics on a PostgreSQL server (SPEC.md, Core
semantics — PostgreSQL; Scale-out). Needs the `postgres` extra (psycopg 3, psycopg-pool);
this module is imported only when a `postgresql://` or `postgres://` URL is given.

* Readings are unique per (device, instant in UTC); the first stored wins, in a batch
  (input order) as across batches. Per-device totals live in `devices`: the cumulative
  count is `numeric` (exact at any size), the latest instant keeps the timestamp text it
  was stored with. They are updated from the rows the INSERT actually added (RETURNING),
  in the same statement and transaction as the readings.
* Test records are unique per test_id, never overwritten, indexed by clinic; the request
  log keeps each request's answer (a batch's under `BATCH_KEY`), as in the SQLite store.
  Text columns sort bytewise (`COLLATE "C"`), as SQLite does.
* Batches go in through `COPY` into a temporary table (one per connection, emptied at
  each commit), then one `INSERT … SELECT` per table, in key order (so that concurrent
  writers take row locks in one order), one transaction a batch: new readings are those
  whose key is not stored (an anti-join), and if a concurrent writer stores one of them
  meanwhile, the statement is redone (after a savepoint) as `ON CONFLICT DO NOTHING`.
* The schema has a version (table `patientkit_schema`); migrations run in one transaction
  under an advisory lock (`pg_advisory_lock`, held around that transaction), so
  concurrent first users never race: the others wait, then find the schema made.
* Transient failures — serialization failures, deadlocks, a dropped connection, a server
  shutting down or restarting, a pool with no connection to give — are retried from the
  start of the transaction with exponential backoff and jitter, until `retry_deadline`.
  A transaction is all or nothing; when the connection drops while COMMIT is on its way,
  the transaction's id is looked up (`txid_status`) to learn whether it committed, so a
  batch is neither applied twice nor reported wrongly.
* A `PostgresStore` is thread-safe: each call takes a connection from its pool
  (psycopg-pool), so a server holds one instance for all its threads. It must not cross
  a fork: open one in each process.
* Values PostgreSQL can never take (psycopg.DataError: a number out of range, text it
  cannot hold; psycopg.IntegrityError other than the keys we handle) raise
  `patientkit.core.store.DataRefused` (rolled back, nothing stored), so that callers
  refuse them for good exactly as they do the SQLite store's (`core.store.DATA_ERRORS`).
  Text cannot hold NUL (U+0000) in PostgreSQL: validation refuses it for both stores
  (`core.validation`), and a lookup by a key holding NUL finds nothing, as on SQLite.
* A password in the URL is never printed: messages show the URL with `***` instead.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

import psycopg
from psycopg import errors, sql
from psycopg_pool import ConnectionPool

from patientkit.core.model import (
    RECORD_COLUMNS,
    RECORD_FIELDS,
    Reading,
    RecordAnswer,
    compact_offset,
    record_values,
)
from patientkit.core.store import DataRefused, StoreBase, created_in_order
from patientkit.errors import UsageError
from patientkit.stores import PASSWORD_PARAMETER, shown

T = TypeVar("T")

RETRY_DEADLINE = 120.0  # seconds a transient failure is retried before giving up
CONNECT_TIMEOUT = 10  # seconds libpq waits for a connection
POOL_SIZE = 8  # most connections a store holds (the server's threads share them)
SCHEMA_LOCK = "patientkit schema"  # hashed, with the schema's name, into the advisory lock key

TEXT = 'text COLLATE "C" NOT NULL'
MIGRATIONS: list[str] = [
    # 1: readings with per-device exact totals; test records and the request log
    f"""
    CREATE TABLE readings (
        device_id {TEXT},
        instant bigint NOT NULL,          -- seconds since the epoch, UTC
        count bigint NOT NULL,
        timestamp {TEXT},                 -- as it was sent, offset included
        PRIMARY KEY (instant, device_id)  -- time first: replays append near the end
    );
    CREATE TABLE devices (
        device_id {TEXT} PRIMARY KEY,
        cumulative_count numeric NOT NULL,
        latest_instant bigint NOT NULL,
        latest_timestamp {TEXT}
    );
    CREATE TABLE test_records (
        test_id {TEXT} PRIMARY KEY,
        patient_id {TEXT},
        clinic_id {TEXT},
        test_type {TEXT},
        result {TEXT},
        created_at {TEXT}                 -- UTC, ISO 8601
    );
    CREATE INDEX test_records_clinic ON test_records (clinic_id, created_at, test_id);
    CREATE TABLE request_log (
        request_id {TEXT},
        test_id {TEXT},
        status integer NOT NULL,
        body text NOT NULL,
        PRIMARY KEY (request_id, test_id)
    );
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)

# Per connection, emptied at every commit (and rolled back with their transaction).
TEMP_TABLES = f"""
    CREATE TEMP TABLE IF NOT EXISTS pk_readings (
        seq bigint GENERATED ALWAYS AS IDENTITY,
        device_id {TEXT}, instant bigint NOT NULL, count bigint NOT NULL, timestamp {TEXT}
    ) ON COMMIT DELETE ROWS;
    CREATE TEMP TABLE IF NOT EXISTS pk_records (
        seq bigint GENERATED ALWAYS AS IDENTITY,
        test_id {TEXT}, patient_id {TEXT}, clinic_id {TEXT}, test_type {TEXT}, result {TEXT}
    ) ON COMMIT DELETE ROWS;
"""
COPY_READINGS = "COPY pk_readings (device_id, count, timestamp, instant) FROM STDIN"
COPY_RECORDS = f"COPY pk_records ({', '.join(RECORD_FIELDS)}) FROM STDIN"

# The first of each (instant, device) in the batch, in key order (so that concurrent
# writers take row locks in one order); what is new goes into readings, and its
# per-device sums and latest reading into devices. Returns how many readings were new.
# Two forms: FAST leaves out the keys already stored (an anti-join: no speculative
# insertion, a quarter less work a row) and fails with a unique violation when a
# concurrent writer stores one of its keys meanwhile; SAFE, used then, is ON CONFLICT DO
# NOTHING, which waits for that writer and skips what it stored.
INSERT_READINGS = """
    WITH batch AS (
        SELECT DISTINCT ON (instant, device_id) device_id, instant, count, timestamp
        FROM pk_readings ORDER BY instant, device_id, seq
    ), new AS (
        INSERT INTO readings (device_id, instant, count, timestamp)
        SELECT device_id, instant, count, timestamp FROM batch b
        {skip}
        RETURNING device_id, instant, count, timestamp
    ), sums AS (
        SELECT device_id, sum(count) AS total, count(*) AS n, max(instant) AS latest
        FROM new GROUP BY device_id
    ), totals AS (
        INSERT INTO devices AS d (device_id, cumulative_count, latest_instant, latest_timestamp)
        SELECT s.device_id, s.total, s.latest, n.timestamp
        FROM sums s JOIN new n ON n.device_id = s.device_id AND n.instant = s.latest
        ORDER BY s.device_id
        ON CONFLICT (device_id) DO UPDATE SET
            cumulative_count = d.cumulative_count + excluded.cumulative_count,
            latest_timestamp = CASE WHEN excluded.latest_instant > d.latest_instant
                               THEN excluded.latest_timestamp ELSE d.latest_timestamp END,
            latest_instant = greatest(d.latest_instant, excluded.latest_instant)
    )
    SELECT coalesce(sum(n), 0)::bigint FROM sums
"""
INSERT_READINGS_FAST = INSERT_READINGS.format(
    skip="WHERE NOT EXISTS (SELECT FROM readings r"
    " WHERE r.instant = b.instant AND r.device_id = b.device_id)"
)
INSERT_READINGS_SAFE = INSERT_READINGS.format(skip="ON CONFLICT DO NOTHING")

# The first of each test_id in the batch, in key order; returns the test_ids created.
INSERT_RECORDS = f"""
    INSERT INTO test_records ({", ".join(RECORD_COLUMNS)})
    SELECT DISTINCT ON (test_id) {", ".join(RECORD_FIELDS)}, %s
    FROM pk_records ORDER BY test_id, seq
    ON CONFLICT DO NOTHING
    RETURNING test_id
"""
# The same for a few records, sent as arrays (no temporary table needed).
INSERT_FEW_RECORDS = f"""
    INSERT INTO test_records ({", ".join(RECORD_COLUMNS)})
    SELECT DISTINCT ON (test_id) {", ".join(RECORD_FIELDS)}, %s
    FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[])
         WITH ORDINALITY AS r ({", ".join(RECORD_FIELDS)}, seq)
    ORDER BY test_id, seq
    ON CONFLICT DO NOTHING
    RETURNING test_id
"""
NUL = "\x00"  # the one character PostgreSQL text cannot hold
FEW = 64  # records up to which arrays beat COPY into the temporary table


class Transient(Exception):
    """A failure worth retrying the transaction for (internal)."""


def _passwords(url: str) -> list[str]:
    """Every password written in `url`, to take out of error messages."""
    found = [match.group(2) for match in PASSWORD_PARAMETER.finditer(url) if match.group(2)]
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    return [*found, password] if password else found


class PostgresStore(StoreBase):
    """Device readings and test records in a PostgreSQL database given by URL
    (`postgresql://user@host:5432/dbname`, also `postgres://`; libpq conventions for the
    rest: PGPASSWORD, .pgpass, sslmode, options). A `patientkit.core.store.Store`: the
    same public methods and answers as the SQLite store (`patientkit.core.storage`).

    Opening connects and creates or migrates the schema: UsageError (exit 2) when the
    server cannot be reached, refuses us, or holds a newer schema than we know."""

    shared = True  # thread-safe (a pool): one instance per process

    def __init__(
        self,
        url: str,
        pool_size: int = POOL_SIZE,
        retry_deadline: float = RETRY_DEADLINE,
    ) -> None:
        self.url = url
        self.shown = shown(url)
        self.retry_deadline = retry_deadline
        self._passwords = _passwords(url)
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT) as conn:
                self._migrate(conn)
        except psycopg.Error as exc:
            raise UsageError(f"cannot open the store {self.shown}: {self._reason(exc)}") from None
        self.pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            url,
            min_size=1,
            max_size=max(1, pool_size),
            kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT},
            configure=_configure,
            open=True,
            name="patientkit",
        )

    def close(self) -> None:
        self.pool.close()

    def _reason(self, exc: BaseException) -> str:
        """An error's first line, with the password (if it shows) replaced by `***`."""
        text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        text = text.replace(self.url, self.shown)
        for password in self._passwords:
            text = text.replace(password, "***")
        return text

    # -- transactions ---------------------------------------------------------------------

    def _run(self, work: Callable[[psycopg.Connection[Any]], T], write: bool = True) -> T:
        """work(conn) in one transaction (write=False: its statements each on their own,
        for reads), retried from the start on a transient failure until `retry_deadline`,
        then UsageError. Values the database can never take: DataRefused (rolled back).
        Other errors propagate (rolled back)."""
        deadline = time.monotonic() + self.retry_deadline
        pause = 0.01
        while True:
            xid: str | None = None
            committing = False
            try:
                with self.pool.connection() as conn:
                    if not write:
                        return work(conn)
                    with conn.transaction():
                        result = work(conn)
                        row = conn.execute("SELECT txid_current_if_assigned()::text").fetchone()
                        xid = row[0] if row else None
                        committing = True
                    return result
            except (psycopg.OperationalError, errors.SerializationFailure,
                    errors.DeadlockDetected, Transient) as exc:  # fmt: skip
                if committing and xid is not None and self._committed(xid, deadline):
                    return result
                if isinstance(exc, psycopg.OperationalError):
                    self.pool.check()  # a restarted server: drop every dead connection at once
                if time.monotonic() > deadline:
                    raise UsageError(
                        f"the store {self.shown} kept failing: {self._reason(exc)}"
                    ) from None
            except (psycopg.DataError, psycopg.IntegrityError) as exc:
                raise DataRefused(f"{type(exc).__name__}: {self._reason(exc)}") from None
            time.sleep(pause * (0.5 + random.random()))
            pause = min(pause * 2, 2.0)

    def _write(self, work: Callable[[psycopg.Connection[Any]], T]) -> T:
        return self._run(work)

    def _committed(self, xid: str, deadline: float) -> bool:
        """Whether transaction `xid`, whose COMMIT got no answer, committed: asked on a
        new connection (the server may be restarting: retried until the deadline)."""
        pause = 0.05
        while time.monotonic() < deadline:
            try:
                with psycopg.connect(
                    self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT
                ) as conn:
                    row = conn.execute("SELECT txid_status(%s::bigint)", (xid,)).fetchone()
                status = row[0] if row else None
                if status != "in progress":
                    return status == "committed"
            except psycopg.OperationalError:
                pass
            time.sleep(pause)
            pause = min(pause * 2, 2.0)
        raise UsageError(f"the store {self.shown}: cannot learn whether a write committed")

    def _read(self, query: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        def work(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
            return conn.execute(query, params).fetchall()

        return self._run(work, write=False)

    # -- schema ---------------------------------------------------------------------------

    def schema_version(self) -> int:
        return int(self._read("SELECT version FROM patientkit_schema")[0][0])

    def _migrate(self, conn: psycopg.Connection[Any]) -> None:
        if _version(conn) == SCHEMA_VERSION:
            return
        # A session lock around the migration's transaction, not a transaction lock inside
        # it: a transaction that waited for a lock held by another first user would still
        # see the catalog as it was (the table that user created missing), and fail.
        # The session ends with the process, and the lock with it.
        key = (SCHEMA_LOCK,)
        conn.execute("SELECT pg_advisory_lock(hashtext(%s || current_schema()))", key)
        try:
            with conn.transaction():
                version = _version(conn)
                if version > SCHEMA_VERSION:
                    raise UsageError(
                        f"the store {self.shown} has schema version {version}, newer than "
                        f"this patientkit knows ({SCHEMA_VERSION}); upgrade patientkit"
                    )
                if version == 0:
                    conn.execute("CREATE TABLE patientkit_schema (version integer NOT NULL)")
                    conn.execute("INSERT INTO patientkit_schema VALUES (0)")
                for number in range(version, SCHEMA_VERSION):
                    conn.execute(sql.SQL(MIGRATIONS[number]))
                    conn.execute("UPDATE patientkit_schema SET version = %s", (number + 1,))
        finally:
            if not conn.closed:
                conn.execute("SELECT pg_advisory_unlock(hashtext(%s || current_schema()))", key)

    def info(self) -> dict[str, object]:
        """What the store holds (`describe`)."""
        return self._run(_describe, write=False)

    # -- readings -------------------------------------------------------------------------

    def add_readings(self, readings: Sequence[Reading]) -> int:
        """Store readings in one transaction; return how many were new (the rest were
        duplicates of a stored (device, instant), or of one earlier in `readings`, and
        are ignored). A count past 2^63 - 1 raises psycopg.DataError (nothing stored)."""
        if not readings:
            return 0

        def work(conn: psycopg.Connection[Any]) -> int:
            with conn.cursor() as cur:
                with cur.copy(COPY_READINGS) as copy:
                    write = copy.write_row
                    for reading in readings:
                        write(reading)
                try:
                    with conn.transaction():  # a savepoint
                        cur.execute(INSERT_READINGS_FAST)
                except errors.UniqueViolation:  # a concurrent writer stored one of them
                    cur.execute(INSERT_READINGS_SAFE)
                row = cur.fetchone()
                return int(row[0]) if row else 0

        return self._run(work)

    def latest_timestamp(self, device_id: str) -> str | None:
        if NUL in device_id:  # no stored key holds one (PostgreSQL text cannot)
            return None
        rows = self._read("SELECT latest_timestamp FROM devices WHERE device_id = %s", (device_id,))
        return compact_offset(rows[0][0]) if rows else None

    def cumulative_count(self, device_id: str) -> int | None:
        """The exact sum of the device's stored counts (of any size), or None if it has
        no readings."""
        if NUL in device_id:
            return None
        rows = self._read(
            "SELECT cumulative_count::text FROM devices WHERE device_id = %s", (device_id,)
        )
        return int(rows[0][0]) if rows else None

    def reading_totals(self) -> tuple[int, int, int]:
        """(devices, readings, exact sum of counts) of the whole store."""

        def work(conn: psycopg.Connection[Any]) -> tuple[int, int, int]:
            devices, total = conn.execute(
                "SELECT count(*), coalesce(sum(cumulative_count), 0)::text FROM devices"
            ).fetchone() or (0, "0")
            readings = conn.execute("SELECT count(*) FROM readings").fetchone() or (0,)
            return int(devices), int(readings[0]), int(total)

        return self._run(work, write=False)

    # -- test records ---------------------------------------------------------------------

    def _insert_records(
        self, tx: psycopg.Connection[Any], records: Sequence[dict[str, str]], created_at: str
    ) -> list[bool]:
        return created_in_order(records, _insert_few(tx, records, created_at))

    def _stored_answers(
        self, tx: psycopg.Connection[Any], keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], RecordAnswer]:
        """One statement for all the keys."""
        return {
            (rid, tid): RecordAnswer(int(status), body)
            for rid, tid, status, body in tx.execute(
                "SELECT l.request_id, l.test_id, l.status, l.body FROM request_log l"
                " JOIN unnest(%s::text[], %s::text[]) AS k (request_id, test_id)"
                " USING (request_id, test_id)",
                ([k[0] for k in keys], [k[1] for k in keys]),
            )
        }

    def _log_answers(
        self, tx: psycopg.Connection[Any], log: Sequence[tuple[str, str, int, str]]
    ) -> None:
        """Another writer that answered the same (request id, test_id) first makes this a
        unique violation: the transaction is then retried, and finds that first answer."""
        try:
            tx.execute(
                "INSERT INTO request_log (request_id, test_id, status, body)"
                " SELECT * FROM unnest(%s::text[], %s::text[], %s::int[], %s::text[])",
                tuple(list(column) for column in zip(*log, strict=True)),
            )
        except errors.UniqueViolation as exc:
            raise Transient("a concurrent request answered first") from exc

    def records_page(
        self, clinic_id: str, after: tuple[str, str] | None, limit: int
    ) -> list[dict[str, str]]:
        """Up to `limit` records of a clinic that come after the (created_at, test_id) of
        `after` (None: from the start), in that order, through the clinic index."""
        if NUL in clinic_id or (after is not None and NUL in after[0] + after[1]):
            return []  # no stored record holds one (PostgreSQL text cannot)
        rows = self._read(
            f"SELECT {', '.join(RECORD_COLUMNS)} "
            "FROM test_records WHERE clinic_id = %s AND (created_at, test_id) > (%s, %s) "
            "ORDER BY created_at, test_id LIMIT %s",
            (clinic_id, *(after or ("", "")), limit),
        )
        return [dict(zip(RECORD_COLUMNS, row, strict=True)) for row in rows]

    def record_count(self) -> int:
        return int(self._read("SELECT count(*) FROM test_records")[0][0])


def _configure(conn: psycopg.Connection[Any]) -> None:
    """A new pooled connection: its temporary tables (autocommit: they stay)."""
    conn.execute(TEMP_TABLES)


def _version(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT to_regclass('patientkit_schema') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return 0
    found = conn.execute("SELECT version FROM patientkit_schema").fetchone()
    return int(found[0]) if found else 0


def _insert_few(
    conn: psycopg.Connection[Any], records: Sequence[dict[str, str]], created_at: str
) -> set[str]:
    """Insert the first record of each test_id (in the caller's transaction); the set of
    test_ids created."""
    if len(records) > FEW:
        with conn.cursor() as cur:
            with cur.copy(COPY_RECORDS) as copy:
                for record in records:
                    copy.write_row(record_values(record))
            cur.execute(INSERT_RECORDS, (created_at,))
            return {row[0] for row in cur.fetchall()}
    columns = [[record[field] for record in records] for field in RECORD_FIELDS]
    return {row[0] for row in conn.execute(INSERT_FEW_RECORDS, (created_at, *columns)).fetchall()}


TABLES = ("patientkit_schema", "readings", "devices", "test_records", "request_log")


def _describe(conn: psycopg.Connection[Any]) -> dict[str, object]:
    """`{"backend": "postgresql", "schema_version", "readings", "devices", "records",
    "clinics", "bytes"}` of the store on `conn`; tables it does not have yet count 0.
    `bytes` is the size of the store's tables with their indexes and TOAST (not the
    whole database's)."""
    present = {
        name
        for (name,) in conn.execute(
            "SELECT t FROM unnest(%s::text[]) t WHERE to_regclass(t) IS NOT NULL", (list(TABLES),)
        )
    }

    def one(query: str, table: str) -> int:
        if table not in present:
            return 0
        row = conn.execute(query).fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    size = conn.execute(
        "SELECT coalesce(sum(pg_total_relation_size(to_regclass(t))), 0) FROM unnest(%s::text[]) t",
        (sorted(present),),
    ).fetchone()
    return {
        "backend": "postgresql",
        "schema_version": one("SELECT version FROM patientkit_schema", "patientkit_schema"),
        "readings": one("SELECT count(*) FROM readings", "readings"),
        "devices": one("SELECT count(*) FROM devices", "devices"),
        "records": one("SELECT count(*) FROM test_records", "test_records"),
        "clinics": one(
            "SELECT count(*) FROM (SELECT DISTINCT clinic_id FROM test_records) c", "test_records"
        ),
        "bytes": int(size[0]) if size else 0,
    }


def describe(url: str) -> dict[str, object]:
    """What the PostgreSQL store at `url` holds, without creating or migrating its schema
    (as `storage.describe` for a SQLite file; `store info`): see `_describe`. UsageError
    when the server cannot be reached or refuses us (the password shown as `***`)."""
    where = shown(url)
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT) as conn:
            return _describe(conn)
    except psycopg.Error as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        for password in _passwords(url):
            reason = reason.replace(password, "***")
        raise UsageError(f"cannot read the store {where}: {reason}") from None

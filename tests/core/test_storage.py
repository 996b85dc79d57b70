"""What only the SQLite store has: SQLite's limit on variables a statement, its schema
migrations (`PRAGMA user_version`). What every store must do: tests/core/test_store.py."""

import sqlite3

import pytest

from patientkit.core.storage import SCHEMA_VERSION, SQLiteStore
from patientkit.errors import UsageError
from tests.core.test_store import DEVICE, MAX, OTHER, reading


def test_a_batch_larger_than_sqlite_allows_in_one_statement(tmp_path):
    with SQLiteStore(tmp_path / "s.db") as store:
        store.db.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 42)  # 10 readings a statement
        batch = [reading(1, "2021-09-29T16:09:15+01:00", 1632928155 + n) for n in range(25)]
        assert store.add_readings([*batch, batch[3]]) == 25
        assert store.reading_totals() == (1, 25, 25)


def test_schema_version_and_migrations(tmp_path):
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE readings (device_id TEXT, instant INTEGER, count INTEGER,"
        " timestamp TEXT, PRIMARY KEY (instant, device_id)) WITHOUT ROWID;"
        "CREATE TABLE devices (device_id TEXT PRIMARY KEY, cumulative_count INTEGER,"
        " latest_instant INTEGER, latest_timestamp TEXT);"
        "PRAGMA user_version = 1;"
    )
    db.close()
    with SQLiteStore(path) as store:
        assert store.schema_version() == SCHEMA_VERSION == 3
        assert store.add_records(
            [{"test_id": "t", "patient_id": "p", "clinic_id": "c", "test_type": "x", "result": "r"}]
        ) == [True]
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.commit()
    db.close()
    with pytest.raises(UsageError, match="schema version 99, newer than"):
        SQLiteStore(path)


def test_migration_3_sums_totals_again_exactly(tmp_path):
    """A version-2 store whose total overflowed into a float: the migration mends it from
    the readings, which SQLite kept exactly."""
    path = tmp_path / "v2.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(
        "CREATE TABLE readings (device_id TEXT NOT NULL, instant INTEGER NOT NULL,"
        " count INTEGER NOT NULL, timestamp TEXT NOT NULL, PRIMARY KEY (instant, device_id))"
        " WITHOUT ROWID;"
        "CREATE TABLE devices (device_id TEXT PRIMARY KEY, cumulative_count INTEGER NOT NULL,"
        " latest_instant INTEGER NOT NULL, latest_timestamp TEXT NOT NULL) WITHOUT ROWID;"
        "CREATE TRIGGER readings_add_to_devices AFTER INSERT ON readings BEGIN SELECT 1; END;"
        "CREATE TABLE test_records (test_id TEXT PRIMARY KEY, patient_id TEXT NOT NULL,"
        " clinic_id TEXT NOT NULL, test_type TEXT NOT NULL, result TEXT NOT NULL,"
        " created_at TEXT NOT NULL);"
        "CREATE TABLE request_log (request_id TEXT NOT NULL, test_id TEXT NOT NULL,"
        " status INTEGER NOT NULL, body TEXT NOT NULL, PRIMARY KEY (request_id, test_id))"
        " WITHOUT ROWID;"
        "PRAGMA user_version = 2;"
    )
    db.executemany(
        "INSERT INTO readings VALUES (?, ?, ?, ?)",
        [
            (DEVICE, 1, MAX, "2021-09-29T16:09:15+01:00"),
            (DEVICE, 2, MAX, "2021-09-29T16:09:16+01:00"),
            (DEVICE, 3, 7, "2021-09-29T16:09:17+01:00"),
            (OTHER, 1, 5, "2021-09-29T16:09:15+01:00"),
        ],
    )
    db.executemany(
        "INSERT INTO devices VALUES (?, ?, ?, ?)",
        [(DEVICE, 1.8446744073709552e19, 3, "2021-09-29T16:09:17+01:00"), (OTHER, 5, 1, "t")],
    )
    db.close()
    with SQLiteStore(path) as store:
        assert store.schema_version() == 3
        assert store.cumulative_count(DEVICE) == 2 * MAX + 7
        assert store.cumulative_count(OTHER) == 5
        assert store.latest_timestamp(DEVICE) == "2021-09-29T16:09:17+0100"
        store.add_readings([reading(1, "2021-09-29T16:09:18+01:00", 4)])
        assert store.cumulative_count(DEVICE) == 2 * MAX + 8
        assert store.reading_totals() == (2, 5, 2 * MAX + 13)

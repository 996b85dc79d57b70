"""The records half of the SQLite store, what only it has: batches split by SQLite's
limit on variables a statement, paging through the clinic index. What every store must do
with records: tests/core/test_store.py."""

import sqlite3

import pytest

from patientkit.core import storage
from patientkit.core.storage import SQLiteStore
from tests.core.test_store import record


def rows(store):
    return store.db.execute(
        "SELECT test_id, patient_id, clinic_id, test_type, result FROM test_records "
        "ORDER BY test_id"
    ).fetchall()


@pytest.mark.parametrize(
    ("most", "limit"),
    [(7, 32766), (5000, 999), (5000, 42)],  # 7 rows a statement; 166; 7 (42 variables)
)
def test_batches_larger_than_one_statement(tmp_path, most, limit, monkeypatch):
    monkeypatch.setattr(storage, "RECORDS_PER_STATEMENT", most)
    with SQLiteStore(tmp_path / "s.db") as store:
        store.db.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, limit)
        store.add_records([record(f"T{i:03d}") for i in range(0, 30, 2)])
        batch = [record(f"T{i:03d}") for i in range(30)] + [record("T001", result="late")]
        flags = store.add_records(batch)
        assert flags == [i % 2 == 1 for i in range(30)] + [False]
        assert store.record_count() == 30
        assert dict((r[0], r[4]) for r in rows(store))["T001"] == "5.1"


def test_records_of_a_clinic_are_read_through_the_clinic_index(tmp_path):
    with SQLiteStore(tmp_path / "s.db") as store:
        plan = store.db.execute(
            "EXPLAIN QUERY PLAN SELECT * FROM test_records WHERE clinic_id = ? "
            "AND (created_at, test_id) > (?, ?) ORDER BY created_at, test_id LIMIT 5",
            ("C1", "", ""),
        ).fetchall()
        assert "USING INDEX test_records_clinic" in plan[0][3]

"""The records half of the store: created flags, first one wins, idempotent requests,
paging by clinic through the index."""

import sqlite3
import threading

import pytest

from patientkit.core import storage
from patientkit.core.storage import RecordAnswer, SQLiteStore


def record(test_id, clinic="C1", result="5.1", patient="P1"):
    return {
        "test_id": test_id,
        "patient_id": patient,
        "clinic_id": clinic,
        "test_type": "glucose",
        "result": result,
    }


def rows(store):
    return store.db.execute(
        "SELECT test_id, patient_id, clinic_id, test_type, result FROM test_records "
        "ORDER BY test_id"
    ).fetchall()


def test_created_flags_duplicates_in_the_batch_and_in_the_store(tmp_path):
    with SQLiteStore(tmp_path / "s.db") as store:
        assert store.add_records([record("A"), record("B")]) == [True, True]
        flags = store.add_records(
            [record("C"), record("A", result="changed"), record("C", result="second"), record("D")]
        )
        assert flags == [True, False, False, True]
        assert store.record_count() == 4
        assert [r[4] for r in rows(store)] == ["5.1", "5.1", "5.1", "5.1"]  # never overwritten
        assert store.add_records([]) == []


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


def test_every_record_gets_a_utc_created_at(tmp_path):
    with SQLiteStore(tmp_path / "s.db") as store:
        store.add_records([record("A")])
        (created_at,) = store.db.execute("SELECT created_at FROM test_records").fetchone()
    assert len(created_at) == len("2025-01-02T03:04:05.123456Z") and created_at.endswith("Z")


def test_a_repeated_request_id_gets_the_first_answer(tmp_path):
    def answer(created):
        return RecordAnswer(200 if created else 409, "created" if created else "conflict")

    with SQLiteStore(tmp_path / "s.db") as store:
        assert store.add_record_once(record("A"), "r1", answer) == RecordAnswer(200, "created")
        assert store.add_record_once(record("A"), "r1", answer) == RecordAnswer(200, "created")
        assert store.add_record_once(record("A"), "r2", answer) == RecordAnswer(409, "conflict")
        assert store.add_record_once(record("B"), "r1", answer) == RecordAnswer(200, "created")
        assert store.record_count() == 2


def test_records_of_a_clinic_in_pages_oldest_first(tmp_path):
    with SQLiteStore(tmp_path / "s.db") as store:
        store.add_records([record(f"X{i:04d}", clinic="C1" if i % 3 else "C2") for i in range(50)])
        store.add_records([record("A-late", clinic="C1")])
        listed = list(store.records_for_clinic("C1", page=7))
        assert [r["test_id"] for r in listed] == [f"X{i:04d}" for i in range(50) if i % 3] + [
            "A-late"
        ]
        assert set(listed[0]) == {
            "test_id",
            "patient_id",
            "clinic_id",
            "test_type",
            "result",
            "created_at",
        }
        assert list(store.records_for_clinic("none")) == []
        plan = store.db.execute(
            "EXPLAIN QUERY PLAN SELECT * FROM test_records WHERE clinic_id = ? "
            "AND (created_at, test_id) > (?, ?) ORDER BY created_at, test_id LIMIT 5",
            ("C1", "", ""),
        ).fetchall()
        assert "USING INDEX test_records_clinic" in plan[0][3]


def test_threads_with_their_own_connections_lose_and_double_nothing(tmp_path):
    path = tmp_path / "s.db"
    SQLiteStore(path).close()
    created = []

    def work(n):
        with SQLiteStore(path) as store:
            for start in range(0, 400, 40):
                batch = [record(f"T{(n * 100 + i) % 1000:04d}") for i in range(start, start + 40)]
                created.append(sum(store.add_records(batch)))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    unique = {(n * 100 + i) % 1000 for n in range(6) for i in range(400)}
    with SQLiteStore(path) as store:
        assert store.record_count() == len(unique) == sum(created)

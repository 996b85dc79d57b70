import json
import sqlite3
import subprocess
import sys
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from patientkit.core.storage import SCHEMA_VERSION, Reading, RecordAnswer, SQLiteStore
from patientkit.errors import UsageError

DEVICE = "063c5957-8905-45f9-bfe3-960713788919"
OTHER = "f728b4fa-4248-4e3a-8a5d-2f346baa9455"


def reading(count: int, timestamp: str, instant: int, device: str = DEVICE) -> Reading:
    return Reading(device, count, timestamp, instant)


def test_first_reading_at_an_instant_wins_whatever_its_offset(tmp_path):
    with SQLiteStore(tmp_path / "s.db") as store:
        assert (
            store.add_readings(
                [
                    reading(5, "2021-09-29T16:09:15+01:00", 1632928155),
                    reading(7, "2021-09-29T15:09:15+0000", 1632928155),  # same instant: ignored
                    reading(2, "2021-09-29T17:00:00+0100", 1632931200),
                ]
            )
            == 2
        )
        assert store.add_readings([reading(9, "2021-09-29T16:09:15+01:00", 1632928155)]) == 0
        assert store.cumulative_count(DEVICE) == 7
        assert store.latest_timestamp(DEVICE) == "2021-09-29T17:00:00+0100"
        assert store.latest_timestamp(OTHER) is None
        assert store.cumulative_count(OTHER) is None
        assert store.reading_totals() == (1, 2, 7)


def test_latest_is_the_latest_instant_in_its_own_offset(tmp_path):
    with SQLiteStore(tmp_path / "s.db") as store:
        store.add_readings([reading(1, "2021-09-29T10:00:00-05:00", 1632927600)])  # 15:00 UTC
        store.add_readings([reading(1, "2021-09-29T16:30:00+02:00", 1632925800)])  # 14:30 UTC
        assert store.latest_timestamp(DEVICE) == "2021-09-29T10:00:00-0500"


def test_one_batch_sets_totals_from_its_latest_reading_whatever_the_order(tmp_path):
    with SQLiteStore(tmp_path / "s.db") as store:
        store.add_readings(
            [
                reading(1, "2021-09-29T12:00:00+00:00", 1632916800),
                reading(2, "2021-09-29T20:00:00+0700", 1632920400),  # the latest instant
                reading(4, "2021-09-29T12:30:00+00:00", 1632918600),
                reading(8, "2021-09-29T14:00:00+01:00", 1632920400),  # same instant: ignored
                reading(16, "2021-09-29T11:00:00+00:00", 1632913200, OTHER),
            ]
        )
        assert store.latest_timestamp(DEVICE) == "2021-09-29T20:00:00+0700"
        assert store.cumulative_count(DEVICE) == 7
        assert store.cumulative_count(OTHER) == 16
        assert store.reading_totals() == (2, 4, 23)


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


def test_records_are_never_overwritten_and_listed_by_clinic(tmp_path):
    def record(test_id, clinic, result="r"):
        return {
            "test_id": test_id,
            "patient_id": "p",
            "clinic_id": clinic,
            "test_type": "blood",
            "result": result,
        }

    with SQLiteStore(tmp_path / "s.db") as store:
        assert store.add_records(
            [record("t1", "A"), record("t2", "B"), record("t1", "A", "new")]
        ) == [True, True, False]
        assert store.add_records([record("t1", "B", "other")]) == [False]
        assert [r["result"] for r in store.records_for_clinic("A")] == ["r"]
        for i in range(2500):
            store.add_records([record(f"bulk{i:05d}", "C")])
        listed = list(store.records_for_clinic("C", page=1000))
        assert [r["test_id"] for r in listed] == [f"bulk{i:05d}" for i in range(2500)]
        assert all(r["created_at"].endswith("Z") for r in listed)
        assert list(store.records_for_clinic("nobody")) == []


def test_a_retried_request_gets_its_first_answer(tmp_path):
    record = {"test_id": "t1", "patient_id": "p", "clinic_id": "c", "test_type": "x", "result": "r"}
    answers = []

    def answer(created: bool) -> RecordAnswer:
        answers.append(created)
        return RecordAnswer(200 if created else 409, json.dumps({"created": created}))

    with SQLiteStore(tmp_path / "s.db") as store:
        first = store.add_record_once(record, "req-1", answer)
        again = store.add_record_once(record, "req-1", answer)
        other = store.add_record_once(record, "req-2", answer)
    assert first == again == RecordAnswer(200, '{"created": true}')
    assert other == RecordAnswer(409, '{"created": false}')
    assert answers == [True, False]


WRITER = textwrap.dedent("""
    import sys
    from patientkit.core.storage import Reading, SQLiteStore
    path, worker = sys.argv[1], int(sys.argv[2])
    store = SQLiteStore(path)
    for batch in range(40):
        readings = [Reading(f"00000000-0000-4000-8000-{device:012d}", 1, "t", batch * 1000 + i)
                    for device in range(5) for i in range(50)]
        store.add_readings(readings)  # all workers write the same readings: duplicates
        own = [Reading(f"00000000-0000-4000-9000-{worker:012d}", 2, "t", batch * 1000 + i)
               for i in range(50)]
        store.add_readings(own)
""")


def test_several_processes_write_one_file_without_loss_or_lock_errors(tmp_path):
    path = tmp_path / "shared.db"
    SQLiteStore(path).close()
    workers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(n)], stderr=subprocess.PIPE)
        for n in range(6)
    ]
    errors = [w.communicate(timeout=300)[1].decode() for w in workers]
    assert [w.returncode for w in workers] == [0] * 6, errors
    with SQLiteStore(path) as store:
        shared = 5 * 40 * 50
        own = 6 * 40 * 50
        assert store.reading_totals() == (5 + 6, shared + own, shared + own * 2)
        assert store.cumulative_count("00000000-0000-4000-8000-000000000003") == 40 * 50
        assert store.cumulative_count("00000000-0000-4000-9000-000000000005") == 40 * 50 * 2


# --- exact totals of any size (issue 9, case 03) -------------------------------------------

MAX = 2**63 - 1


def test_totals_past_int64_are_exact(tmp_path):
    with SQLiteStore(tmp_path / "s.db") as store:
        store.add_readings([reading(MAX, "2021-09-29T16:09:15+01:00", 1632928155)])
        store.add_readings([reading(MAX, "2021-09-29T16:09:16+01:00", 1632928156)])
        assert store.cumulative_count(DEVICE) == 18446744073709551614
        store.add_readings(
            [
                reading(MAX, "2021-09-29T16:09:15+01:00", 1632928155, OTHER),
                *(reading(1, "2021-09-29T16:09:16+01:00", 1632928156 + n, OTHER) for n in range(2)),
                reading(1000, "2021-09-29T16:09:18+01:00", 1632928158, OTHER),
                reading(5, "2021-09-29T16:09:18+01:00", 1632928158, OTHER),  # a duplicate
            ]
        )
        assert store.cumulative_count(OTHER) == 9223372036854776809
        assert store.reading_totals() == (2, 6, 2 * MAX + MAX + 1002)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, MAX), min_size=1, max_size=40), st.integers(1, 7))
def test_any_counts_sum_exactly_whatever_the_batches(tmp_path_factory, counts, per_batch):
    path = tmp_path_factory.mktemp("exact") / "s.db"
    with SQLiteStore(path) as store:
        batch = [
            reading(c, "2021-09-29T16:09:15+01:00", 1632928155 + n) for n, c in enumerate(counts)
        ]
        for start in range(0, len(batch), per_batch):
            store.add_readings(batch[start : start + per_batch])
        store.add_readings(batch[:3])  # duplicates add nothing
        assert store.cumulative_count(DEVICE) == sum(counts)
        assert store.reading_totals() == (1, len(counts), sum(counts))


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

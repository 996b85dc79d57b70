"""The PostgreSQL store (patientkit.postgres) against a real server, and the same
store-level assertions as tests/core/test_storage*.py run against both stores.

The server's URL comes from PATIENTKIT_TEST_POSTGRES (.ci/run sets it); each test gets a
database of its own, dropped after. Without the variable the PostgreSQL cases skip, with
the reason shown (`-ra`)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from patientkit.core import storage
from patientkit.core.model import Reading, RecordAnswer
from patientkit.core.storage import SQLiteStore
from patientkit.errors import UsageError

PG_URL = os.environ.get("PATIENTKIT_TEST_POSTGRES", "")
NO_PG = "PATIENTKIT_TEST_POSTGRES is not set (a PostgreSQL URL; .ci/run sets it)"
needs_pg = pytest.mark.skipif(not PG_URL, reason=NO_PG)

DEVICE = "063c5957-8905-45f9-bfe3-960713788919"
OTHER = "f728b4fa-4248-4e3a-8a5d-2f346baa9455"
MAX = 2**63 - 1


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


def admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(sql)  # type: ignore[arg-type]


@pytest.fixture
def pg_url() -> Iterator[str]:
    """The URL of a new, empty database (dropped after the test)."""
    if not PG_URL:
        pytest.skip(NO_PG)
    name = f"pk_test_{uuid.uuid4().hex[:12]}"
    admin(f"CREATE DATABASE {name}")
    try:
        yield with_database(PG_URL, name)
    finally:
        admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=needs_pg)])
def open_store(request, tmp_path) -> Callable[[], object]:
    """A function that opens the test's store (each call a new instance on one store)."""
    if request.param == "sqlite":
        path = tmp_path / "s.db"
        return lambda: SQLiteStore(path)
    url = request.getfixturevalue("pg_url")
    from patientkit.postgres import PostgresStore

    return lambda: PostgresStore(url)


def reading(count: int, timestamp: str, instant: int, device: str = DEVICE) -> Reading:
    return Reading(device, count, timestamp, instant)


def record(test_id, clinic="C1", result="5.1", patient="P1"):
    return {
        "test_id": test_id,
        "patient_id": patient,
        "clinic_id": clinic,
        "test_type": "glucose",
        "result": result,
    }


# --- the same assertions on both stores ---------------------------------------------------


def test_first_reading_at_an_instant_wins_whatever_its_offset(open_store):
    with open_store() as store:
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
        assert store.add_readings([]) == 0
        assert store.cumulative_count(DEVICE) == 7
        assert store.latest_timestamp(DEVICE) == "2021-09-29T17:00:00+0100"
        assert store.latest_timestamp(OTHER) is None
        assert store.cumulative_count(OTHER) is None
        assert store.reading_totals() == (1, 2, 7)


def test_latest_is_the_latest_instant_in_its_own_offset(open_store):
    with open_store() as store:
        store.add_readings([reading(1, "2021-09-29T10:00:00-05:00", 1632927600)])  # 15:00 UTC
        store.add_readings([reading(1, "2021-09-29T16:30:00+02:00", 1632925800)])  # 14:30 UTC
        assert store.latest_timestamp(DEVICE) == "2021-09-29T10:00:00-0500"


def test_one_batch_sets_totals_from_its_latest_reading_whatever_the_order(open_store):
    with open_store() as store:
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


def test_totals_past_int64_are_exact(open_store):
    with open_store() as store:
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


def test_huge_totals_of_many_readings_are_exact(open_store):
    with open_store() as store:
        batch = [reading(MAX, "t", n) for n in range(20_000)]
        assert store.add_readings(batch) == 20_000
        assert store.add_readings([reading(MAX - 1, "t", n, OTHER) for n in range(3)]) == 3
        assert store.cumulative_count(DEVICE) == 20_000 * MAX
        assert store.reading_totals() == (2, 20_003, 20_000 * MAX + 3 * (MAX - 1))


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.integers(1, MAX), min_size=1, max_size=40), st.integers(1, 7))
def test_any_counts_sum_exactly_whatever_the_batches(open_store, counts, per_batch):
    device = str(uuid.uuid4())  # the store is shared by the examples: a device of its own
    with open_store() as store:
        devices, readings, total = store.reading_totals()
        batch = [
            reading(c, "2021-09-29T16:09:15+01:00", 1632928155 + n, device)
            for n, c in enumerate(counts)
        ]
        for start in range(0, len(batch), per_batch):
            store.add_readings(batch[start : start + per_batch])
        assert store.add_readings(batch[:3]) == 0  # duplicates add nothing
        assert store.cumulative_count(device) == sum(counts)
        assert store.reading_totals() == (devices + 1, readings + len(counts), total + sum(counts))


def test_records_are_never_overwritten_and_listed_by_clinic(open_store):
    with open_store() as store:
        assert store.add_records(
            [record("t1", "A"), record("t2", "B"), record("t1", "A", "new")]
        ) == [True, True, False]
        assert store.add_records([record("t1", "B", "other")]) == [False]
        assert [r["result"] for r in store.records_for_clinic("A")] == ["5.1"]
        for i in range(600):
            store.add_records([record(f"bulk{i:05d}", "C")])
        listed = list(store.records_for_clinic("C", page=250))
        assert [r["test_id"] for r in listed] == [f"bulk{i:05d}" for i in range(600)]
        assert all(r["created_at"].endswith("Z") for r in listed)
        assert list(store.records_for_clinic("nobody")) == []


def test_created_flags_duplicates_in_the_batch_and_in_the_store(open_store):
    with open_store() as store:
        assert store.add_records([record("A"), record("B")]) == [True, True]
        flags = store.add_records(
            [record("C"), record("A", result="changed"), record("C", result="second"), record("D")]
        )
        assert flags == [True, False, False, True]
        assert store.record_count() == 4
        assert [r["result"] for r in store.records_for_clinic("C1")] == ["5.1"] * 4
        assert store.add_records([]) == []


@pytest.mark.parametrize("size", [30, 400])  # a few (arrays) and many (COPY) on PostgreSQL
def test_large_batches_with_duplicates_in_and_out(open_store, size):
    with open_store() as store:
        store.add_records([record(f"T{i:04d}") for i in range(0, size, 2)])
        batch = [record(f"T{i:04d}") for i in range(size)] + [record("T0001", result="late")]
        assert store.add_records(batch) == [i % 2 == 1 for i in range(size)] + [False]
        assert store.record_count() == size
        results = {r["test_id"]: r["result"] for r in store.records_for_clinic("C1")}
        assert results["T0001"] == "5.1"


def test_every_record_gets_a_utc_created_at(open_store):
    with open_store() as store:
        store.add_records([record("A")])
        (listed,) = store.records_for_clinic("C1")
    created_at = listed["created_at"]
    assert len(created_at) == len("2025-01-02T03:04:05.123456Z") and created_at.endswith("Z")


def test_a_repeated_request_id_gets_the_first_answer(open_store):
    asked = []

    def answer(created):
        asked.append(created)
        return RecordAnswer(200 if created else 409, "created" if created else "conflict")

    with open_store() as store:
        assert store.add_record_once(record("A"), "r1", answer) == RecordAnswer(200, "created")
        assert store.add_record_once(record("A"), "r1", answer) == RecordAnswer(200, "created")
        assert store.add_record_once(record("A"), "r2", answer) == RecordAnswer(409, "conflict")
        assert store.add_record_once(record("B"), "r1", answer) == RecordAnswer(200, "created")
        assert store.record_count() == 2
    assert asked == [True, False, True]


def test_a_group_is_answered_as_if_each_came_alone(open_store):
    def answer(rec, created):
        return RecordAnswer(200 if created else 409, f"{rec['test_id']}:{rec['result']}")

    with open_store() as store:
        assert store.add_record_once(record("A"), "old", lambda c: answer(record("A"), c)) == (
            RecordAnswer(200, "A:5.1")
        )
        answers = store.add_records_once(
            [
                (record("A", result="x"), "old"),  # answered before: the first answer
                (record("A", result="y"), "new"),  # a stored test_id: 409
                (record("B", result="1"), "r"),  # created
                (record("B", result="2"), "r"),  # the same request again: its first answer
                (record("B", result="3"), "s"),  # the same test_id, another request: 409
                (record("C", result="1"), None),  # not remembered
                (record("C", result="2"), None),
            ],
            answer,
        )
        assert answers == [
            RecordAnswer(200, "A:5.1"),
            RecordAnswer(409, "A:y"),
            RecordAnswer(200, "B:1"),
            RecordAnswer(200, "B:1"),
            RecordAnswer(409, "B:3"),
            RecordAnswer(200, "C:1"),
            RecordAnswer(409, "C:2"),
        ]
        assert store.add_records_once([], answer) == []
        again = store.add_records_once([(record("B", result="9"), "s")], answer)
        assert again == [RecordAnswer(409, "B:3")]
        assert store.record_count() == 3


def test_a_batch_is_stored_once_per_request_id(open_store):
    def answer(created):
        return json.dumps({"created": created})

    with open_store() as store:
        batch = [record("A"), record("B"), record("A", result="x")]
        assert store.add_batch_once(batch, "req", answer) == (
            '{"created": [true, true, false]}',
            False,
        )
        assert store.add_batch_once([record("Z")], "req", answer) == (
            '{"created": [true, true, false]}',
            True,
        )
        assert store.add_batch_once([record("B"), record("C")], None, answer) == (
            '{"created": [false, true]}',
            False,
        )
        assert store.add_batch_once([], "empty", answer) == ('{"created": []}', False)
        assert store.record_count() == 3


def test_records_of_a_clinic_in_pages_oldest_first(open_store):
    with open_store() as store:
        store.add_records([record(f"X{i:04d}", clinic="C1" if i % 3 else "C2") for i in range(50)])
        store.add_records([record("A-late", clinic="C1")])
        listed = list(store.records_for_clinic("C1", page=7))
        assert [r["test_id"] for r in listed] == [f"X{i:04d}" for i in range(50) if i % 3] + [
            "A-late"
        ]
        assert set(listed[0]) == {*storage.RECORD_FIELDS, "created_at"}
        first = store.records_page("C1", None, 3)
        assert [r["test_id"] for r in first] == ["X0001", "X0002", "X0004"]
        after = (first[-1]["created_at"], first[-1]["test_id"])
        assert [r["test_id"] for r in store.records_page("C1", after, 2)] == ["X0005", "X0007"]
        assert list(store.records_for_clinic("none")) == []


def test_threads_with_their_own_stores_lose_and_double_nothing(open_store):
    open_store().close()
    created = []

    def work(n):
        with open_store() as store:
            for start in range(0, 400, 40):
                batch = [record(f"T{(n * 100 + i) % 1000:04d}") for i in range(start, start + 40)]
                created.append(sum(store.add_records(batch)))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    unique = {(n * 100 + i) % 1000 for n in range(6) for i in range(400)}
    with open_store() as store:
        assert store.record_count() == len(unique) == sum(created)


# --- PostgreSQL only ------------------------------------------------------------------------


def test_without_a_server_the_error_is_one_line_and_hides_the_password():
    pytest.importorskip("psycopg")
    from patientkit.postgres import PostgresStore
    from patientkit.stores import shown as masked

    url = "postgresql://someone:s3cret-pw@127.0.0.1:1/nowhere"
    assert masked(url) == "postgresql://someone:***@127.0.0.1:1/nowhere"
    assert masked("postgres://u@h/db") == "postgres://u@h/db"
    assert masked("postgresql://u@h/db?sslmode=require&password=pw1") == (
        "postgresql://u@h/db?sslmode=require&password=***"
    )
    assert masked("host=h password=pw2 dbname=d") == "host=h password=*** dbname=d"
    with pytest.raises(UsageError) as caught:
        PostgresStore(url)
    message = str(caught.value)
    assert message.startswith(
        "cannot open the store postgresql://someone:***@127.0.0.1:1/nowhere: "
    )
    assert "s3cret" not in message and "\n" not in message


@needs_pg
def test_a_password_never_shows_in_an_error(pg_url):
    from patientkit.postgres import PostgresStore

    parts = urlsplit(pg_url)
    wrong = urlunsplit(parts._replace(netloc=f"nobody_here:pw-{uuid.uuid4().hex}@{parts.hostname}"))
    with pytest.raises(UsageError) as caught:
        PostgresStore(wrong)
    assert "pw-" not in str(caught.value) and ":***@" in str(caught.value)


@needs_pg
def test_shared_instance_across_threads(pg_url):
    """The server holds one PostgresStore for all its threads (a pool inside)."""
    from patientkit.postgres import PostgresStore

    with PostgresStore(pg_url, pool_size=4) as store:

        def work(n):
            for b in range(10):
                store.add_readings([reading(1, "t", b * 100 + i) for i in range(100)])
                store.add_readings([reading(2, "t", b * 100 + i, f"dev-{n}") for i in range(100)])
                store.add_records(
                    [record(f"R{(n * 50 + b * 10 + i) % 300:04d}") for i in range(10)]
                )

        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert store.reading_totals() == (9, 1000 + 8 * 1000, 1000 + 8 * 2000)
        assert store.record_count() == len(
            {(n * 50 + i) % 300 for n in range(8) for i in range(100)}
        )


@needs_pg
def test_schema_version_info_and_a_newer_schema(pg_url):
    import psycopg

    from patientkit.postgres import SCHEMA_VERSION, PostgresStore, describe

    empty = {"backend": "postgresql", "schema_version": 0, "readings": 0, "devices": 0}
    assert describe(pg_url) == {**empty, "records": 0, "clinics": 0, "bytes": 0}  # not created
    with PostgresStore(pg_url) as store:
        assert store.schema_version() == SCHEMA_VERSION == 1
        store.add_readings([reading(3, "t", 1), reading(4, "t", 2, OTHER)])
        store.add_records([record("A", clinic="C1"), record("B", clinic="C2"), record("C")])
        info = store.info()
    assert describe(pg_url) == info
    size = info.pop("bytes")
    assert isinstance(size, int) and size > 0
    assert info == {
        "backend": "postgresql",
        "schema_version": 1,
        "readings": 2,
        "devices": 2,
        "records": 3,
        "clinics": 2,
    }
    with PostgresStore(pg_url) as store:  # opened again: nothing to migrate
        assert store.record_count() == 3
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE patientkit_schema SET version = 99")
    with pytest.raises(UsageError, match="schema version 99, newer than this patientkit"):
        PostgresStore(pg_url)


@needs_pg
def test_records_use_the_clinic_index(pg_url):
    import psycopg

    from patientkit.postgres import PostgresStore

    with PostgresStore(pg_url) as store:
        store.add_records([record(f"X{i:04d}", clinic=f"C{i % 20}") for i in range(2000)])
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("ANALYZE test_records")
        plan = "\n".join(
            row[0]
            for row in conn.execute(
                "EXPLAIN SELECT * FROM test_records WHERE clinic_id = %s "
                "AND (created_at, test_id) > (%s, %s) ORDER BY created_at, test_id LIMIT 5",
                ("C1", "", ""),
            )
        )
    assert "test_records_clinic" in plan


FIRST_USER = textwrap.dedent("""
    import sys, time
    from patientkit.postgres import PostgresStore
    url, start = sys.argv[1], float(sys.argv[2])
    time.sleep(max(0.0, start - time.time()))
    with PostgresStore(url) as store:
        print(store.schema_version(), store.add_readings([]))
""")


@needs_pg
def test_concurrent_first_users_do_not_race_the_migration(pg_url):
    start = time.time() + 3.0  # every process imported and waiting by then
    users = [
        subprocess.Popen(
            [sys.executable, "-c", FIRST_USER, pg_url, str(start)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(6)
    ]
    outcomes = [user.communicate(timeout=120) for user in users]
    assert [user.returncode for user in users] == [0] * 6, [err.decode() for _, err in outcomes]
    assert [out.decode() for out, _ in outcomes] == ["1 0\n"] * 6
    import psycopg

    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*), max(version) FROM patientkit_schema").fetchone() == (
            1,
            1,
        )


WRITER = textwrap.dedent("""
    import sys
    from patientkit.core.model import Reading
    from patientkit.postgres import PostgresStore
    url, worker = sys.argv[1], int(sys.argv[2])
    store = PostgresStore(url)
    created = 0
    for batch in range(40):
        readings = [Reading(f"00000000-0000-4000-8000-{device:012d}", 1, "t", batch * 1000 + i)
                    for device in range(5) for i in range(50)]
        store.add_readings(readings)  # all workers write the same readings: duplicates
        own = [Reading(f"00000000-0000-4000-9000-{worker:012d}", 2, "t", batch * 1000 + i)
               for i in range(50)]
        store.add_readings(own)
        records = [{"test_id": f"T{(worker * 7 + batch) % 60:03d}-{i}", "patient_id": "p",
                    "clinic_id": f"C{i % 3}", "test_type": "x", "result": str(worker)}
                   for i in range(30)]
        created += sum(store.add_records(records))
    store.close()
    print(created)
""")


@needs_pg
def test_many_writer_processes_lose_nothing_and_double_nothing(pg_url):
    from patientkit.postgres import PostgresStore

    PostgresStore(pg_url).close()
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, pg_url, str(n)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for n in range(6)
    ]
    outcomes = [w.communicate(timeout=300) for w in workers]
    assert [w.returncode for w in workers] == [0] * 6, [err.decode() for _, err in outcomes]
    created = sum(int(out) for out, _ in outcomes)
    unique = {(n * 7 + b) % 60 for n in range(6) for b in range(40)}
    with PostgresStore(pg_url) as store:
        shared = 5 * 40 * 50
        own = 6 * 40 * 50
        assert store.reading_totals() == (5 + 6, shared + own, shared + own * 2)
        assert store.cumulative_count("00000000-0000-4000-8000-000000000003") == 40 * 50
        assert store.cumulative_count("00000000-0000-4000-9000-000000000005") == 40 * 50 * 2
        assert store.record_count() == len(unique) * 30 == created
        listed = [r for c in ("C0", "C1", "C2") for r in store.records_for_clinic(c, page=100)]
        assert len(listed) == len({r["test_id"] for r in listed}) == created


def kill_when_busy(url: str, application: str, query: str, done: threading.Event) -> list[int]:
    """Terminate (once) the backend of `application` as soon as it runs a statement that
    starts with `query`; returns the pids killed."""
    import psycopg

    killed: list[int] = []
    with psycopg.connect(url, autocommit=True) as conn:
        while not done.is_set() and not killed:
            for (pid,) in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s"
                " AND state = 'active' AND query LIKE %s",
                (application, query + "%"),
            ).fetchall():
                if conn.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,):
                    killed.append(pid)
            time.sleep(0.001)
    return killed


@needs_pg
@pytest.mark.parametrize("statement", ["COPY pk_readings", "\n    WITH batch AS"])
def test_a_connection_killed_mid_batch_is_retried_and_nothing_is_half_applied(pg_url, statement):
    from patientkit.postgres import PostgresStore

    url = pg_url + "?application_name=pk_victim"
    batch = [reading(n % 7 + 1, "t", n, f"dev-{n % 50}") for n in range(200_000)]
    expected = sum(n % 7 + 1 for n in range(200_000))
    with PostgresStore(url) as store:
        store.add_readings(batch[:10])
        done = threading.Event()
        killed: list[int] = []
        killer = threading.Thread(
            target=lambda: killed.extend(kill_when_busy(pg_url, "pk_victim", statement, done))
        )
        killer.start()
        try:
            assert store.add_readings(batch) == 200_000 - 10
        finally:
            done.set()
            killer.join()
        assert len(killed) == 1  # the batch did die once, and was retried whole
        assert store.reading_totals() == (50, 200_000, expected)
        assert store.add_records([record("after")]) == [True]  # the pool recovered


@needs_pg
def test_a_reading_a_concurrent_writer_stores_meanwhile_is_counted_once(pg_url):
    """A key stored by a transaction still open when the batch comes: the batch waits for
    it, then skips that key (the anti-join missed it: redone as ON CONFLICT DO NOTHING)."""
    import psycopg

    from patientkit.postgres import PostgresStore

    with PostgresStore(pg_url) as store, psycopg.connect(pg_url) as other:
        store.add_readings([reading(1, "t", 1)])
        other.execute(
            "INSERT INTO readings (device_id, instant, count, timestamp)"
            " VALUES (%s, 2, 40, 'theirs')",
            (DEVICE,),
        )
        other.execute(
            "UPDATE devices SET cumulative_count = cumulative_count + 40, latest_instant = 2,"
            " latest_timestamp = 'theirs' WHERE device_id = %s",
            (DEVICE,),
        )
        added: list[int] = []
        writer = threading.Thread(
            target=lambda: added.append(
                store.add_readings([reading(5, "ours", 2), reading(7, "ours", 3)])
            )
        )
        writer.start()
        time.sleep(0.5)
        assert writer.is_alive()  # waiting for the other transaction's key
        other.commit()
        writer.join(timeout=30)
        assert added == [1]
        assert store.cumulative_count(DEVICE) == 1 + 40 + 7
        assert store.latest_timestamp(DEVICE) == "ours"
        assert store.reading_totals() == (1, 3, 48)


class DropAfterCommit:
    """A TCP proxy to PostgreSQL that, once armed, forwards a client's COMMIT and then cuts
    the connection before the server's answer reaches the client: the transaction
    committed, and the client cannot know (a network failure at the worst moment)."""

    COMMIT = b"Q\x00\x00\x00\x0bCOMMIT\x00"

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.armed = threading.Event()
        self.dropped = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            cut = threading.Event()
            threading.Thread(target=self._up, args=(client, server, cut), daemon=True).start()
            threading.Thread(target=self._down, args=(server, client, cut), daemon=True).start()

    def _up(self, client, server, cut) -> None:
        while data := _recv(client):
            if self.armed.is_set() and self.COMMIT in data:
                self.armed.clear()
                cut.set()
            server.sendall(data)
        with contextlib.suppress(OSError):
            server.shutdown(socket.SHUT_RDWR)
        server.close()

    def _down(self, server, client, cut) -> None:
        while data := _recv(server):
            if cut.is_set():  # the answer to COMMIT: never delivered
                self.dropped += 1
                break
            client.sendall(data)
        for sock in (client, server):  # shutdown: a recv blocked in _up would keep it open
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self.listener.close()


def _recv(sock) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:
        return b""


@needs_pg
def test_a_connection_lost_after_commit_is_neither_applied_twice_nor_misreported(pg_url):
    """The COMMIT went through but its answer was lost: the store learns from the
    transaction's id that it committed, and answers as if nothing had happened."""
    from patientkit.postgres import PostgresStore

    parts = urlsplit(pg_url)
    proxy = DropAfterCommit(parts.hostname or "127.0.0.1", parts.port or 5432)
    url = urlunsplit(
        parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}", query="sslmode=disable")
    )
    try:
        with PostgresStore(url) as store:
            proxy.armed.set()
            assert store.add_readings([reading(3, "t", n) for n in range(1000)]) == 1000
            assert proxy.dropped == 1
            assert store.reading_totals() == (1, 1000, 3000)

            proxy.armed.set()
            assert store.add_records([record("A"), record("B"), record("A")]) == [
                True,
                True,
                False,
            ]
            assert proxy.dropped == 2

            proxy.armed.set()
            body = store.add_batch_once([record("C")], "req", lambda created: str(created))
            assert body == ("[True]", False)
            assert proxy.dropped == 3
            assert store.add_batch_once([record("C")], "req", str) == ("[True]", True)
            assert store.record_count() == 3
    finally:
        proxy.close()

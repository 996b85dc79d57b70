"""What every store must do (`patientkit.core.store.Store`), on both stores: SQLite (a
file) and PostgreSQL (a fresh store, a schema of its own, on the server in
PATIENTKIT_TEST_POSTGRES; without
it those cases skip, with the reason shown by `-ra`). Each store opens through
`patientkit.stores.open_store(target)`, as the commands and the server open it.

What only one store has stays beside it: tests/core/test_storage*.py (SQLite: statement
limits, migrations, the query plan) and tests/test_postgres.py (PostgreSQL: the pool, the
advisory-locked migration, dropped connections, passwords in errors)."""

from __future__ import annotations

import json
import textwrap
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from patientkit.core.model import RECORD_FIELDS, Reading, RecordAnswer
from patientkit.core.store import Store
from patientkit.stores import is_url, open_store
from tests.helpers import examples, run_forked_at_once
from tests.pg import STORES, new_store

DEVICE = "063c5957-8905-45f9-bfe3-960713788919"
OTHER = "f728b4fa-4248-4e3a-8a5d-2f346baa9455"
MAX = 2**63 - 1


def reading(count: int, timestamp: str, instant: int, device: str = DEVICE) -> Reading:
    return Reading(device, count, timestamp, instant)


def record(
    test_id: str, clinic: str = "C1", result: str = "5.1", patient: str = "P1"
) -> dict[str, str]:
    return {
        "test_id": test_id,
        "patient_id": patient,
        "clinic_id": clinic,
        "test_type": "glucose",
        "result": result,
    }


@pytest.fixture(params=STORES)
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The test's store: a SQLite file's path, or the URL of a new PostgreSQL store (a
    schema, dropped after the test)."""
    if request.param == "sqlite":
        yield str(tmp_path / "s.db")
        return
    pytest.importorskip("psycopg")
    with new_store() as url:
        yield url


@pytest.fixture
def opened(target: str) -> Callable[[], Store]:
    """A function that opens the test's store (each call a new instance on one store)."""
    return lambda: open_store(target)


@pytest.fixture
def one_store(opened: Callable[[], Store]) -> Iterator[Store]:
    """The test's store, opened once for all of a property test's examples (opening a
    PostgreSQL store is two connections: some 30 ms of the server's CPU each time)."""
    with opened() as store:
        yield store


# --- readings -------------------------------------------------------------------------------


def test_first_reading_at_an_instant_wins_whatever_its_offset(opened):
    with opened() as store:
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


def test_latest_is_the_latest_instant_in_its_own_offset(opened):
    with opened() as store:
        store.add_readings([reading(1, "2021-09-29T10:00:00-05:00", 1632927600)])  # 15:00 UTC
        store.add_readings([reading(1, "2021-09-29T16:30:00+02:00", 1632925800)])  # 14:30 UTC
        assert store.latest_timestamp(DEVICE) == "2021-09-29T10:00:00-0500"


def test_one_batch_sets_totals_from_its_latest_reading_whatever_the_order(opened):
    with opened() as store:
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


# --- exact totals of any size (issue 9, case 03) ---------------------------------------------


def test_totals_past_int64_are_exact(opened):
    with opened() as store:
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


def test_huge_totals_of_many_readings_are_exact(opened):
    with opened() as store:
        batch = [reading(MAX, "t", n) for n in range(20_000)]
        assert store.add_readings(batch) == 20_000
        assert store.add_readings([reading(MAX - 1, "t", n, OTHER) for n in range(3)]) == 3
        assert store.cumulative_count(DEVICE) == 20_000 * MAX
        assert store.reading_totals() == (2, 20_003, 20_000 * MAX + 3 * (MAX - 1))


@settings(
    max_examples=examples(40),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(st.lists(st.integers(1, MAX), min_size=1, max_size=40), st.integers(1, 7))
def test_any_counts_sum_exactly_whatever_the_batches(one_store, counts, per_batch):
    device = str(uuid.uuid4())  # the store is shared by the examples: a device of its own
    devices, readings, total = one_store.reading_totals()
    batch = [
        reading(c, "2021-09-29T16:09:15+01:00", 1632928155 + n, device)
        for n, c in enumerate(counts)
    ]
    for start in range(0, len(batch), per_batch):
        one_store.add_readings(batch[start : start + per_batch])
    assert one_store.add_readings(batch[:3]) == 0  # duplicates add nothing
    assert one_store.cumulative_count(device) == sum(counts)
    assert one_store.reading_totals() == (devices + 1, readings + len(counts), total + sum(counts))


# --- records --------------------------------------------------------------------------------


def test_records_are_never_overwritten_and_listed_by_clinic(opened):
    with opened() as store:
        assert store.add_records(
            [record("t1", "A"), record("t2", "B"), record("t1", "A", "new")]
        ) == [True, True, False]
        assert store.add_records([record("t1", "B", "other")]) == [False]
        assert [r["result"] for r in store.records_for_clinic("A")] == ["5.1"]
        for start in range(0, 600, 10):  # 60 created_at, 10 records each: pages cut ties
            store.add_records([record(f"bulk{i:05d}", "C") for i in range(start, start + 10)])
        listed = list(store.records_for_clinic("C", page=250))
        assert [r["test_id"] for r in listed] == [f"bulk{i:05d}" for i in range(600)]
        assert all(r["created_at"].endswith("Z") for r in listed)
        assert list(store.records_for_clinic("nobody")) == []


def test_created_flags_duplicates_in_the_batch_and_in_the_store(opened):
    with opened() as store:
        assert store.add_records([record("A"), record("B")]) == [True, True]
        flags = store.add_records(
            [record("C"), record("A", result="changed"), record("C", result="second"), record("D")]
        )
        assert flags == [True, False, False, True]
        assert store.record_count() == 4
        assert [r["result"] for r in store.records_for_clinic("C1")] == ["5.1"] * 4
        assert store.add_records([]) == []


@pytest.mark.parametrize("size", [30, 400])  # a few (arrays) and many (COPY) on PostgreSQL
def test_large_batches_with_duplicates_in_and_out(opened, size):
    with opened() as store:
        store.add_records([record(f"T{i:04d}") for i in range(0, size, 2)])
        batch = [record(f"T{i:04d}") for i in range(size)] + [record("T0001", result="late")]
        assert store.add_records(batch) == [i % 2 == 1 for i in range(size)] + [False]
        assert store.record_count() == size
        results = {r["test_id"]: r["result"] for r in store.records_for_clinic("C1")}
        assert results["T0001"] == "5.1"


def test_every_record_gets_a_utc_created_at(opened):
    with opened() as store:
        store.add_records([record("A")])
        (listed,) = store.records_for_clinic("C1")
    created_at = listed["created_at"]
    assert len(created_at) == len("2025-01-02T03:04:05.123456Z") and created_at.endswith("Z")


def test_a_repeated_request_id_gets_the_first_answer(opened):
    asked = []

    def answer(created):
        asked.append(created)
        return RecordAnswer(200 if created else 409, "created" if created else "conflict")

    with opened() as store:
        assert store.add_record_once(record("A"), "r1", answer) == RecordAnswer(200, "created")
        assert store.add_record_once(record("A"), "r1", answer) == RecordAnswer(200, "created")
        assert store.add_record_once(record("A"), "r2", answer) == RecordAnswer(409, "conflict")
        assert store.add_record_once(record("B"), "r1", answer) == RecordAnswer(200, "created")
        assert store.record_count() == 2
    assert asked == [True, False, True]


def test_a_group_is_answered_as_if_each_came_alone(opened):
    def answer(rec, created):
        return RecordAnswer(200 if created else 409, f"{rec['test_id']}:{rec['result']}")

    with opened() as store:
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


def test_a_batch_is_stored_once_per_request_id(opened):
    def answer(created):
        return json.dumps({"created": created})

    with opened() as store:
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


def test_records_of_a_clinic_in_pages_oldest_first(opened):
    with opened() as store:
        store.add_records([record(f"X{i:04d}", clinic="C1" if i % 3 else "C2") for i in range(50)])
        store.add_records([record("A-late", clinic="C1")])
        listed = list(store.records_for_clinic("C1", page=7))
        assert [r["test_id"] for r in listed] == [f"X{i:04d}" for i in range(50) if i % 3] + [
            "A-late"
        ]
        assert set(listed[0]) == {*RECORD_FIELDS, "created_at"}
        first = store.records_page("C1", None, 3)
        assert [r["test_id"] for r in first] == ["X0001", "X0002", "X0004"]
        after = (first[-1]["created_at"], first[-1]["test_id"])
        assert [r["test_id"] for r in store.records_page("C1", after, 2)] == ["X0005", "X0007"]
        assert list(store.records_for_clinic("none")) == []


# --- concurrent writers ---------------------------------------------------------------------


def test_threads_with_their_own_stores_lose_and_double_nothing(opened):
    opened().close()
    created = []

    def work(n):
        with opened() as store:
            for start in range(0, 400, 40):
                batch = [record(f"T{(n * 100 + i) % 1000:04d}") for i in range(start, start + 40)]
                created.append(sum(store.add_records(batch)))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    unique = {(n * 100 + i) % 1000 for n in range(6) for i in range(400)}
    with opened() as store:
        assert store.record_count() == len(unique) == sum(created)


BATCHES = 10  # each writer's: enough to overlap the others' many times (PostgreSQL: some
# 10 batches a run meet a key another writer stored meanwhile, as many as with 20)

WRITER = textwrap.dedent(f"""
    import sys
    from patientkit.core.model import Reading
    from patientkit.stores import is_url, open_store
    target, worker = sys.argv[1], int(sys.argv[2])
    store = open_store(target)
    created = 0
    for batch in range({BATCHES}):
        readings = [Reading(f"00000000-0000-4000-8000-{{device:012d}}", 1, "t", batch * 1000 + i)
                    for device in range(5) for i in range(50)]
        store.add_readings(readings)  # all workers write the same readings: duplicates
        own = [Reading(f"00000000-0000-4000-9000-{{worker:012d}}", 2, "t", batch * 1000 + i)
               for i in range(50)]
        store.add_readings(own)
        records = [{{"test_id": f"T{{(worker * 7 + batch) % 60:03d}}-{{i}}", "patient_id": "p",
                    "clinic_id": f"C{{i % 3}}", "test_type": "x", "result": str(worker)}}
                   for i in range(30)]
        created += sum(store.add_records(records))
    store.close()
    print(created)
""")


def test_many_writer_processes_lose_nothing_double_nothing_and_see_no_lock_errors(target, opened):
    opened().close()
    module = "patientkit.postgres" if is_url(target) else "patientkit.core.storage"
    outcomes = run_forked_at_once(
        WRITER, [[target, str(n)] for n in range(6)], imports=("patientkit.stores", module)
    )
    assert [code for code, _, _ in outcomes] == [0] * 6, [err.decode() for *_, err in outcomes]
    created = sum(int(out) for _, out, _ in outcomes)
    unique = {(n * 7 + b) % 60 for n in range(6) for b in range(BATCHES)}
    with opened() as store:
        shared = 5 * BATCHES * 50
        own = 6 * BATCHES * 50
        assert store.reading_totals() == (5 + 6, shared + own, shared + own * 2)
        assert store.cumulative_count("00000000-0000-4000-8000-000000000003") == BATCHES * 50
        assert store.cumulative_count("00000000-0000-4000-9000-000000000005") == BATCHES * 50 * 2
        assert store.record_count() == len(unique) * 30 == created
        listed = [r for c in ("C0", "C1", "C2") for r in store.records_for_clinic(c, page=100)]
        assert len(listed) == len({r["test_id"] for r in listed}) == created

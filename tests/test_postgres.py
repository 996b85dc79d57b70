"""What only the PostgreSQL store (patientkit.postgres) has, against a real server: errors
that hide the password, one instance shared by threads (a pool), its schema table and
`describe`, the advisory-locked first migration, connections killed or cut mid-batch and
after COMMIT. What every store must do, on both stores: tests/core/test_store.py.

The server's URL comes from PATIENTKIT_TEST_POSTGRES (.ci/run sets it); each test gets a
store of its own (a schema; the first users, a new database), dropped after (tests/pg.py).
Without the variable these tests skip, with the reason shown (`-ra`)."""

from __future__ import annotations

import contextlib
import socket
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

from patientkit.errors import UsageError
from tests.core.test_store import DEVICE, OTHER, reading, record
from tests.helpers import run_forked_at_once
from tests.pg import needs_pg, new_database, new_store, with_query


@pytest.fixture
def pg_url() -> Iterator[str]:
    """The URL of a new, empty store (a schema of its own, dropped after the test)."""
    with new_store() as url:
        yield url


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

    rounds = 5  # of each thread's: a batch of shared readings, one of its own, 10 records
    with PostgresStore(pg_url, pool_size=4) as store:

        def work(n):
            for b in range(rounds):
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
        each = rounds * 100  # readings of a device
        assert store.reading_totals() == (9, each + 8 * each, each + 8 * 2 * each)
        assert store.record_count() == len(
            {(n * 50 + i) % 300 for n in range(8) for i in range(rounds * 10)}
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
    import sys
    from patientkit.postgres import PostgresStore
    with PostgresStore(sys.argv[1]) as store:
        print(store.schema_version(), store.add_readings([]))
""")


@needs_pg
def test_concurrent_first_users_do_not_race_the_migration():
    """Four processes (forked once imported: all go at once) open a new database's store
    first; four race as six did: the lock lets one in."""
    with new_database() as url:  # a new database: its first users, in its default schema
        outcomes = run_forked_at_once(FIRST_USER, [[url]] * 4, imports=("patientkit.postgres",))
        assert [code for code, _, _ in outcomes] == [0] * 4, [err.decode() for *_, err in outcomes]
        assert [out.decode() for _, out, _ in outcomes] == ["1 0\n"] * 4
        import psycopg

        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT count(*), max(version) FROM patientkit_schema").fetchone()
        assert row == (1, 1)


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

    url = with_query(pg_url, application_name="pk_victim")
    size = 100_000  # a statement of some 0.1 s or more: the killer sees it running
    batch = [reading(n % 7 + 1, "t", n, f"dev-{n % 50}") for n in range(size)]
    expected = sum(n % 7 + 1 for n in range(size))
    with PostgresStore(url) as store:
        store.add_readings(batch[:10])
        done = threading.Event()
        killed: list[int] = []
        killer = threading.Thread(
            target=lambda: killed.extend(kill_when_busy(pg_url, "pk_victim", statement, done))
        )
        killer.start()
        try:
            assert store.add_readings(batch) == size - 10
        finally:
            done.set()
            killer.join()
        assert len(killed) == 1  # the batch did die once, and was retried whole
        assert store.reading_totals() == (50, size, expected)
        assert store.add_records([record("after")]) == [True]  # the pool recovered


def blocked_by(pid: int, timeout: float = 30) -> None:
    """Until a session waits for a lock that backend `pid` holds (pg_blocking_pids)."""
    import psycopg

    from tests.pg import PG_URL

    deadline = time.monotonic() + timeout
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        query = "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))"
        while conn.execute(query, (pid,)).fetchone() == (0,):
            assert time.monotonic() < deadline, f"nothing waited for backend {pid}"
            time.sleep(0.01)


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
        blocked_by(other.info.backend_pid)  # the batch waits for the other transaction
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
    url = urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}"))
    url = with_query(url, sslmode="disable")
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

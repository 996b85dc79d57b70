"""PostgreSQL for tests: the server's URL from PATIENTKIT_TEST_POSTGRES (.ci/run sets it),
a fresh store per caller (a schema of its own; a database of its own where the test is
about a new database), and a dump of what a store holds about readings and records
that is the same on both stores (to compare a PostgreSQL run with a SQLite one)."""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest

PG_URL = os.environ.get("PATIENTKIT_TEST_POSTGRES", "")
NO_PG = "PATIENTKIT_TEST_POSTGRES is not set (a PostgreSQL URL; .ci/run sets it)"
needs_pg = pytest.mark.skipif(not PG_URL, reason=NO_PG)
STORES = ["sqlite", pytest.param("postgresql", marks=needs_pg)]  # parametrize over both


def admin(statement: str) -> None:
    import psycopg

    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(statement)  # type: ignore[arg-type]


def with_query(url: str, **parameters: str) -> str:
    """`url` with these query parameters added to (or replacing) those it has."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    return urlunsplit(parts._replace(query=urlencode({**query, **parameters})))


@contextmanager
def new_database() -> Iterator[str]:
    """The URL of a new, empty database on the test server, dropped after. For the tests
    of a store's first use in a new database; any other wants `new_store` (CREATE
    DATABASE copies the template's 7.5 MB: some 0.25 CPU-s of the server's each)."""
    if not PG_URL:
        pytest.skip(NO_PG)
    name = f"pk_test_{uuid.uuid4().hex[:12]}"
    admin(f"CREATE DATABASE {name}")
    try:
        yield urlunsplit(urlsplit(PG_URL)._replace(path="/" + name))
    finally:
        admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@contextmanager
def new_store() -> Iterator[str]:
    """The URL of a new, empty store on the test server: a schema of its own in the test
    database, its connections' search_path (libpq `options`), dropped after. The store
    keeps everything in its connections' current schema (its tables, the advisory lock
    of its first migration), so a new schema is a new store, for a few ms of the
    server's CPU instead of a new database's 0.25 s."""
    if not PG_URL:
        pytest.skip(NO_PG)
    name = f"pk_test_{uuid.uuid4().hex[:12]}"
    admin(f"CREATE SCHEMA {name}")
    try:
        yield with_query(PG_URL, options=f"-csearch_path={name}")
    finally:
        _drop_schema(name)


def _drop_schema(name: str) -> None:
    """Drop the schema `name` and all in it; first end the sessions that hold a lock on
    anything in it (a writer killed mid-transaction whose backend has not noticed yet),
    as DROP DATABASE … WITH (FORCE) did."""
    import psycopg

    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(l.pid) FROM pg_locks l"
            " JOIN pg_class c ON c.oid = l.relation"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND l.pid <> pg_backend_pid()",
            (name,),
        )
        conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")  # type: ignore[arg-type]


def readings_dump(target: str | Path) -> tuple[list[tuple], list[tuple]]:
    """Every stored reading (device, instant, count, timestamp as sent), sorted, and each
    device's (device, cumulative count, latest timestamp) as the store answers them: the
    same on both stores for the same readings."""
    from patientkit.stores import is_url, open_store

    query = "SELECT device_id, instant, count, timestamp FROM readings"
    if is_url(target):
        import psycopg

        with psycopg.connect(str(target)) as pg:
            readings = pg.execute(query).fetchall()
    else:
        with sqlite3.connect(target) as conn:
            readings = conn.execute(query).fetchall()
    with open_store(target) as store:
        devices = [
            (device, store.cumulative_count(device), store.latest_timestamp(device))
            for device in sorted({row[0] for row in readings})
        ]
    return sorted(readings), devices

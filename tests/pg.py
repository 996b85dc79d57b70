"""PostgreSQL for tests: the server's URL from PATIENTKIT_TEST_POSTGRES (.ci/run sets it),
a fresh database per caller, and a dump of what a store holds about readings and records
that is the same on both stores (to compare a PostgreSQL run with a SQLite one)."""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

PG_URL = os.environ.get("PATIENTKIT_TEST_POSTGRES", "")
NO_PG = "PATIENTKIT_TEST_POSTGRES is not set (a PostgreSQL URL; .ci/run sets it)"
needs_pg = pytest.mark.skipif(not PG_URL, reason=NO_PG)
STORES = ["sqlite", pytest.param("postgresql", marks=needs_pg)]  # parametrize over both


def admin(statement: str) -> None:
    import psycopg

    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(statement)  # type: ignore[arg-type]


@contextmanager
def new_database() -> Iterator[str]:
    """The URL of a new, empty database on the test server, dropped after."""
    if not PG_URL:
        pytest.skip(NO_PG)
    name = f"pk_test_{uuid.uuid4().hex[:12]}"
    admin(f"CREATE DATABASE {name}")
    try:
        yield urlunsplit(urlsplit(PG_URL)._replace(path="/" + name))
    finally:
        admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


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

"""Benchmark: the PostgreSQL store (issue 12), at the store level, in one run.

1,000,000 readings (the readings benchmark's file: 1,000 devices, about 1% duplicates),
parsed and validated once, untimed, then loaded into a fresh PostgreSQL database by:

* ours: `PostgresStore.add_readings` in the replay's store batches (20,000): COPY into a
  temporary table, one INSERT … ON CONFLICT DO NOTHING into readings, totals from what
  was inserted, one transaction a batch;
* (a) a plain psycopg loader: `executemany` of `INSERT … ON CONFLICT DO NOTHING` into a
  table with the same key, batches of 5,000, one transaction each (no totals);
* (b) one raw `COPY` of the same rows into a table with no key and no index: the floor.

Targets: ours at least 3x faster than (a), within 2x of (b). Also 100,000 records
(`records generate`) through `add_records` in the submit's store batches (5,000), into
PostgreSQL and into SQLite.

    python bench/postgres.py [--url postgresql://postgres@127.0.0.1:5432/test]
                             [--readings 1000000] [--records 100000]

Then the whole commands, start-up included, in fresh stores: `readings replay` of the
same file and `records submit` of the same records, into PostgreSQL and into SQLite.

Writes outputs/bench/postgres.json (sections "store" and "command").
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

from common import WORK, save
from patientkit.core.model import RECORD_FIELDS, Reading
from patientkit.core.storage import SQLiteStore
from patientkit.core.validation import reading
from patientkit.postgres import PostgresStore
from patientkit.samples.inputs import generate_readings, generate_records

READINGS_BATCH = 20_000  # the replay's store batch (cli/readings.py)
RECORDS_BATCH = 5_000  # the submit's store batch (submit.STORE_BATCH)
PLAIN_BATCH = 5_000


def load_readings(path: Path) -> list[Reading]:
    rows = []
    with path.open() as lines:
        for line in lines:
            item = json.loads(line)
            rows.append(reading(item["id"], item))
    return rows


def load_records(path: Path) -> list[dict[str, str]]:
    with path.open() as lines:
        return [{k: v for k, v in json.loads(line).items() if k in RECORD_FIELDS} for line in lines]


def database(admin_url: str, name: str) -> str:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")  # type: ignore[arg-type]
        conn.execute(f"CREATE DATABASE {name}")  # type: ignore[arg-type]
    return urlunsplit(urlsplit(admin_url)._replace(path="/" + name))


def drop(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")  # type: ignore[arg-type]


def timed(label: str, work) -> float:
    started = time.perf_counter()
    work()
    seconds = time.perf_counter() - started
    print(f"{label}: {seconds:.2f}s", file=sys.stderr)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--url",
        default=os.environ.get(
            "PATIENTKIT_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
        ),
    )
    parser.add_argument("--readings", type=int, default=1_000_000)
    parser.add_argument("--records", type=int, default=100_000)
    args = parser.parse_args()
    load_before = os.getloadavg()

    source = WORK / f"readings-{args.readings}.ndjson"
    if not source.exists():
        source.parent.mkdir(parents=True, exist_ok=True)
        generate_readings(source, args.readings, devices=1000, duplicates=0.01)
    rows = load_readings(source)
    unique = {(r.device_id, r.instant): r.count for r in reversed(rows)}  # first one wins
    name = f"pk_bench_{uuid.uuid4().hex[:8]}"
    url = database(args.url, name)
    try:
        with PostgresStore(url) as store:

            def ours() -> None:
                for start in range(0, len(rows), READINGS_BATCH):
                    store.add_readings(rows[start : start + READINGS_BATCH])

            ours_s = timed("ours (PostgresStore.add_readings)", ours)
            totals = store.reading_totals()
            assert totals == (1000, len(unique), sum(unique.values())), totals

        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "CREATE TABLE plain (device_id text NOT NULL, instant bigint NOT NULL,"
                " count bigint NOT NULL, timestamp text NOT NULL,"
                " PRIMARY KEY (instant, device_id))"
            )
            conn.execute(
                "CREATE TABLE floor (device_id text, count bigint, timestamp text, instant bigint)"
            )
            conn.execute("CHECKPOINT")

            def plain() -> None:
                insert = (
                    "INSERT INTO plain (device_id, count, timestamp, instant)"
                    " VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING"
                )
                for start in range(0, len(rows), PLAIN_BATCH):
                    with conn.transaction(), conn.cursor() as cur:
                        cur.executemany(insert, rows[start : start + PLAIN_BATCH])

            plain_s = timed("(a) executemany INSERT ON CONFLICT, 5,000 a batch", plain)
            (stored,) = conn.execute("SELECT count(*) FROM plain").fetchone() or (0,)
            assert stored == len(unique), stored
            conn.execute("CHECKPOINT")

            def floor() -> None:
                with (
                    conn.transaction(),
                    conn.cursor() as cur,
                    cur.copy("COPY floor (device_id, count, timestamp, instant) FROM STDIN") as cp,
                ):
                    for row in rows:
                        cp.write_row(row)

            floor_s = timed("(b) raw COPY into a table with no key or index", floor)
    finally:
        drop(args.url, name)

    records_file = WORK / f"records-{args.records}.ndjson"
    if not records_file.exists():
        generate_records(records_file, args.records)
    records = load_records(records_file)
    name = f"pk_bench_{uuid.uuid4().hex[:8]}"
    url = database(args.url, name)
    sqlite_path = WORK / "postgres-bench-records.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{sqlite_path}{suffix}").unlink(missing_ok=True)
    try:
        seconds = {}
        for label, opener in (("postgresql", lambda: PostgresStore(url)),
                              ("sqlite", lambda: SQLiteStore(sqlite_path))):  # fmt: skip
            with opener() as store:

                def submit(store=store) -> None:
                    for start in range(0, len(records), RECORDS_BATCH):
                        store.add_records(records[start : start + RECORDS_BATCH])

                seconds[label] = timed(f"records into {label}", submit)
                assert store.record_count() == len({r["test_id"] for r in records})
    finally:
        drop(args.url, name)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{sqlite_path}{suffix}").unlink(missing_ok=True)

    speedup = plain_s / ours_s
    over_floor = ours_s / floor_s
    result = {
        "readings": len(rows),
        "unique_readings": len(unique),
        "seconds": {
            "ours_postgres_store": round(ours_s, 3),
            "a_executemany_insert_on_conflict": round(plain_s, 3),
            "b_raw_copy_no_index": round(floor_s, 3),
        },
        "readings_per_second": {
            "ours": round(len(rows) / ours_s),
            "a_executemany": round(len(rows) / plain_s),
            "b_raw_copy": round(len(rows) / floor_s),
        },
        "speedup_vs_a": round(speedup, 2),
        "ours_over_b": round(over_floor, 2),
        "targets": {
            "speedup_vs_a_at_least": 3.0,
            "ours_over_b_at_most": 2.0,
            "met": speedup >= 3.0 and over_floor <= 2.0,
        },
        "records": {
            "count": len(records),
            "seconds": {k: round(v, 3) for k, v in seconds.items()},
            "postgres_over_sqlite": round(seconds["postgresql"] / seconds["sqlite"], 2),
        },
        "load_average_before_after": [
            [round(x, 2) for x in load_before],
            [round(x, 2) for x in os.getloadavg()],
        ],
        "method": "store level, in one process: inputs parsed and validated once, untimed; "
        f"readings in batches of {READINGS_BATCH} (ours), {PLAIN_BATCH} (a), one COPY (b); "
        f"records in batches of {RECORDS_BATCH}; fresh databases; PostgreSQL on the same "
        "machine, shared with other work (see load_average)",
    }
    path = save("postgres", "store", result)
    print(
        f"ours {speedup:.2f}x faster than executemany, {over_floor:.2f}x the raw COPY; "
        f"records PG/SQLite {result['records']['postgres_over_sqlite']} -> {path}"
    )
    commands(args.url, source, records_file)


def commands(admin_url: str, readings: Path, records: Path) -> None:
    """`readings replay` and `records submit` as whole processes into a fresh PostgreSQL
    database and a fresh SQLite file; seconds of each, and PostgreSQL over SQLite."""
    seconds: dict[str, float] = {}
    for label, argv in (
        ("readings_replay", ["readings", "replay", str(readings)]),
        ("records_submit", ["records", "submit", str(records)]),
    ):
        name = f"pk_bench_{uuid.uuid4().hex[:8]}"
        url = database(admin_url, name)
        sqlite_file = WORK / f"{name}.db"
        try:
            for store, target in (("postgresql", url), ("sqlite", str(sqlite_file))):
                started = time.perf_counter()
                done = subprocess.run(
                    [sys.executable, "-m", "patientkit", *argv, "--db", target],
                    capture_output=True,
                )
                seconds[f"{label}_{store}"] = time.perf_counter() - started
                if done.returncode != 0:
                    raise SystemExit(f"{label} into {store} failed: {done.stderr.decode()}")
        finally:
            drop(admin_url, name)
            for made in WORK.glob(f"{name}.db*"):
                made.unlink()
    result = {
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "postgres_over_sqlite": {
            label: round(seconds[f"{label}_postgresql"] / seconds[f"{label}_sqlite"], 2)
            for label in ("readings_replay", "records_submit")
        },
        "inputs": {"readings": readings.name, "records": records.name},
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "method": "whole processes (python -m patientkit), start-up included, fresh stores",
    }
    path = save("postgres", "command", result)
    print(f"whole commands: {json.dumps(result['seconds'])} -> {path}")


if __name__ == "__main__":
    main()

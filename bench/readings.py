"""Benchmark: `patientkit readings replay` of one generated file of 1,000,000 readings
(1,000 devices, about 1% duplicates), in one run:

* into the embedded store, against `sqlite-utils insert DB readings FILE --nl --pk id
  --pk timestamp --ignore` (which does not validate; we do). Target: at least 10x faster.
* over HTTP to `patientkit serve`, against a naive client that POSTs one reading per
  request (timed on the first --naive-sample readings; the rate is what is compared).
  Target: at least 20x faster.

    python bench/readings.py [--readings 1000000] [--naive-sample 20000]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from common import PATIENTKIT, WORK, run_timed, save
from export_http import start_server
from patientkit.samples.inputs import generate_readings

NAIVE = """
import json, sys, httpx
url, path, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
sent = 0
with httpx.Client(base_url=url) as client, open(path) as lines:
    for line in lines:
        if sent == limit:
            break
        r = json.loads(line)
        body = {"id": r["id"], "readings": [{"count": r["count"], "timestamp": r["timestamp"]}]}
        assert client.post("/api/device-readings/create", json=body).status_code == 201
        sent += 1
print(sent)
"""


def fresh(name: str) -> str:
    folder = WORK / "readings"
    folder.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        (folder / f"{name}{suffix}").unlink(missing_ok=True)
    return str(folder / name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--readings", type=int, default=1_000_000)
    parser.add_argument("--naive-sample", type=int, default=20_000)
    args = parser.parse_args()
    source = WORK / f"readings-{args.readings}.ndjson"
    if not source.exists():
        generate_readings(source, args.readings, devices=1000, duplicates=0.01)
    sqlite_utils = shutil.which("sqlite-utils") or str(Path(sys.executable).parent / "sqlite-utils")

    ours = run_timed([*PATIENTKIT, "readings", "replay", str(source), "--db", fresh("ours.db")])
    summary = json.loads(ours["stdout"])
    print(f"replay into the store: {ours['seconds']:.2f}s {summary}", file=sys.stderr)
    theirs = run_timed(
        [
            sqlite_utils,
            "insert",
            fresh("sqlite-utils.db"),
            "readings",
            str(source),
            "--nl",
            "--pk",
            "id",
            "--pk",
            "timestamp",
            "--ignore",
        ]
    )
    print(f"sqlite-utils insert: {theirs['seconds']:.2f}s", file=sys.stderr)

    server, url = start_server(None, "--db", fresh("served.db"))
    try:
        http = run_timed([*PATIENTKIT, "readings", "replay", str(source), "--to", url])
        print(f"replay over HTTP: {http['seconds']:.2f}s", file=sys.stderr)
        naive = run_timed([sys.executable, "-c", NAIVE, url, str(source), str(args.naive_sample)])
        print(f"naive, {args.naive_sample} readings: {naive['seconds']:.2f}s", file=sys.stderr)
    finally:
        server.terminate()
        server.wait()

    rate = {
        "replay_store": args.readings / ours["seconds"],
        "sqlite_utils": args.readings / theirs["seconds"],
        "replay_http": args.readings / http["seconds"],
        "naive_http": args.naive_sample / naive["seconds"],
    }
    store_ratio = theirs["seconds"] / ours["seconds"]
    http_ratio = rate["replay_http"] / rate["naive_http"]
    result = {
        "readings": args.readings,
        "replay_summary": summary,
        "seconds": {
            "replay_store": round(ours["seconds"], 3),
            "sqlite_utils_insert": round(theirs["seconds"], 3),
            "replay_http": round(http["seconds"], 3),
            "naive_http_sample": round(naive["seconds"], 3),
        },
        "naive_sample_readings": args.naive_sample,
        "readings_per_second": {name: round(value) for name, value in rate.items()},
        "store_speedup_vs_sqlite_utils": round(store_ratio, 2),
        "http_speedup_vs_naive": round(http_ratio, 2),
        "targets": {
            "store_at_least": 10.0,
            "http_at_least": 20.0,
            "met": store_ratio >= 10 and http_ratio >= 20,
        },
        "method": "whole processes; fresh SQLite files; the naive client's rate is measured "
        "on the first readings of the same file against the same server",
    }
    path = save("readings", "replay", result)
    print(f"store {store_ratio:.1f}x sqlite-utils; HTTP {http_ratio:.1f}x naive -> {path}")


if __name__ == "__main__":
    main()

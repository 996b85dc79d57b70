"""Benchmark: `patientkit export count` on the generated `small` export (about 7.8 million
rows) against (a) the classic csv.DictReader with nested dicts in one process and (b)
DuckDB's read_csv GROUP BY, all as whole processes on the same files, in one run.

    python bench/export_count.py [--rounds 3]

Targets: at least 8x faster than (a); no slower than 1.5x DuckDB's time.
"""

from __future__ import annotations

import argparse
import json
import sys

from common import PATIENTKIT, ensure_export, run_timed, save, summary

CLASSIC = """
import csv, glob, json, sys
counts = {}
for path in sorted(glob.glob(sys.argv[1] + "/*.csv")):
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            patient = counts.setdefault(row["patient_id"], {})
            patient[row["event_type"]] = patient.get(row["event_type"], 0) + 1
totals = {}
for events in counts.values():
    for event, n in events.items():
        totals[event] = totals.get(event, 0) + n
print(json.dumps({"patients": counts, "totals": totals}, sort_keys=True))
"""

DUCKDB = """
import duckdb, glob, json, sys
files = sorted(glob.glob(sys.argv[1] + "/*.csv"))
rows = duckdb.sql(
    "SELECT patient_id, event_type, count(*) FROM read_csv($files) GROUP BY ALL",
    params={"files": files},
).fetchall()
counts, totals = {}, {}
for patient, event, n in rows:
    counts.setdefault(patient, {})[event] = n
    totals[event] = totals.get(event, 0) + n
print(json.dumps({"patients": counts, "totals": totals}, sort_keys=True))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--export", default="small")
    args = parser.parse_args()
    folder = ensure_export(args.export) / args.export
    commands = {
        "patientkit": [*PATIENTKIT, "export", "count", str(folder), "-q"],
        "classic_dictreader": [sys.executable, "-c", CLASSIC, str(folder)],
        "duckdb": [sys.executable, "-c", DUCKDB, str(folder)],
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    reports = {}
    for round_ in range(args.rounds):
        for name, cmd in commands.items():  # interleaved, so drift hits all alike
            measured = run_timed(cmd)
            times[name].append(measured["seconds"])
            reports[name] = json.loads(measured["stdout"])
            print(f"round {round_ + 1} {name:20s} {measured['seconds']:7.2f}s", file=sys.stderr)
    assert reports["patientkit"] == reports["classic_dictreader"] == reports["duckdb"], (
        "results differ"
    )
    rows = sum(reports["patientkit"]["totals"].values())
    best = {name: min(t) for name, t in times.items()}
    vs_classic = best["classic_dictreader"] / best["patientkit"]
    vs_duckdb = best["patientkit"] / best["duckdb"]
    result = {
        "export": args.export,
        "rows": rows,
        "seconds": {name: summary(t) for name, t in times.items()},
        "rows_per_second": {name: round(rows / t) for name, t in best.items()},
        "speedup_vs_classic": round(vs_classic, 2),
        "time_vs_duckdb": round(vs_duckdb, 2),
        "targets": {
            "speedup_vs_classic_at_least": 8.0,
            "time_vs_duckdb_at_most": 1.5,
            "met": vs_classic >= 8.0 and vs_duckdb <= 1.5,
        },
        "method": "whole processes, best of the interleaved rounds; identical results checked",
    }
    path = save("export", "count", result)
    print(
        f"{rows:,} rows: patientkit {best['patientkit']:.2f}s, classic "
        f"{best['classic_dictreader']:.2f}s ({vs_classic:.1f}x faster), duckdb "
        f"{best['duckdb']:.2f}s (patientkit takes {vs_duckdb:.2f}x its time) -> {path}"
    )


if __name__ == "__main__":
    main()

"""Benchmark: `patientkit export aggregate` over HTTP from `patientkit serve`, against
streaming the same downloads in parallel (same concurrency) without counting; and the
peak memory of aggregate on demo, small (and large, if generated), in one run.

    python bench/export_http.py [--rounds 3] [--large]

Targets: counting adds at most 25% over plain transfer; peak RSS under 60 MB and not
growing with the export.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time

import httpx

from common import PATIENTKIT, ensure_export, run_measured, run_timed, save, summary

TRANSFER = """
import sys, httpx
from multiprocessing import get_context
server, export_id, concurrency = sys.argv[1], sys.argv[2], int(sys.argv[3])

def fetch(download_id):
    n = 0
    with httpx.Client(base_url=server, timeout=60) as client:
        with client.stream("GET", f"/api/export/{export_id}/{download_id}/data") as r:
            for chunk in r.iter_bytes(1 << 20):
                n += len(chunk)
    return n

if __name__ == "__main__":
    ids = httpx.get(f"{server}/api/export/{export_id}").json()["data"]["download_ids"]
    with get_context("fork").Pool(concurrency) as pool:
        print(sum(pool.map(fetch, ids, chunksize=1)))
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(root: str | None, *args: str) -> tuple[subprocess.Popen, str]:
    """`patientkit serve` on a free port (exports from root, if given), once it answers."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    exports = ["--exports", root] if root else []
    process = subprocess.Popen(
        [*PATIENTKIT, "serve", "--port", str(port), *exports, *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(200):
        try:
            if httpx.get(f"{url}/api/ping").status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError("server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--large", action="store_true", help="also measure memory on large")
    args = parser.parse_args()
    exports = ensure_export("demo")
    ensure_export("small")
    if args.large:
        ensure_export("large")
    concurrency = os.cpu_count() or 1
    server, url = start_server(str(exports))
    try:
        rows = sum(
            httpx.get(f"{url}/api/export/small/{d}").json()["data"]["rows"]
            for d in httpx.get(f"{url}/api/export/small").json()["data"]["download_ids"]
        )
        times: dict[str, list[float]] = {"plain_transfer": [], "patientkit_aggregate": []}
        memory = {}
        for round_ in range(args.rounds):
            plain = run_timed([sys.executable, "-c", TRANSFER, url, "small", str(concurrency)])
            times["plain_transfer"].append(plain["seconds"])
            agg = run_timed([*PATIENTKIT, "export", "aggregate", "small", "--server", url, "-q"])
            times["patientkit_aggregate"].append(agg["seconds"])
            assert sum(json.loads(agg["stdout"])["totals"].values()) == rows
            print(
                f"round {round_ + 1}: transfer {plain['seconds']:.2f}s, aggregate "
                f"{agg['seconds']:.2f}s",
                file=sys.stderr,
            )
        for export_id in ["demo", "small", *(["large"] if args.large else [])]:
            agg = run_measured(
                [*PATIENTKIT, "export", "aggregate", export_id, "--server", url, "-q"]
            )
            memory[export_id] = {k: v for k, v in agg.items() if k.startswith("peak")}
    finally:
        server.terminate()
        server.wait()
    best = {name: min(t) for name, t in times.items()}
    overhead = best["patientkit_aggregate"] / best["plain_transfer"] - 1
    worst_rss = max(m["peak_rss_main_mb"] for m in memory.values())
    result = {
        "export": "small",
        "rows": rows,
        "concurrency": concurrency,
        "seconds": {name: summary(t) for name, t in times.items()},
        "rows_per_second": {name: round(rows / t) for name, t in best.items()},
        "counting_overhead_over_transfer": round(overhead, 3),
        "peak_memory_mb": memory,
        "targets": {
            "overhead_at_most": 0.25,
            "overhead_met": overhead <= 0.25,
            "main_process_rss_under_mb": 60,
            "rss_met": worst_rss < 60,
        },
        "method": "whole processes against one `patientkit serve`, best of interleaved rounds; "
        "memory sampled every 20 ms over the process tree (PSS counts shared pages once)",
    }
    path = save("export", "http", result)
    print(
        f"small over HTTP: transfer {best['plain_transfer']:.2f}s, aggregate "
        f"{best['patientkit_aggregate']:.2f}s (+{overhead:.0%}); memory {memory} -> {path}"
    )


if __name__ == "__main__":
    main()

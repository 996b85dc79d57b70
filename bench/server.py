"""Benchmark: `patientkit serve` throughput of readings create and records POST, one
worker against `--workers 2`, with authentication and metrics on (a token, /metrics
counting) against off (no token, `--no-metrics`). Target: authentication and metrics
together cost at most 10% of throughput.

The load generator is LOADERS processes of THREADS threads, each a keep-alive httpx
client sending one request after another for --seconds; it shares the machine's cores
with the server, which bounds what a second worker can add.

    python bench/server.py [--seconds 6] [--loaders 2] [--threads 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from common import PATIENTKIT, WORK, save
from export_http import free_port

TOKEN = "bench-token-0123456789"

LOADER = r"""
import json, sys, threading, time, uuid, httpx
url, kind, token = sys.argv[1], sys.argv[2], sys.argv[5]
seconds, threads = float(sys.argv[3]), int(sys.argv[4])
headers = {"authorization": f"Bearer {token}"} if token else {}
counts = []

def run():
    done = 0
    device = str(uuid.uuid4())
    prefix = uuid.uuid4().hex
    with httpx.Client(base_url=url, headers=headers) as http:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if kind == "readings":
                s, m, h = done % 60, done // 60 % 60, done // 3600
                when = f"2021-09-{1 + h // 24:02d}T{h % 24:02d}:{m:02d}:{s:02d}+00:00"
                body = {"id": device, "readings": [{"count": 1, "timestamp": when}]}
                answer = http.post("/api/device-readings/create", json=body)
                ok = answer.status_code == 201
            else:
                body = {"test_id": f"{prefix}-{done}", "patient_id": "P", "clinic_id": "C",
                        "test_type": "t", "result": "r"}
                answer = http.post("/tests", json=body)
                ok = answer.status_code == 200
            if not ok:
                raise SystemExit(f"unexpected answer: {answer.status_code}")
            done += 1
    counts.append(done)

workers = [threading.Thread(target=run) for _ in range(threads)]
for w in workers: w.start()
for w in workers: w.join()
print(json.dumps({"requests": sum(counts)}))
"""


def start(db: Path, workers: int, guarded: bool) -> tuple[subprocess.Popen, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PATIENTKIT_")}
    args = ["--workers", str(workers), "--db", str(db), "-q"]
    if guarded:
        env["PATIENTKIT_TOKEN"] = TOKEN
    else:
        args.append("--no-metrics")
    process = subprocess.Popen(
        [*PATIENTKIT, "serve", "--port", str(port), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    for _ in range(400):
        try:
            if httpx.get(f"{url}/api/ping").status_code == 200:
                time.sleep(1.0 if workers > 1 else 0.2)  # every worker up
                return process, url
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError("server did not start")


def measure(kind: str, workers: int, guarded: bool, args: argparse.Namespace) -> float:
    """Requests a second over --seconds."""
    WORK.mkdir(parents=True, exist_ok=True)
    db = WORK / f"server-{kind}-{workers}-{guarded}.db"
    for stale in WORK.glob(f"{db.name}*"):
        stale.unlink()
    process, url = start(db, workers, guarded)
    try:
        loaders = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    LOADER,
                    url,
                    kind,
                    str(args.seconds),
                    str(args.threads),
                    TOKEN if guarded else "",
                ],
                stdout=subprocess.PIPE,
            )
            for _ in range(args.loaders)
        ]
        total = 0
        for loader in loaders:
            out, _ = loader.communicate()
            if loader.returncode != 0:
                raise RuntimeError(f"loader failed: {out!r}")
            total += json.loads(out)["requests"]
    finally:
        process.terminate()
        process.wait(timeout=30)
        for made in WORK.glob(f"{db.name}*"):
            made.unlink()
    return total / args.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--loaders", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, Any] = {}
    for kind in ("readings", "records"):
        for workers in (1, 2):
            plains, guardeds = [], []
            for _ in range(args.rounds):  # interleaved, best of the rounds: the machine varies
                plains.append(measure(kind, workers, False, args))
                guardeds.append(measure(kind, workers, True, args))
            plain, guarded = max(plains), max(guardeds)
            key = f"{kind}_{workers}_worker{'s' if workers > 1 else ''}"
            results[key] = {
                "plain_requests_per_second": round(plain),
                "auth_and_metrics_requests_per_second": round(guarded),
                "auth_and_metrics_cost_percent": round(100 * (1 - guarded / plain), 1),
                "rounds": {
                    "plain": [round(x) for x in plains],
                    "guarded": [round(x) for x in guardeds],
                },
            }
            print(
                f"{kind:8} {workers} worker(s): plain {plain:7.0f}/s, auth+metrics "
                f"{guarded:7.0f}/s, cost {100 * (1 - guarded / plain):5.1f}%",
                flush=True,
            )
        one = results[f"{kind}_1_worker"]["auth_and_metrics_requests_per_second"]
        two = results[f"{kind}_2_workers"]["auth_and_metrics_requests_per_second"]
        results[f"{kind}_two_workers_over_one"] = round(two / one, 2)
        print(f"{kind:8} two workers / one: {two / one:.2f}x", flush=True)
    results["load"] = os.getloadavg()
    results["settings"] = vars(args)
    results["note"] = (
        "the load generator shares the machine's cores with the server; target: auth and "
        "metrics cost at most 10%"
    )
    print(save("server", "throughput", results))


if __name__ == "__main__":
    main()

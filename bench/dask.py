"""Benchmark: `export aggregate small --scheduler` on two single-threaded Dask workers
against the local `export aggregate small --concurrency 2`, in one run, on the same
machine and the same `patientkit serve`; and the per-core costs that docs/scale.md's
estimate is made of (counting a file on one core, streaming the export without counting),
with the estimate checked against the cluster's measured time.

    python bench/dask.py [--rounds 3]

Target: the cluster at most 1.5x the local time (same cores: this is the engine's
overhead — client start, task scheduling, results and progress through the scheduler).
Needs the dask extra. Writes outputs/bench/dask.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx

from common import PATIENTKIT, WORK, ensure_export, run_timed, save, summary
from export_http import TRANSFER, start_server

# This file is named dask.py: with its folder first on sys.path, `import dask` (which
# distributed does) would find it. The folder is not needed after the imports above.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]

TARGET_RATIO = 1.5
ADDRESS = re.compile(r"Scheduler at:\s+(tcp://[0-9.]+:[0-9]+)")


def start_cluster(folder: Path, workers: int) -> tuple[list[subprocess.Popen], str]:
    """`dask scheduler` and `workers` single-threaded `dask worker --no-nanny`."""
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "scheduler.log"
    scheduler = subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
         "--port", "0", "--no-dashboard"],
        stdout=subprocess.DEVNULL, stderr=log.open("wb"), cwd=folder,
    )  # fmt: skip
    address = None
    for _ in range(600):
        found = ADDRESS.search(log.read_text())
        if found:
            address = found.group(1)
            break
        time.sleep(0.1)
    if address is None:
        raise RuntimeError(f"scheduler did not start: {log.read_text()}")
    processes = [scheduler]
    for n in range(workers):
        processes.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "distributed.cli.dask_worker",
                    address,
                    "--no-nanny",
                    "--nthreads",
                    "1",
                    "--host",
                    "127.0.0.1",
                    "--no-dashboard",
                    "--local-directory",
                    str(folder / f"worker-{n}"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=(folder / f"worker-{n}.log").open("wb"),
                cwd=folder,
            )
        )
    from distributed import Client

    with Client(address, set_as_default=False, timeout=60) as client:
        client.wait_for_workers(workers, timeout=120)
    return processes, address


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    exports = ensure_export("small")
    small = exports / "small"
    nbytes = sum(p.stat().st_size for p in small.glob("*.csv"))
    load_before = os.getloadavg()
    server, url = start_server(str(exports))
    cluster, address = start_cluster(WORK / "dask", workers=2)
    try:
        rows = sum(
            httpx.get(f"{url}/api/export/small/{d}").json()["data"]["rows"]
            for d in httpx.get(f"{url}/api/export/small").json()["data"]["download_ids"]
        )
        times: dict[str, list[float]] = {"dask_2_workers": [], "local_concurrency_2": []}
        commands = {
            "dask_2_workers": ["--scheduler", address],
            "local_concurrency_2": ["--concurrency", "2"],
        }
        answers = set()
        for round_ in range(args.rounds):
            for name, extra in commands.items():
                done = run_timed(
                    [*PATIENTKIT, "export", "aggregate", "small", "--server", url, "-q", *extra]
                )
                times[name].append(done["seconds"])
                answers.add(done["stdout"])
                assert sum(json.loads(done["stdout"])["totals"].values()) == rows
            print(
                f"round {round_ + 1}: dask {times['dask_2_workers'][-1]:.2f}s, local "
                f"{times['local_concurrency_2'][-1]:.2f}s",
                file=sys.stderr,
            )
        assert len(answers) == 1, "the cluster and local answers differ"
        # The parts of the estimate: one core counting files; streaming without counting.
        count_1 = run_timed([*PATIENTKIT, "export", "count", str(small), "--workers", "1", "-q"])
        stream_1 = run_timed([sys.executable, "-c", TRANSFER, url, "small", "1"])
    finally:
        for process in [*cluster, server]:
            process.terminate()
        for process in [*cluster, server]:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:  # a worker stuck closing its comms
                process.kill()
                process.wait()
    load_after = os.getloadavg()
    best = {name: min(t) for name, t in times.items()}
    ratio = best["dask_2_workers"] / best["local_concurrency_2"]
    median_ratio = (
        summary(times["dask_2_workers"])["median"] / summary(times["local_concurrency_2"])["median"]
    )
    # docs/scale.md: CPU seconds per byte to count (worker) and to serve + receive
    # (server and worker's HTTP), each measured alone on one core; two cores share both.
    count_s_per_gb = count_1["seconds"] / nbytes * 1e9
    stream_s_per_gb = stream_1["seconds"] / nbytes * 1e9
    predicted = nbytes / 1e9 * (count_s_per_gb + stream_s_per_gb) / 2
    result = {
        "export": "small",
        "rows": rows,
        "bytes": nbytes,
        "seconds": {name: summary(t) for name, t in times.items()},
        "rows_per_second": {name: round(rows / t) for name, t in best.items()},
        "ratio_dask_over_local_best": round(ratio, 3),
        "ratio_dask_over_local_median": round(median_ratio, 3),
        "estimate": {
            "count_one_core_s_per_gb": round(count_s_per_gb, 2),
            "stream_one_connection_s_per_gb": round(stream_s_per_gb, 2),
            "predicted_dask_2_workers_s": round(predicted, 2),
            "measured_dask_2_workers_s": round(best["dask_2_workers"], 2),
            "measured_over_predicted": round(best["dask_2_workers"] / predicted, 3),
        },
        "load_average": {"before": load_before, "after": load_after},
        "targets": {"ratio_at_most": TARGET_RATIO, "met": ratio <= TARGET_RATIO},
        "method": "whole CLI processes (each starts Python; --scheduler also imports "
        "distributed and connects) against one `patientkit serve`, rounds interleaved, "
        "best of rounds; scheduler, 2 workers (1 thread each, no nanny) and server on the "
        "same 2 cores. The machine was shared with other jobs: see load_average.",
    }
    path = save("dask", "small", result)
    print(
        f"small: dask 2 workers {best['dask_2_workers']:.2f}s, local --concurrency 2 "
        f"{best['local_concurrency_2']:.2f}s, ratio {ratio:.2f} (target <= {TARGET_RATIO}); "
        f"estimate {predicted:.2f}s; load {load_before[0]:.1f} -> {path}"
    )


if __name__ == "__main__":
    main()

"""Benchmark: BatchBuffer.track() throughput against queue.Queue.put, the floor.

Run from the repository root:  python bench/buffer.py [--events N] [--repeat R]

Measures, in one run, the time to track N events from 1 thread and from 4 threads
(N/4 each) into a BatchBuffer whose sink does nothing (the flusher runs, competing for
the interpreter as it would in real use), and the time of the same loops doing
`queue.Queue().put`. Each figure is the median of R repetitions; every repetition is
kept in the JSON. Writes outputs/bench/buffer.json and prints the ratios.

Target: at least 1,000,000 events/s from one thread, and within 3x of Queue.put
(ratio = buffer seconds / Queue.put seconds, so below 1 means faster than the floor).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from patientkit.core.buffer import BatchBuffer  # noqa: E402

CONFIG = {"max_batch": 1000, "max_pending": 100_000, "flush_interval": 1.0}
TARGET_EVENTS_PER_S = 1_000_000
TARGET_RATIO = 3.0


def null_sink(batch: list[int]) -> None:
    return None


def run_threads(
    threads: int, events: int, make_put: Callable[[], Callable[[int], None]]
) -> tuple[float, float, int]:
    """Time `threads` threads each calling put() events/threads times.

    Returns (wall seconds, process CPU seconds, events). CPU time covers every thread of
    this process (the flusher included) and is not inflated by other processes.
    """
    put = make_put()
    share = events // threads
    barrier = threading.Barrier(threads + 1)
    done = threading.Barrier(threads + 1)

    def work() -> None:
        barrier.wait()
        for i in range(share):
            put(i)
        done.wait()

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    barrier.wait()
    start, cpu_start = time.perf_counter(), time.process_time()
    done.wait()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    for worker in workers:
        worker.join()
    return seconds, cpu, share * threads


def measure_buffer(threads: int, events: int, config: dict | None = None) -> dict:
    holder: list[BatchBuffer[int]] = []

    def make_put() -> Callable[[int], None]:
        buf: BatchBuffer[int] = BatchBuffer(null_sink, **(CONFIG if config is None else config))
        holder.append(buf)
        return buf.track

    seconds, cpu, count = run_threads(threads, events, make_put)
    buf = holder[0]
    start = time.perf_counter()
    left = buf.close()
    drain = time.perf_counter() - start
    stats = buf.stats()
    assert not left and stats.delivered == count, (left, stats)
    return {"seconds": seconds, "cpu_seconds": cpu, "events": count, "close_seconds": drain}


def measure_queue(threads: int, events: int) -> dict:
    seconds, cpu, count = run_threads(threads, events, lambda: queue.Queue().put)
    return {"seconds": seconds, "cpu_seconds": cpu, "events": count}


def summarise(runs: list[dict]) -> dict:
    seconds = statistics.median(r["seconds"] for r in runs)
    cpu = statistics.median(r["cpu_seconds"] for r in runs)
    events = runs[0]["events"]
    return {
        "events": events,
        "seconds": round(seconds, 4),
        "events_per_s": round(events / seconds),
        "cpu_seconds": round(cpu, 4),
        "events_per_cpu_s": round(events / cpu),
        "runs_seconds": [round(r["seconds"], 4) for r in runs],
    }


def machine(load_at_start: float) -> dict:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "cpu_count": os.cpu_count(),
        "cpu_model": model or platform.processor(),
        "switch_interval_s": sys.getswitchinterval(),
        "note": "shared 2-core machine: other work may run at the same time; "
        "cpu_seconds is this process's CPU time, which that does not inflate",
        "load_average_1m_at_start": round(load_at_start, 2),
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench" / "buffer.json")
    args = parser.parse_args()
    load_at_start = os.getloadavg()[0]

    results: dict[str, dict] = {}
    for threads in (1, 4):
        buffer_runs: list[dict] = []
        queue_runs: list[dict] = []
        for _ in range(args.repeat):  # interleaved, so drift hits both alike
            queue_runs.append(measure_queue(threads, args.events))
            buffer_runs.append(measure_buffer(threads, args.events))
        buffer_summary = summarise(buffer_runs)
        buffer_summary["close_seconds_median"] = round(
            statistics.median(r["close_seconds"] for r in buffer_runs), 4
        )
        queue_summary = summarise(queue_runs)
        ratio = buffer_summary["seconds"] / queue_summary["seconds"]
        results[f"{threads}_thread" + ("s" if threads > 1 else "")] = {
            "threads": threads,
            "buffer_track": buffer_summary,
            "queue_put": queue_summary,
            "ratio_buffer_to_queue_put": round(ratio, 3),
        }

    # For information: the constructor defaults (max_batch=100, max_pending=10,000). A
    # producer fills 10,000 slots faster than one GIL switch interval, so back-pressure
    # hands control back and forth far more often; the target is not judged on this.
    defaults: dict[str, dict] = {}
    for threads in (1, 4):
        runs = [measure_buffer(threads, args.events, config={}) for _ in range(args.repeat)]
        defaults[f"{threads}_thread" + ("s" if threads > 1 else "")] = summarise(runs)

    one = results["1_thread"]
    met_rate = one["buffer_track"]["events_per_s"] >= TARGET_EVENTS_PER_S
    met_ratio = all(r["ratio_buffer_to_queue_put"] <= TARGET_RATIO for r in results.values())
    report = {
        "benchmark": "BatchBuffer.track() vs queue.Queue.put",
        "machine": machine(load_at_start),
        "config": {**CONFIG, "sink": "does nothing", "repeat": args.repeat, "statistic": "median"},
        "results": results,
        "default_config_for_information": defaults,
        "target": {
            "events_per_s_one_thread": TARGET_EVENTS_PER_S,
            "max_ratio_to_queue_put": TARGET_RATIO,
            "met": "yes" if met_rate and met_ratio else "no",
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    for name, result in results.items():
        print(
            f"{name:>9}: track {result['buffer_track']['events_per_s']:>12,} ev/s   "
            f"Queue.put {result['queue_put']['events_per_s']:>12,} ev/s   "
            f"ratio {result['ratio_buffer_to_queue_put']:.2f}x"
        )
    for name, summary in defaults.items():
        print(f"{name:>9}: track {summary['events_per_s']:>12,} ev/s   (constructor defaults)")
    print(f"target (>= 1,000,000 ev/s from 1 thread, <= 3x Queue.put): {report['target']['met']}")
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")


if __name__ == "__main__":
    main()

"""Benchmark: reading NDJSON (`patientkit.inputs.read_items`) on the file of a million
readings that bench/readings.py replays, against the two ways it replaces, in one run:

* read_items: chunks of plain objects parsed as one JSON array (the way replay and
  submit read);
* scanner: every line parsed in place by the json module's C scanner (what read_items
  does with any other chunk);
* json.loads per line: the plain loop.

Each makes the same Items (source, line, value). Rounds are interleaved; the best of each
is kept. Writes outputs/bench/inputs.json.

    python bench/inputs.py [--readings 1000000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

from common import WORK, save, summary
from patientkit import inputs
from patientkit.samples.inputs import generate_readings


def with_read_items(path: Path) -> int:
    return sum(1 for _ in inputs.read_items(str(path), ()))


def with_scanner(path: Path) -> int:
    count, number = 0, 0
    with path.open("rb") as stream:
        while piece := b"".join(stream.readlines(inputs.CHUNK)):
            count += sum(1 for _ in inputs._ndjson_chunk(piece, number, str(path), False))
            number += piece.count(b"\n")
    return count


def with_json_loads(path: Path) -> int:
    source, count = str(path), 0
    with path.open("rb") as stream:
        for number, line in enumerate(stream, start=1):
            inputs.Item(source, number, json.loads(line))
            count += 1
    return count


WAYS: dict[str, Callable[[Path], int]] = {
    "read_items": with_read_items,
    "scanner": with_scanner,
    "json_loads_per_line": with_json_loads,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--readings", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    source = WORK / f"readings-{args.readings}.ndjson"
    if not source.exists():
        WORK.mkdir(parents=True, exist_ok=True)
        generate_readings(source, args.readings, devices=1000, duplicates=0.01)
    times: dict[str, list[float]] = {name: [] for name in WAYS}
    for round_number in range(1, args.rounds + 1):
        for name, way in WAYS.items():
            started = time.perf_counter()
            items = way(source)
            times[name].append(time.perf_counter() - started)
            assert items == args.readings, f"{name} read {items} items"
        print(f"round {round_number}: " + ", ".join(f"{n} {t[-1]:.2f}s" for n, t in times.items()))
    best = {name: min(t) for name, t in times.items()}
    result = {
        "readings": args.readings,
        "seconds": {name: summary(t) for name, t in times.items()},
        "speedup_vs_scanner": round(best["scanner"] / best["read_items"], 2),
        "speedup_vs_json_loads_per_line": round(
            best["json_loads_per_line"] / best["read_items"], 2
        ),
        "method": "in one process, the same file, interleaved rounds, best of each",
    }
    path = save("inputs", "ndjson", result)
    print(
        f"read_items {best['read_items']:.2f}s; scanner {result['speedup_vs_scanner']}x "
        f"slower; json.loads per line {result['speedup_vs_json_loads_per_line']}x slower"
        f" -> {path}"
    )


if __name__ == "__main__":
    main()

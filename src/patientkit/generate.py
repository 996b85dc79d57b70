"""Deterministic synthetic exports in the reference shapes of SPEC.md.

`generate_export("small", root, seed=0)` writes `root/small/<download uuid>.csv` files and,
beside each, `<download uuid>.meta.json` holding the metadata the export API serves
(rows, event_types, patients, start_time, end_time), so that the server need not scan
gigabytes at start-up. The same seed always gives the same bytes.
"""

from __future__ import annotations

import json
import os
import random
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

HEADER = "patient_id,event_time,event_type,value\n"
DAY_US = 86_400 * 1_000_000
EPOCH_2025_08_26 = 1_756_166_400  # 2025-08-26T00:00:00Z, where the first download starts

VALUE_RANGES = {  # plausible readings per event type, inclusive
    "heart_rate": (52, 118),
    "spo2": (91, 100),
    "bp_sys": (98, 165),
    "bp_dia": (58, 102),
}


@dataclass(frozen=True)
class Shape:
    downloads: int
    min_rows: int
    max_rows: int
    event_types: tuple[str, ...]
    patients: tuple[str, ...]


def _patients(prefix: str, n: int) -> tuple[str, ...]:
    return tuple(f"{prefix}{i:03d}" for i in range(1, n + 1))


SHAPES = {
    "demo": Shape(2, 5_000, 10_000, ("bp_sys", "bp_dia"), _patients("P", 4)),
    "small": Shape(10, 500_000, 1_000_000, ("heart_rate", "spo2"), _patients("S", 6)),
    "large": Shape(
        20, 5_000_000, 10_000_000, ("heart_rate", "spo2", "bp_sys", "bp_dia"), _patients("L", 20)
    ),
}


@dataclass(frozen=True)
class DownloadPlan:
    export_id: str
    index: int
    download_id: str
    rows: int
    patients: tuple[str, ...]
    event_types: tuple[str, ...]
    start_us: int  # microseconds since the epoch, UTC
    span_us: int


def plan_export(export_id: str, seed: int = 0) -> list[DownloadPlan]:
    """Decide every download of an export (ids, sizes, patients, windows) from the seed."""
    shape = SHAPES[export_id]
    rng = random.Random(f"{seed}:{export_id}")
    plans = []
    unseen = set(shape.patients)
    for index in range(shape.downloads):
        count = rng.randint(2, len(shape.patients))
        chosen = set(rng.sample(shape.patients, count))
        if index == shape.downloads - 1:
            chosen |= unseen  # every patient of the export appears in some download
        unseen -= chosen
        patients = tuple(sorted(chosen))
        plans.append(
            DownloadPlan(
                export_id=export_id,
                index=index,
                download_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                rows=rng.randint(shape.min_rows, shape.max_rows),
                patients=patients,
                event_types=shape.event_types,
                start_us=(EPOCH_2025_08_26 * 1_000_000) + index * DAY_US,
                span_us=DAY_US,
            )
        )
    return plans


def _iso_second(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


def iter_rows(plan: DownloadPlan, seed: int, block: int = 8192) -> Iterator[str]:
    """The CSV text of one download in blocks of rows, header first, times ascending."""
    rng = random.Random(f"{seed}:{plan.export_id}:{plan.index}")
    yield HEADER
    step = plan.span_us // plan.rows
    ranges = [VALUE_RANGES[t] for t in plan.event_types]
    last_second, prefix = -1, ""
    for first in range(0, plan.rows, block):
        n = min(block, plan.rows - first)
        patients = rng.choices(plan.patients, k=n)
        kinds = rng.choices(range(len(plan.event_types)), k=n)
        parts = []
        for offset in range(n):
            i = first + offset
            us = plan.start_us + i * step + int(rng.random() * step)
            second, micro = divmod(us, 1_000_000)
            if second != last_second:
                last_second, prefix = second, _iso_second(second)
            kind = kinds[offset]
            low, high = ranges[kind]
            value = low + int(rng.random() * (high - low + 1))
            parts.append(
                f"{patients[offset]},{prefix}.{micro:06d}Z,{plan.event_types[kind]},{value}\n"
            )
        yield "".join(parts)


def metadata(plan: DownloadPlan) -> dict[str, object]:
    """What the export API answers for this download (times are of the window)."""
    end = plan.start_us + plan.span_us
    return {
        "id": plan.download_id,
        "rows": plan.rows,
        "event_types": sorted(plan.event_types),
        "patients": list(plan.patients),
        "start_time": _iso_second(plan.start_us // 1_000_000) + "Z",
        "end_time": _iso_second(end // 1_000_000) + "Z",
    }


def write_download(plan: DownloadPlan, folder: Path, seed: int) -> Path:
    """Write one download's CSV and metadata through temporary names, then rename."""
    path = folder / f"{plan.download_id}.csv"
    tmp = folder / f".{plan.download_id}.csv.tmp"
    with tmp.open("w", encoding="utf-8", newline="") as out:
        for text in iter_rows(plan, seed):
            out.write(text)
    tmp.replace(path)
    meta = folder / f"{plan.download_id}.meta.json"
    meta.write_text(json.dumps(metadata(plan), indent=2) + "\n", encoding="utf-8")
    return path


def _write(args: tuple[DownloadPlan, Path, int]) -> Path:
    return write_download(*args)


def generate_export(
    export_id: str, root: Path, seed: int = 0, workers: int | None = None
) -> list[Path]:
    """Generate all downloads of an export under root/export_id, in parallel processes."""
    folder = root / export_id
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(plan, folder, seed) for plan in plan_export(export_id, seed)]
    workers = min(len(jobs), workers or os.cpu_count() or 1)
    if workers <= 1:
        return [_write(job) for job in jobs]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(_write, jobs))


def generate_readings(
    path: Path, count: int, devices: int = 1000, duplicates: float = 0.01, seed: int = 0
) -> None:
    """A deterministic NDJSON file of `count` device readings, interleaved in time across
    `devices` devices (one reading a device a minute), in four UTC offsets written both as
    +01:00 and +0100, about `duplicates` of them repeating an earlier instant of their
    device (sometimes in another offset) with another count."""
    from datetime import UTC, datetime, timedelta, timezone

    rng = random.Random(f"{seed}:readings")
    ids = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(devices)]
    zones = [timezone(timedelta(minutes=m)) for m in (0, 60, -300, 330)]
    start = datetime(2021, 9, 29, tzinfo=UTC)
    last: dict[int, datetime] = {}
    with path.open("w", encoding="utf-8") as out:
        for i in range(count):
            device = i % devices
            if device in last and rng.random() < duplicates:
                when = last[device]
            else:
                when = start + timedelta(seconds=(i // devices) * 60 + rng.randint(0, 59))
                last[device] = when
            zone = zones[device % 4] if rng.random() < 0.9 else rng.choice(zones)
            text = when.astimezone(zone).strftime("%Y-%m-%dT%H:%M:%S%z")
            if rng.random() < 0.5:
                text = f"{text[:-2]}:{text[-2:]}"
            out.write(
                f'{{"id": "{ids[device]}", "count": {rng.randint(1, 20)}, "timestamp": "{text}"}}\n'
            )

"""Deterministic synthetic exports in the reference shapes of SPEC.md.

`generate_export("small", root, seed=0)` writes `root/small/<download uuid>.csv` files and,
beside each, `<download uuid>.meta.json` holding the metadata the export API serves
(rows, event_types, patients, start_time, end_time), so that the server need not scan
gigabytes at start-up. The same seed always gives the same bytes.

Every metadata file is written first, so a folder always tells which downloads it should
hold (`folder_problems`); each CSV is written to `.<uuid>.csv.tmp` and renamed into place
when whole, so a `<uuid>.csv` is always complete. An interrupted run leaves only its own
temporary files, which the next run removes; the next run writes just what is missing.
"""

from __future__ import annotations

import json
import os
import random
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from patientkit.core.workers import WorkerPool, listening, send

HEADER = "patient_id,event_time,event_type,value\n"
Progress = Callable[[int, int], None]  # rows and bytes written since the last call
DAY_US = 86_400 * 1_000_000
EPOCH_2025_08_26 = 1_756_166_400  # 2025-08-26T00:00:00Z, where the first download starts

VALUE_RANGES = {  # plausible readings per event type, inclusive
    "heart_rate": (52, 118),
    "spo2": (91, 100),
    "bp_sys": (98, 165),
    "bp_dia": (58, 102),
}


@dataclass(frozen=True)
class ExportShape:
    """The size of a reference export: downloads, rows per download (a range), event
    types and patients."""

    downloads: int
    min_rows: int
    max_rows: int
    event_types: tuple[str, ...]
    patients: tuple[str, ...]


def _patients(prefix: str, n: int) -> tuple[str, ...]:
    return tuple(f"{prefix}{i:03d}" for i in range(1, n + 1))


SHAPES = {
    "demo": ExportShape(2, 5_000, 10_000, ("bp_sys", "bp_dia"), _patients("P", 4)),
    "small": ExportShape(10, 500_000, 1_000_000, ("heart_rate", "spo2"), _patients("S", 6)),
    "large": ExportShape(
        20, 5_000_000, 10_000_000, ("heart_rate", "spo2", "bp_sys", "bp_dia"), _patients("L", 20)
    ),
}


@dataclass(frozen=True)
class DownloadPlan:
    """One download of a generated export, decided from the seed before any row is written."""

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


META_SUFFIX = ".meta.json"


def csv_path(plan: DownloadPlan, folder: Path) -> Path:
    return folder / f"{plan.download_id}.csv"


def tmp_path(plan: DownloadPlan, folder: Path) -> Path:
    """Where a download is written before it is whole (hidden, never a `.csv`)."""
    return folder / f".{plan.download_id}.csv.tmp"


def meta_path(plan: DownloadPlan, folder: Path) -> Path:
    return folder / f"{plan.download_id}{META_SUFFIX}"


def write_metadata(plan: DownloadPlan, folder: Path) -> None:
    """Write a download's metadata through a temporary name (never half a file)."""
    meta = meta_path(plan, folder)
    tmp = folder / f".{meta.name}.tmp"
    tmp.write_text(json.dumps(metadata(plan), indent=2) + "\n", encoding="utf-8")
    tmp.replace(meta)


def write_download(
    plan: DownloadPlan, folder: Path, seed: int, progress: Progress | None = None
) -> Path:
    """Write one download's CSV through its temporary name, rename it into place, then
    its metadata (again: the server takes metadata only when it is not older than the
    CSV, see server/exports.py). `progress(rows, bytes)` is told of each block written."""
    path, tmp = csv_path(plan, folder), tmp_path(plan, folder)
    try:
        with tmp.open("w", encoding="utf-8", newline="") as out:
            header = 1  # the first block is the header: a line, no row
            for text in iter_rows(plan, seed):
                out.write(text)
                if progress is not None:
                    progress(text.count("\n") - header, len(text))  # ASCII: chars are bytes
                header = 0
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    write_metadata(plan, folder)
    return path


def _write(args: tuple[DownloadPlan, Path, int]) -> Path:
    """In a worker: write one download, telling the parent of each block (if it listens)."""
    progress = (lambda rows, nbytes: send((rows, nbytes))) if listening() else None
    return write_download(*args, progress=progress)


def _complete(plan: DownloadPlan, folder: Path) -> bool:
    """Whether a download is already in place with its metadata (a `.csv` appears whole)."""
    meta, path = meta_path(plan, folder), csv_path(plan, folder)
    try:
        return path.is_file() and json.loads(meta.read_text(encoding="utf-8")) == metadata(plan)
    except (OSError, ValueError):
        return False


def generate_export(
    export_id: str,
    root: Path,
    seed: int = 0,
    workers: int | None = None,
    on_progress: Progress | None = None,
) -> list[Path]:
    """Generate the downloads of an export under root/export_id that are not there yet,
    in parallel processes; all of them in the end. Returns every download's path.
    `on_progress(rows, bytes)` hears, in this process, of the rows and bytes written since
    its last call as they are written (the rows of downloads already in place first,
    with 0 bytes), so that it adds up to the export's rows.

    Interrupted (KeyboardInterrupt) or failed, it stops its workers, removes its
    temporary files and raises; run it again to finish the folder.
    """
    folder = root / export_id
    folder.mkdir(parents=True, exist_ok=True)
    plans = plan_export(export_id, seed)
    try:
        for plan in plans:
            tmp_path(plan, folder).unlink(missing_ok=True)  # left by a run that was killed
        todo = [plan for plan in plans if not _complete(plan, folder)]
        if on_progress is not None and len(todo) < len(plans):
            on_progress(sum(p.rows for p in plans) - sum(p.rows for p in todo), 0)
        for plan in todo:
            write_metadata(plan, folder)  # first: the folder says what it should hold
        jobs = [(plan, folder, seed) for plan in todo]
        workers = min(len(jobs), workers or os.cpu_count() or 1)
        if workers <= 1:
            for plan, _, _ in jobs:
                write_download(plan, folder, seed, on_progress)
        else:
            heard = None if on_progress is None else lambda m: on_progress(*m)
            with WorkerPool(workers, heard) as pool:
                for _ in pool.imap_unordered(_write, jobs):
                    pass
    finally:
        for plan in plans:  # the pool is stopped: no worker writes any more
            tmp_path(plan, folder).unlink(missing_ok=True)
    return [csv_path(plan, folder) for plan in plans]


def folder_problems(folder: Path, present: set[str]) -> list[str]:
    """What is wrong with an export folder whose downloads carry metadata: a download
    named by a `<uuid>.meta.json` whose CSV (`present`: the file names found) is missing,
    or a temporary file of an unfinished download. Each as `<name> (reason)`."""
    problems = {}
    for meta in folder.glob(f"*{META_SUFFIX}"):
        stem = meta.name.removesuffix(META_SUFFIX)
        if not stem.startswith(".") and not {f"{stem}.csv", f"{stem}.csv.gz"} & present:
            problems[f"{stem}.csv"] = "missing"
    for tmp in folder.glob(".*.csv.tmp"):
        name = tmp.name.removeprefix(".").removesuffix(".tmp")
        if name not in present:
            problems[name] = f"partial: {tmp.name} was never finished"
    return [f"{name} ({why})" for name, why in sorted(problems.items())]


def expected_rows(path: Path) -> int | None:
    """The `rows` of the `.meta.json` beside a `.csv`/`.csv.gz` file, if it has one."""
    name = path.name.removesuffix(".gz").removesuffix(".csv")
    meta = path.with_name(f"{name}{META_SUFFIX}")
    try:
        rows = json.loads(meta.read_text(encoding="utf-8")).get("rows")
    except (OSError, ValueError, AttributeError):
        return None
    return rows if isinstance(rows, int) and not isinstance(rows, bool) else None

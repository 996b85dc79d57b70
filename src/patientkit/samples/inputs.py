"""Deterministic sample inputs: device readings and test records (SPEC.md: `readings
generate`, `records generate`).

`readings generate` and `records generate` write files that the CLI's readers take
(inputs.read_items): NDJSON, a JSON array or CSV, plain or gzip, by the file's name.
Exactly round(N * F) entries are invalid and exactly round(N * D) repeat an earlier
valid entry (a reading of the same device at the same instant; a record with the same
test_id), so that a replay or a submission of the file reports exactly those counts.
The invalid ones go through every way the validators know an entry can be bad, in turn.
Everything is drawn from one random.Random seeded by the seed: the same arguments give
the same bytes (gzip included: no time or name in its header).
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
from typing import Any, NamedTuple

VALID, INVALID, DUPLICATE = 0, 1, 2
SAMPLE_SUFFIXES = ".ndjson, .ndjson.gz, .jsonl, .json, .json.gz, .csv, .csv.gz, or - for stdout"
READINGS_START = 1_632_873_600  # 2021-09-29T00:00:00Z, where sample readings start
READING_ZONES = (  # (offset minutes, +HHMM, +HH:MM): whole minutes, so seconds never shift
    (0, "+0000", "+00:00"),
    (60, "+0100", "+01:00"),
    (-300, "-0500", "-05:00"),
    (330, "+0530", "+05:30"),
)
BLOCK = 8192  # entries rendered and written at once


@dataclass(frozen=True)
class Written:
    """What a sample generator wrote: the file (`-` for stdout), its format, the number
    of entries (lines of NDJSON or CSV, elements of a JSON array) and how many of them
    are invalid or duplicates."""

    file: str
    format: str
    entries: int
    invalid: int
    duplicates: int

    def as_dict(self) -> dict[str, object]:
        return {
            "file": self.file,
            "format": self.format,
            "entries": self.entries,
            "invalid": self.invalid,
            "duplicates": self.duplicates,
        }


def sample_format(name: str) -> tuple[str, bool]:
    """(`ndjson`, `array` or `csv`, gzipped) for a sample file name; `-` is NDJSON.
    Raises UsageError for a name whose extension says none of them."""
    from patientkit.errors import UsageError

    if name == "-":
        return "ndjson", False
    lower = name.lower()
    gzipped = lower.endswith(".gz")
    base = lower.removesuffix(".gz")
    for suffix, kind in ((".ndjson", "ndjson"), (".jsonl", "ndjson"), (".json", "array")):
        if base.endswith(suffix):
            return kind, gzipped
    if base.endswith(".csv"):
        return "csv", gzipped
    raise UsageError(f"{name}: cannot tell the format from the name; use {SAMPLE_SUFFIXES}")


def _portion(total: int, fraction: float, option: str) -> int:
    """round(total * fraction), halves up; UsageError unless 0 <= fraction <= 1."""
    from patientkit.errors import UsageError

    if not 0.0 <= fraction <= 1.0:
        raise UsageError(f"{option} must be between 0 and 1, not {fraction}")
    return int(total * fraction + 0.5)


def plan_entries(
    total: int, invalid: float, duplicates: float, rng: random.Random
) -> tuple[bytearray, int, int]:
    """Which entries are VALID, INVALID or DUPLICATE: (kinds, invalid count, duplicate
    count), at positions drawn from rng. The first entry is valid whenever there are
    duplicates, so every duplicate has an earlier valid entry to repeat. UsageError when
    the fractions leave no room for that."""
    from patientkit.errors import UsageError

    bad = _portion(total, invalid, "--invalid")
    repeated = _portion(total, duplicates, "--duplicates")
    if bad + repeated > total or (repeated and bad + repeated >= total):
        raise UsageError(
            f"--invalid {invalid} and --duplicates {duplicates} leave no valid entry "
            f"among {total} to repeat"
        )
    kinds = bytearray(total)
    first = 1 if repeated else 0
    chosen = rng.sample(range(first, total), bad + repeated)
    for position in chosen[:bad]:
        kinds[position] = INVALID
    for position in chosen[bad:]:
        kinds[position] = DUPLICATE
    return kinds, bad, repeated


class Raw(NamedTuple):
    """An entry that is not a JSON object: its text in NDJSON, as a JSON array element
    (which must parse, or the rest of the array would be unread) and as a CSV row."""

    ndjson: str
    array: str
    csv: str


Fault = Callable[[dict[str, Any]], "dict[str, Any] | Raw"]


def _without(name: str) -> Fault:
    return lambda entry: {k: v for k, v in entry.items() if k != name}


def _with(name: str, value: Any) -> Fault:
    return lambda entry: {**entry, name: value(entry[name]) if callable(value) else value}


def _cut_line(entry: dict[str, Any]) -> Raw:
    """A line cut off mid-write: not JSON at all (NDJSON); a CSV row one field short."""
    text = json.dumps(entry)
    return Raw(text[: len(text) // 2], json.dumps(text[: len(text) // 2]), "cut,off")


def _not_an_object(entry: dict[str, Any]) -> Raw:
    values = list(entry.values())
    return Raw(json.dumps(values), json.dumps(values), ",".join(map(str, values)) + ",extra")


READING_FAULTS: tuple[tuple[str, Fault], ...] = (
    ("device id in capitals", _with("id", str.upper)),
    ("device id not a UUID", _with("id", lambda v: f"device-{v[:8]}")),
    ("device id a UUID1", _with("id", lambda v: f"{v[:14]}1{v[15:]}")),
    ("no id", _without("id")),
    ("no count", _without("count")),
    ("no timestamp", _without("timestamp")),
    ("count 0", _with("count", 0)),
    ("count negative", _with("count", lambda v: -v)),
    ("count a boolean", _with("count", True)),
    ("count a float", _with("count", lambda v: v + 0.5)),
    ("count too big for the store", _with("count", 2**63)),
    ("timestamp without offset", _with("timestamp", lambda v: v[:19])),
    ("timestamp of a day that is not", _with("timestamp", lambda v: "2021-02-30" + v[10:])),
    ("timestamp hour 25", _with("timestamp", lambda v: v[:11] + "25" + v[13:])),
    ("timestamp in another form", _with("timestamp", lambda v: v[:10] + " " + v[11:19])),
    ("timestamp a number", _with("timestamp", 1_632_873_600)),
    ("create shape without readings", lambda e: {"id": e["id"], "readings": []}),
    ("not an object", _not_an_object),
    ("not JSON", _cut_line),
)

RECORD_NOT_STRINGS = {
    "test_id": 12345,
    "patient_id": None,
    "clinic_id": 7,
    "test_type": ["glucose"],
    "result": 5.4,
}
RECORD_FAULTS: tuple[tuple[str, Fault], ...] = (
    *(
        fault
        for name in ("test_id", "patient_id", "clinic_id", "test_type", "result")
        for fault in (
            (f"no {name}", _without(name)),
            (f"{name} empty", _with(name, "")),
            (f"{name} blank", _with(name, "   ")),
            (f"{name} not a string", _with(name, RECORD_NOT_STRINGS[name])),
        )
    ),
    ("not an object", _not_an_object),
    ("not JSON", _cut_line),
)


def _csv_cell(value: Any, strings_only: bool) -> str:
    """A JSON value as the CSV text a person would have written: a value of the wrong
    type becomes an empty cell where only strings belong (a number in CSV is text, and
    would be valid). No sample value needs quoting: none holds a comma, quote or line
    break."""
    if value is None or isinstance(value, list | dict) or (strings_only and type(value) is not str):
        return ""
    if value is True or value is False:
        return "true" if value else "false"
    return str(value)


def _render(
    entry: dict[str, Any] | Raw, kind: str, fields: tuple[str, ...], strings_only: bool = False
) -> str:
    """One entry as a line of `kind` (ndjson, array or csv with these fields)."""
    if isinstance(entry, Raw):
        return entry.ndjson if kind == "ndjson" else entry.array if kind == "array" else entry.csv
    if kind != "csv":
        return json.dumps(entry, ensure_ascii=False)
    return ",".join(_csv_cell(entry.get(name), strings_only) for name in fields)


class _SampleFile:
    """Writes entries (one a line) as NDJSON, a JSON array or CSV, gzipped or not, to a
    temporary file renamed over `name` when complete (never half a file), or to stdout
    for `-`. UsageError for a folder that does not exist or cannot be written."""

    def __init__(self, name: str, kind: str, gzipped: bool, header: str) -> None:
        self.name, self.kind, self.gzipped, self.header = name, kind, gzipped, header
        self.started = False

    def __enter__(self) -> _SampleFile:
        import gzip
        import sys
        import tempfile

        from patientkit.errors import UsageError

        if self.name == "-":
            self.temporary = None
            self.raw = sys.stdout.buffer
        else:
            path = Path(self.name)
            folder = path.parent
            if not folder.is_dir():
                raise UsageError(f"{self.name}: the folder {folder} does not exist")
            try:
                handle, temporary = tempfile.mkstemp(
                    dir=folder, prefix=f".{path.name}.", suffix=".tmp"
                )
            except OSError as exc:
                raise UsageError(f"cannot write {self.name}: {exc.strerror}") from None
            self.temporary = Path(temporary)
            self.raw = os.fdopen(handle, "wb")
        self.out = self.raw
        if self.gzipped:  # no name and no time in the header: the same bytes every run
            self.out = gzip.GzipFile(
                filename="", mode="wb", fileobj=self.raw, compresslevel=1, mtime=0
            )
        if self.kind == "csv":
            self._write(self.header + "\n")
        return self

    def _write(self, text: str) -> None:
        self.out.write(text.encode("utf-8"))

    def lines(self, lines: list[str]) -> None:
        if not lines:
            return
        if self.kind == "array":
            self._write(("[\n" if not self.started else ",\n") + ",\n".join(lines))
        else:
            self._write("\n".join(lines) + "\n")
        self.started = True

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        from patientkit.errors import UsageError

        try:
            if exc is None and self.kind == "array":
                self._write("\n]\n" if self.started else "[]\n")
            if self.out is not self.raw:
                self.out.close()
            if self.temporary is None:
                self.raw.flush()
                return
            self.raw.flush()
            if exc is None:
                os.fsync(self.raw.fileno())
            self.raw.close()
            if exc is None:
                self.temporary.chmod(0o666 & ~_umask())
                self.temporary.replace(self.name)
        except OSError as error:
            if self.temporary is None:
                raise
            raise UsageError(f"cannot write {self.name}: {error.strerror or error}") from None
        finally:
            if self.temporary is not None:
                self.raw.close()
                self.temporary.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _minute_prefix(minute_start: int, offset_minutes: int) -> str:
    """`YYYY-MM-DDTHH:MM:` of a UTC minute, in an offset of whole minutes."""
    return time.strftime("%Y-%m-%dT%H:%M:", time.gmtime(minute_start + offset_minutes * 60))


def _device_ids(rng: random.Random, devices: int) -> list[str]:
    return [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(devices)]


def _reading_lines(
    total: int, devices: int, kinds: bytearray, rng: random.Random, kind: str
) -> Iterator[list[str]]:
    """Blocks of rendered readings. Each device reads once a minute (readings interleave
    across devices, times ascending), at a random second, with a count of 1 to 20, in
    its own UTC offset (one reading in ten in another), written as +01:00 or +0100. A
    DUPLICATE repeats the instant of the device's latest valid reading (in any offset,
    with another count); an INVALID one breaks a valid-looking reading in the next way of
    READING_FAULTS. The hot path draws two random numbers a reading and joins strings
    made beforehand: a million readings take a couple of seconds."""
    ids = _device_ids(rng, devices)
    csv = kind == "csv"
    heads = [f"{d}," if csv else f'{{"id": "{d}", "count": ' for d in ids]
    middle, tail = (",", "") if csv else (', "timestamp": "', '"}')
    seconds = [f"{second:02d}" for second in range(60)]
    counts = [str(count) for count in range(1, 21)]
    offsets = [(zone[1], zone[2]) for zone in READING_ZONES]
    random_ = rng.random
    last_minute, last_second = [-1] * devices, [0] * devices  # of each device's latest valid
    faults = 0
    block: list[str] = []
    append = block.append
    i = 0
    for minute in range((total + devices - 1) // devices):
        start = READINGS_START + minute * 60
        prefixes = [_minute_prefix(start, zone[0]) for zone in READING_ZONES]
        for device in range(min(devices, total - i)):
            what = kinds[i]
            i += 1
            r = random_() * 60
            second = int(r)
            count = int((r - second) * 20)  # the rest of the draw: uniform too
            r = random_()
            z = device & 3 if r < 0.9 else int((r - 0.9) * 40)
            style = int(r * 1000) & 1  # +0100 or +01:00
            if not what:
                last_minute[device], last_second[device] = minute, second
                append(
                    f"{heads[device]}{counts[count]}{middle}{prefixes[z]}{seconds[second]}"
                    f"{offsets[z][style]}{tail}"
                )
                if len(block) == BLOCK:
                    yield block
                    block = []
                    append = block.append
                continue
            at, prefix = device, prefixes[z]
            if what == DUPLICATE:
                if last_minute[at] < 0:
                    at = 0  # the first entry is valid: device 0 has a reading
                z = int(r * 4)
                second = last_second[at]
                prefix = _minute_prefix(READINGS_START + last_minute[at] * 60, READING_ZONES[z][0])
            timestamp = f"{prefix}{seconds[second]}{offsets[z][style]}"
            if what == DUPLICATE:
                append(f"{heads[at]}{counts[count]}{middle}{timestamp}{tail}")
            else:
                entry = {"id": ids[at], "count": count + 1, "timestamp": timestamp}
                broken = READING_FAULTS[faults % len(READING_FAULTS)][1](entry)
                append(_render(broken, kind, ("id", "count", "timestamp")))
                faults += 1
            if len(block) == BLOCK:
                yield block
                block = []
                append = block.append
    if block:
        yield block


def generate_readings(
    path: Path | str,
    count: int,
    devices: int = 1000,
    duplicates: float = 0.01,
    seed: int = 0,
    invalid: float = 0.0,
) -> Written:
    """Write `count` device readings of `devices` devices to `path` (format by its name,
    see sample_format; `-` is stdout), exactly round(count * invalid) of them invalid and
    round(count * duplicates) repeating an earlier reading's (device, instant). Lines of
    the readings input shape `{"id", "count", "timestamp"}` (CSV: `id,count,timestamp`).
    Deterministic for a seed. Raises UsageError for a bad name, fraction or folder."""
    from patientkit.errors import UsageError

    if count < 0 or devices < 1:
        raise UsageError("--readings must be 0 or more and --devices 1 or more")
    name = str(path)
    kind, gzipped = sample_format(name)
    rng = random.Random(f"{seed}:readings")
    kinds, bad, repeated = plan_entries(count, invalid, duplicates, rng)
    with _SampleFile(name, kind, gzipped, "id,count,timestamp") as out:
        for block in _reading_lines(count, devices, kinds, rng, kind):
            out.lines(block)
    return Written(name, _format_name(kind, gzipped), count, bad, repeated)


def _format_name(kind: str, gzipped: bool) -> str:
    name = "json" if kind == "array" else kind
    return f"{name}.gz" if gzipped else name


TEST_TYPES: tuple[tuple[str, Callable[[random.Random], str]], ...] = (
    ("glucose", lambda r: f"{r.gauss(5.6, 1.2):.1f} mmol/L"),
    ("hba1c", lambda r: f"{r.gauss(5.7, 0.8):.1f} %"),
    ("cholesterol", lambda r: f"{r.gauss(5.0, 0.9):.1f} mmol/L"),
    ("hemoglobin", lambda r: f"{r.gauss(14.0, 1.5):.1f} g/dL"),
    ("tsh", lambda r: f"{abs(r.gauss(2.0, 1.1)):.2f} mIU/L"),
    ("creatinine", lambda r: f"{abs(r.gauss(80, 20)):.0f} µmol/L"),
    ("ferritin", lambda r: f"{abs(r.gauss(90, 60)):.0f} ng/mL"),
    ("covid_pcr", lambda r: "positive" if r.random() < 0.08 else "negative"),
)
RECORD_HEADER = ("test_id", "patient_id", "clinic_id", "test_type", "result")
RECENT = 10_000  # valid records a duplicate may resend: the latest ones
# json.dumps(record, ensure_ascii=False) of a record made here (no value of it needs an
# escape), at a fraction of the cost; a broken record goes through json.dumps
RECORD_JSON = (
    '{{"test_id": "{test_id}", "patient_id": "{patient_id}", "clinic_id": "{clinic_id}", '
    '"test_type": "{test_type}", "result": "{result}"}}'
)


def uuid4_text(bits: int) -> str:
    """`str(uuid.UUID(int=bits, version=4))` for a 128-bit `bits`, without the UUID object
    (a third of the time of making a sample record; RFC 4122: version 4, variant 10)."""
    bits = (bits & ~(0xC000 << 48) | 0x8000 << 48) & ~(0xF000 << 64) | 4 << 76
    h = f"{bits:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _record_lines(
    total: int, clinics: int, kinds: bytearray, rng: random.Random, kind: str
) -> Iterator[list[str]]:
    """Blocks of rendered test records: UUID4 test ids, patients `P000001`… (about one for
    every four records, each tied to one clinic), clinics `C001`… (every clinic has
    records once there are as many valid records as clinics), a test type and a
    plausible result with its unit. A DUPLICATE resends the test_id of one of the latest
    RECENT valid records, so memory stays bounded whatever the count (half of them the
    same record, half with another result); an INVALID one breaks a
    valid-looking record in the next way of RECORD_FAULTS."""
    patients = max(1, total // 4)
    width = max(3, len(str(clinics)))
    recent: list[dict[str, Any]] = []  # the latest RECENT valid records, as a ring
    valid = 0  # valid records so far
    faults = 0
    block: list[str] = []
    for i in range(total):
        what = kinds[i]
        if what == DUPLICATE:
            record = dict(recent[int(rng.random() * len(recent))])
            if rng.random() < 0.5:
                record["result"] = dict(TEST_TYPES)[record["test_type"]](rng)
        else:
            patient = int(rng.random() * patients)
            clinic = valid if valid < clinics else patient % clinics
            test_type, result = TEST_TYPES[int(rng.random() * len(TEST_TYPES))]
            record = {
                "test_id": uuid4_text(rng.getrandbits(128)),
                "patient_id": f"P{patient + 1:06d}",
                "clinic_id": f"C{clinic + 1:0{width}d}",
                "test_type": test_type,
                "result": result(rng),
            }
        if what == INVALID:
            broken = RECORD_FAULTS[faults % len(RECORD_FAULTS)][1](record)
            block.append(_render(broken, kind, RECORD_HEADER, strings_only=True))
            faults += 1
        else:
            if what == VALID:
                if len(recent) < RECENT:
                    recent.append(record)
                else:
                    recent[valid % RECENT] = record
                valid += 1
            block.append(
                _render(record, kind, RECORD_HEADER)
                if kind == "csv"
                else '{{"test_id": "{test_id}", "patient_id": "{patient_id}", "clinic_id": '
                '"{clinic_id}", "test_type": "{test_type}", "result": "{result}"}}'.format_map(
                    record
                )
            )
        if len(block) == BLOCK:
            yield block
            block = []
    if block:
        yield block


def generate_records(
    path: Path | str,
    count: int,
    clinics: int = 10,
    duplicates: float = 0.0,
    seed: int = 0,
    invalid: float = 0.0,
) -> Written:
    """Write `count` test records of `clinics` clinics to `path` (format by its name, see
    sample_format; `-` is stdout), exactly round(count * invalid) of them invalid and
    round(count * duplicates) repeating an earlier record's test_id. Deterministic for a
    seed. Raises UsageError for a bad name, fraction or folder."""
    from patientkit.errors import UsageError

    if count < 0 or clinics < 1:
        raise UsageError("--records must be 0 or more and --clinics 1 or more")
    name = str(path)
    kind, gzipped = sample_format(name)
    rng = random.Random(f"{seed}:records")
    kinds, bad, repeated = plan_entries(count, invalid, duplicates, rng)
    with _SampleFile(name, kind, gzipped, ",".join(RECORD_HEADER)) as out:
        for block in _record_lines(count, clinics, kinds, rng, kind):
            out.lines(block)
    return Written(name, _format_name(kind, gzipped), count, bad, repeated)

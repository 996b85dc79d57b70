"""An input that cannot be read to its end (case 08): a truncated or corrupt gzip stream,
from a file or from stdin, for `readings replay` and `records submit` alike: one line
naming the input and saying what is wrong, the summary of what was delivered before it
on stdout, exit 1. No command ever ends with a bare `Aborted.`."""

import functools
import gzip
import json
import random
import sqlite3
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from patientkit.errors import ReadError
from patientkit.inputs import read_items
from patientkit.samples.inputs import generate_readings
from tests.helpers import examples, run_cli

CASE = Path(__file__).resolve().parents[1] / "cases" / "08-truncated-gzip"
HALF = CASE / "half.ndjson.gz"
TRUNCATED = (
    "cannot read it to the end: truncated or corrupt compressed data (Compressed file ended "
    "before the end-of-stream marker was reached)"
)


def stored_readings(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT count(*) FROM readings").fetchone()[0]


def stored_records(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT count(*) FROM test_records").fetchone()[0]


def cut(data: bytes, keep: float = 0.5) -> bytes:
    return data[: int(len(data) * keep)]


@pytest.fixture
def half(tmp_path: Path) -> tuple[Path, int]:
    """The case's file when present; else one made the same way (a gzip cut in half).
    Returns the file and how many readings it holds before the cut."""
    if HALF.exists():
        return HALF, 99_716  # every whole line before the cut (93,437 before the fix)
    plain = tmp_path / "whole.ndjson"
    generate_readings(plain, 200_000, devices=50)
    path = tmp_path / "half.ndjson.gz"
    path.write_bytes(cut(gzip.compress(plain.read_bytes())))
    return path, whole_lines(readable(path.read_bytes())).count(b"\n")


def readable(data: bytes) -> bytes:
    """Every byte a damaged or cut gzip stream gives before the damage, as zlib sees it."""
    try:
        return zlib.decompressobj(wbits=31).decompress(data)
    except zlib.error:  # damaged from the header on
        return b""


def whole_lines(text: bytes) -> bytes:
    return text[: text.rfind(b"\n") + 1]


def assert_one_error_line(err: str, expected: str) -> None:
    assert "Aborted" not in err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {expected}"], err


def test_replay_of_a_truncated_gzip_reports_what_it_delivered_and_exits_1(half, tmp_path):
    path, readings = half
    db = tmp_path / "cut.db"
    result = run_cli("readings", "replay", str(path), "--db", str(db))
    assert result.code == 1, result.err
    assert_one_error_line(result.err, f"{path}: {TRUNCATED}")
    summary = json.loads(result.out)
    assert summary["read"] == summary["delivered"] == readings
    assert summary["invalid"] == summary["dead_lettered"] == 0
    assert stored_readings(db) == readings - summary["duplicates"]


@pytest.fixture(scope="module")
def small_half(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """A smaller gzip cut the case's way (1.2 MB readable before the cut: past the first
    chunk), for what does not depend on the case's size (stdin's name, --debug). Returns
    the file and how many readings it holds before the cut."""
    folder = tmp_path_factory.mktemp("small-half")
    plain = folder / "whole.ndjson"
    generate_readings(plain, 25_000, devices=50)
    path = folder / "half.ndjson.gz"
    path.write_bytes(cut(gzip.compress(plain.read_bytes())))
    return path, whole_lines(readable(path.read_bytes())).count(b"\n")


def test_replay_of_a_truncated_gzip_from_stdin_names_stdin(small_half, tmp_path):
    """Read from a pipe, every whole reading before the cut is delivered too (the case's
    file itself is replayed from its path above)."""
    path, readings = small_half
    db = tmp_path / "cut2.db"
    result = run_cli("readings", "replay", "-", "--db", str(db), input=path.read_bytes())
    assert result.code == 1, result.err
    assert_one_error_line(result.err, f"<stdin>: {TRUNCATED}")
    assert json.loads(result.out)["delivered"] == readings
    assert stored_readings(db) > 0


def test_debug_shows_the_traceback_and_keeps_the_exit_code(small_half, tmp_path):
    """What --debug adds does not depend on the file: the smaller one cut the case's way."""
    path, _ = small_half
    result = run_cli("--debug", "readings", "replay", str(path), "--db", str(tmp_path / "d.db"))
    assert result.code == 1
    assert "Traceback" in result.err and "EOFError" in result.err
    assert result.err.splitlines()[-1] == f"error: {path}: {TRUNCATED}"
    assert json.loads(result.out)["delivered"] > 0


_BEFORE_ID, _AFTER_ID = json.dumps(
    {
        "test_id": "<id>",
        "patient_id": "P1",
        "clinic_id": "C1",
        "test_type": "glucose",
        "result": "5.1",
    }
).split("<id>")


@functools.cache
def records_lines(count: int) -> bytes:
    """`count` valid records as NDJSON, test ids T000000 on: json.dumps's very text
    around each id (a json.dumps a record was 0.23 CPU-s for 50,000), made once a count."""
    return "".join(f"{_BEFORE_ID}T{n:06d}{_AFTER_ID}\n" for n in range(count)).encode()


SUBMITTED = 10_000  # 1 MB, some 600 KB before the cut: a read gathering to it would lose all


@pytest.mark.parametrize("where", ["file", "stdin"])
def test_submit_of_a_truncated_gzip_shares_the_mechanism(tmp_path, where):
    data = cut(gzip.compress(records_lines(SUBMITTED)), 0.6)
    path = tmp_path / "records.ndjson.gz"
    path.write_bytes(data)
    db = tmp_path / "s.db"
    if where == "file":
        result = run_cli("records", "submit", str(path), "--db", str(db))
        name = str(path)
    else:
        result = run_cli("records", "submit", "-", "--db", str(db), input=data)
        name = "<stdin>"
    assert result.code == 1, result.err
    assert_one_error_line(result.err, f"{name}: {TRUNCATED}")
    summary = json.loads(result.out)
    assert 0 < summary["created"] == summary["read"] == stored_records(db) < SUBMITTED
    assert summary["invalid"] == summary["failed"] == 0


def test_corrupt_gzip_data_mid_file_is_named_too(tmp_path):
    plain = tmp_path / "r.ndjson"
    generate_readings(plain, 20_000, devices=20)  # 2 MB: damaged past the first read (1 MiB)
    data = bytearray(gzip.compress(plain.read_bytes()))
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(64)  # zeros in the deflate stream
    path = tmp_path / "corrupt.ndjson.gz"
    path.write_bytes(bytes(data))
    result = run_cli("readings", "replay", str(path), "--db", str(tmp_path / "c.db"))
    assert result.code == 1, result.err
    errors = [line for line in result.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(
        f"error: {path}: cannot read it to the end: truncated or"
    )
    assert "Aborted" not in result.err and "Traceback" not in result.err
    assert json.loads(result.out)["delivered"] > 0


def test_csv_and_json_array_inputs_cut_short(tmp_path):
    rows = "id,count,timestamp\n" + "".join(
        f"063c5957-8905-45f9-bfe3-960713788919,1,2021-09-29T16:{n // 60 % 60:02d}:{n % 60:02d}"
        f"+0{n // 3600}:00\n"
        for n in range(6_000)  # 390 KB: under a chunk, so a read gathering to its end loses all
    )
    csv_path = tmp_path / "r.csv.gz"
    csv_path.write_bytes(cut(gzip.compress(rows.encode())))
    result = run_cli("readings", "replay", str(csv_path), "--db", str(tmp_path / "c.db"))
    assert result.code == 1, result.err
    assert_one_error_line(result.err, f"{csv_path}: {TRUNCATED}")
    assert json.loads(result.out)["delivered"] > 0
    array = json.dumps([json.loads(line) for line in records_lines(12_000).splitlines()])
    json_path = tmp_path / "records.json.gz"
    json_path.write_bytes(cut(gzip.compress(array.encode())))
    result = run_cli("records", "submit", str(json_path), "--db", str(tmp_path / "s.db"))
    assert result.code == 1, result.err
    assert_one_error_line(result.err, f"{json_path}: {TRUNCATED}")
    assert json.loads(result.out)["created"] > 0


def test_a_generic_eof_is_never_a_bare_aborted(tmp_path):
    """An EOFError from any command (here `export count` on a cut gzip) is one error line
    and exit 1, never click's `Aborted.` (the root group turns it into our error)."""
    path = tmp_path / "half_export.csv.gz"
    source = CASE / "half_export.csv.gz"
    if source.exists():
        path.write_bytes(source.read_bytes())
    else:
        text = (
            "patient_id,event_time,event_type,value\n" + "P1,2025-01-01T00:00:00Z,hr,60\n" * 50_000
        )
        path.write_bytes(cut(gzip.compress(text.encode())))
    for debug in ([], ["--debug"]):
        result = run_cli(*debug, "export", "count", str(path))
        assert result.code == 1, result.err
        assert "Aborted" not in result.err
        assert result.err.splitlines()[-1].startswith("error: ")
        assert result.out == ""  # no partial counts


# --- the reader itself, under any cut or corruption ---------------------------------------


@pytest.fixture(scope="module")
def gz_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder for every example's file (each example writes its own over the last)."""
    return tmp_path_factory.mktemp("gz")


_LINES = records_lines(400)
_GZ = gzip.compress(_LINES)


@settings(max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    end=st.integers(min_value=0, max_value=len(_GZ)),
    flips=st.lists(
        st.tuples(st.integers(min_value=0, max_value=len(_GZ) - 1), st.integers(1, 255)),
        max_size=3,
    ),
)
def test_a_damaged_gzip_yields_items_then_at_most_unreadable_input(gz_folder, end, flips):
    """Any cut and any flipped bytes: the reader yields items, then either ends or raises
    ReadError naming the file; never another exception."""
    data = bytearray(_GZ[:end])
    for at, xor in flips:
        if at < len(data):
            data[at] ^= xor
    path = gz_folder / "in.ndjson.gz"
    path.write_bytes(bytes(data))
    items = []
    try:
        items.extend(read_items(str(path), ("test_id",)))
    except ReadError as exc:
        assert str(exc).startswith(f"{path}: ")
    if not flips:  # a clean cut: a prefix of the records, in order
        assert [item.value["test_id"] for item in items if item.error is None] == [
            f"T{n:06d}" for n in range(len([i for i in items if i.error is None]))
        ]


@functools.cache
def _many() -> bytes:
    """4,000 records that compress to about 150 KB: many steps of gzip's 8 KB (made when
    first used, not when the module is collected: in every process of a run)."""
    return "".join(
        json.dumps(
            {"test_id": f"T{n:06d}", "patient_id": f"P{random.Random(n).getrandbits(128):x}"}
        )
        + "\n"
        for n in range(4_000)
    ).encode()


@functools.cache
def _compressed(kind: str) -> bytes:
    """`kind`'s whole input, gzipped: once per kind, not once per example."""
    return gzip.compress(_as(kind))


def _as(kind: str) -> bytes:
    records = [json.loads(line) for line in _many().splitlines()]
    if kind == "csv":
        rows = "".join(f"{r['test_id']},{r['patient_id']}\n" for r in records)
        return f"test_id,patient_id\n{rows}".encode()
    if kind == "array":
        return json.dumps(records).encode()
    return _many()


_IDS = [f"T{n:06d}" for n in range(4_000)]  # _many()'s test ids, in order


@pytest.mark.parametrize("kind", ["ndjson", "csv", "array"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(keep=st.floats(min_value=0.0, max_value=1.0))
def test_a_cut_gzip_yields_every_whole_record_before_the_cut(gz_folder, kind, keep):
    """Nothing readable is lost: every record whole in what the cut stream still gives is
    read, then ReadError. gzip's gathering reads (many 8 KB decompression steps to one
    answer) once dropped everything gathered when a step found the cut: up to a chunk."""
    whole = _compressed(kind)
    data = whole[: int(len(whole) * keep)]
    gave = readable(data)
    if kind == "csv":
        expected = max(whole_lines(gave).count(b"\n") - 1, 0)
    elif kind == "array":
        expected = gave.count(b"}")
    else:
        expected = whole_lines(gave).count(b"\n")
    path = gz_folder / f"in.{'json' if kind == 'array' else kind}.gz"
    path.write_bytes(data)
    items = []
    try:
        items.extend(read_items(str(path), ("test_id", "patient_id")))
    except ReadError as exc:
        assert str(exc).startswith(f"{path}: ")
        assert len(data) < len(whole)
    taken = [item for item in items if item.error is None]
    assert len(taken) == expected
    assert [item.value["test_id"] for item in taken] == _IDS[:expected]

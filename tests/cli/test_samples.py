"""`patientkit readings generate` and `records generate`: sample inputs that the CLI reads
back with exactly the counts they were made with, in every format, the same bytes for a
seed."""

import contextlib
import gzip
import json
import re
import uuid
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from patientkit.core import validation
from patientkit.inputs import read_items
from patientkit.samples.inputs import (
    READING_FAULTS,
    RECENT,
    RECORD_FAULTS,
    RECORD_HEADER,
    generate_readings,
    generate_records,
)
from patientkit.workflows.replay import CSV_FIELDS, Parser
from tests.helpers import examples, run_cli

FORMATS = [
    ("r.ndjson", "ndjson"),
    ("r.ndjson.gz", "ndjson.gz"),
    ("r.json", "json"),
    ("r.csv", "csv"),
    ("r.csv.gz", "csv.gz"),
]


def line(file: Path, fmt: str, entries: int, invalid: int, duplicates: int) -> str:
    written = {
        "file": str(file),
        "format": fmt,
        "entries": entries,
        "invalid": invalid,
        "duplicates": duplicates,
    }
    return json.dumps(written) + "\n"


def reasons(err: str) -> Counter:
    """The reasons of the `file:line: reason` lines on stderr (cut at a colon)."""
    found = Counter()
    for text in err.splitlines():
        match = re.fullmatch(r"(?:warning: )?.*?:[0-9]+: (.*)", text)
        if match:
            found[match.group(1).split(":")[0]] += 1
    return found


@pytest.mark.parametrize(("name", "fmt"), FORMATS)
def test_generated_readings_replay_with_exactly_their_counts(tmp_path, name, fmt):
    file = tmp_path / name
    made = run_cli(
        "readings", "generate", str(file), "--readings", "2000", "--devices", "20",
        "--invalid", "0.1", "--duplicates", "0.05", "--seed", "7",
    )  # fmt: skip
    assert (made.code, made.out, made.err) == (0, line(file, fmt, 2000, 200, 100), "")
    replay = run_cli("readings", "replay", str(file), "--db", str(tmp_path / "r.db"))
    assert replay.code == 1
    summary = json.loads(replay.out)
    assert {k: summary[k] for k in ("read", "delivered", "invalid", "duplicates", "devices")} == {
        "read": 2000,
        "delivered": 1800,
        "invalid": 200,
        "duplicates": 100,
        "devices": 20,
    }
    found = reasons(replay.err)
    assert sum(found.values()) == 200
    expected = {
        validation.ID_REQUIRED,
        validation.READINGS_REQUIRED,
        validation.BAD_DEVICE_ID,
        validation.BAD_COUNT,
        validation.BAD_TIMESTAMP,
        "count",  # "count: number too large for the store (at most 2^63-1)"
    }
    expected.add("expected 3 fields, found 2" if "csv" in fmt else validation.NOT_AN_OBJECT)
    if fmt.startswith("ndjson"):
        expected.add("invalid JSON")  # a line cut off mid-write
    if "csv" in fmt:
        expected |= {"expected 3 fields, found 4"}
        expected -= {validation.ID_REQUIRED, validation.READINGS_REQUIRED}  # no such in CSV
    assert set(found) == expected


@pytest.mark.parametrize(("name", "fmt"), FORMATS)
def test_generated_records_submit_with_exactly_their_counts(tmp_path, name, fmt):
    file = tmp_path / name.replace("r.", "t.")
    made = run_cli(
        "records", "generate", str(file), "--records", "1500", "--clinics", "12",
        "--invalid", "0.1", "--duplicates", "0.04",
    )  # fmt: skip
    assert (made.code, made.out, made.err) == (0, line(file, fmt, 1500, 150, 60), "")
    db = tmp_path / "t.db"
    submit = run_cli("records", "submit", str(file), "--db", str(db))
    assert submit.code == 1
    summary = json.loads(submit.out)
    del summary["seconds"]
    assert summary == {
        "read": 1500,
        "created": 1290,
        "duplicates": 60,
        "invalid": 150,
        "rejected": 0,
        "failed": 0,
        "retries": 0,
    }
    assert submit.err.splitlines()[-1] == "error: 150 invalid of 1500 records"
    found = reasons(submit.err)
    assert found["Invalid or missing field"] >= 5 * 4  # each field: absent, empty, blank…
    assert sum(found.values()) == 150
    info = run_cli("store", "info", "--db", str(db))
    assert (info.json()["records"], info.json()["clinics"]) == (1290, 12)
    listed = run_cli("records", "list", "--clinic", "C001", "--db", str(db))
    assert listed.code == 0 and listed.out.count("\n") > 0


def test_the_same_seed_gives_the_same_bytes(tmp_path):
    for command, extra in (("readings", ["--readings", "3000"]), ("records", ["--records", "500"])):
        for name in ("a.ndjson.gz", "b.ndjson.gz", "c.csv", "d.csv"):
            seed = "2" if name[0] in "ab" or name == "c.csv" else "3"
            run_cli(command, "generate", str(tmp_path / name), *extra, "--invalid", "0.05",
                    "--duplicates", "0.02", "--seed", seed)  # fmt: skip
        assert (tmp_path / "a.ndjson.gz").read_bytes() == (tmp_path / "b.ndjson.gz").read_bytes()
        assert (tmp_path / "c.csv").read_bytes() != (tmp_path / "d.csv").read_bytes()
        plain = gzip.decompress((tmp_path / "a.ndjson.gz").read_bytes()).decode()
        assert plain.count("\n") == int(extra[1])


def test_generated_records_are_written_as_json_dumps_writes_them(tmp_path):
    """The records' fast rendering gives the very text json.dumps gives (every format's
    line of a valid or duplicate record; broken ones go through json.dumps itself), and
    every test id is a version 4 UUID as the uuid module writes it."""
    path = tmp_path / "r.ndjson"
    run_cli("records", "generate", str(path), "--records", "3000", "--invalid", "0.1",
            "--duplicates", "0.1", "--seed", "7")  # fmt: skip
    parsed = 0
    for line in path.read_text(errors="surrogateescape").splitlines():
        try:
            value = json.loads(line)
        except ValueError:  # an invalid entry made not to be JSON
            continue
        if isinstance(value, dict) and list(value) == list(RECORD_HEADER):
            parsed += 1
            assert json.dumps(value, ensure_ascii=False) == line
            with contextlib.suppress(ValueError, AttributeError):  # a broken id: no UUID
                assert str(uuid.UUID(value["test_id"])) == value["test_id"]
    assert parsed > 2700


def test_a_duplicate_resends_one_of_the_latest_records(tmp_path):
    """Duplicates come from the latest RECENT valid records (a bounded memory), and each
    resends a test id that came before it."""
    path = tmp_path / "r.ndjson"
    run_cli("records", "generate", str(path), "--records", "30000", "--duplicates", "0.05",
            "--seed", "1")  # fmt: skip
    seen: dict[str, int] = {}
    resent = 0
    for number, line in enumerate(path.read_text().splitlines()):
        test_id = json.loads(line)["test_id"]
        if test_id in seen:
            resent += 1
            assert number - seen[test_id] <= RECENT * 1.2, (number, seen[test_id])
        else:
            seen[test_id] = number
    assert resent == 1500


def test_stdout_gets_the_data_and_stderr_the_summary():
    result = run_cli("readings", "generate", "-", "--readings", "3", "--devices", "2")
    lines = result.out.splitlines()
    assert (result.code, len(lines)) == (0, 3)
    assert [sorted(json.loads(one)) for one in lines] == [["count", "id", "timestamp"]] * 3
    assert result.err == line(Path("-"), "ndjson", 3, 0, 0)
    quiet = run_cli("records", "generate", "-", "--records", "2", "-q")
    assert (quiet.code, quiet.out.count("\n"), quiet.err) == (0, 2, "")


def test_usage_errors_name_the_problem_and_write_nothing(tmp_path):
    bad_name = run_cli("readings", "generate", str(tmp_path / "r.txt"))
    assert (bad_name.code, bad_name.out, bad_name.err) == (
        2,
        "",
        f"error: {tmp_path / 'r.txt'}: cannot tell the format from the name; use .ndjson, "
        ".ndjson.gz, .jsonl, .json, .json.gz, .csv, .csv.gz, or - for stdout\n",
    )
    no_folder = run_cli("records", "generate", str(tmp_path / "nope" / "t.csv"))
    assert (no_folder.code, no_folder.err) == (
        2,
        f"error: {tmp_path / 'nope' / 't.csv'}: the folder {tmp_path / 'nope'} does not exist\n",
    )
    too_many = run_cli(
        "records", "generate", str(tmp_path / "t.csv"), "--records", "10",
        "--invalid", "0.5", "--duplicates", "0.5",
    )  # fmt: skip
    assert (too_many.code, too_many.err) == (
        2,
        "error: --invalid 0.5 and --duplicates 0.5 leave no valid entry among 10 to repeat\n",
    )
    out_of_range = run_cli("readings", "generate", str(tmp_path / "r.csv"), "--invalid", "1.5")
    assert out_of_range.code == 2 and "1.5 is not in the range" in out_of_range.err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no file, no temporary left


def test_all_invalid_is_allowed(tmp_path):
    file = tmp_path / "r.ndjson"
    made = run_cli("readings", "generate", str(file), "--readings", "40", "--invalid", "1")
    assert made.out == line(file, "ndjson", 40, 40, 0)
    replay = run_cli("readings", "replay", str(file), "--db", str(tmp_path / "r.db"))
    assert (replay.code, json.loads(replay.out)["invalid"]) == (1, 40)


def count_readings(path: Path) -> tuple[int, int, int]:
    """(entries, invalid, duplicates) of a readings file, as the replay's own parser and
    the store's (device, instant) key see them."""
    parser, seen = Parser(), set()
    entries = invalid = duplicates = 0
    for item in read_items(str(path), CSV_FIELDS):
        entries += 1
        for reading, _, _ in parser.readings(item):
            if reading is None:
                invalid += 1
            elif (reading[0], reading[3]) in seen:
                duplicates += 1
            else:
                seen.add((reading[0], reading[3]))
    return entries, invalid, duplicates


def count_records(path: Path) -> tuple[int, int, int]:
    seen = set()
    entries = invalid = duplicates = 0
    for item in read_items(
        str(path), ("test_id", "patient_id", "clinic_id", "test_type", "result")
    ):
        entries += 1
        if item.error or validation.record_problem(item.value):
            invalid += 1
        elif item.value["test_id"] in seen:
            duplicates += 1
        else:
            seen.add(item.value["test_id"])
    return entries, invalid, duplicates


@settings(
    max_examples=examples(60),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    count=st.integers(0, 400),
    units=st.integers(1, 30),
    invalid=st.floats(0, 0.6),
    duplicates=st.floats(0, 0.39),
    seed=st.integers(0, 2**32),
    name=st.sampled_from([name for name, _ in FORMATS]),
)
def test_the_counts_are_exact_for_any_options(
    tmp_path, count, units, invalid, duplicates, seed, name
):
    file = tmp_path / name
    if invalid + duplicates >= 1 or (
        count and duplicates and count * (invalid + duplicates) + 1 > count
    ):
        return
    made = generate_readings(file, count, units, duplicates, seed, invalid)
    assert count_readings(file) == (count, made.invalid, made.duplicates)
    assert made.invalid == int(count * invalid + 0.5)
    assert made.duplicates == int(count * duplicates + 0.5)
    done = generate_records(file, count, units, duplicates, seed, invalid)
    assert count_records(file) == (count, done.invalid, done.duplicates)


def test_every_kind_of_fault_is_made(tmp_path):
    """With at least as many invalid entries as kinds, each kind appears once at least."""
    file = tmp_path / "r.ndjson"
    generate_readings(file, 1000, 10, 0.0, 1, len(READING_FAULTS) / 1000)
    lines = file.read_text().splitlines()
    assert sum(1 for one in lines if '"count": true' in one) == 1
    assert sum(1 for one in lines if '"count": 9223372036854775808' in one) == 1
    generate_records(file, 1000, 10, 0.0, 1, len(RECORD_FAULTS) / 1000)
    assert count_records(file) == (1000, len(RECORD_FAULTS), 0)


def test_a_line_number_is_never_drawn_as_an_emoji(tmp_path):
    """`file:1234: reason` once printed as `file🔢 reason`: rich read `:1234:` as an emoji
    code. Line numbers and file names print as they are."""
    file = tmp_path / "t.ndjson"
    generate_records(file, 1233)
    with file.open("a") as out:
        out.write("{}\n")
    result = run_cli("records", "submit", str(file), "--db", str(tmp_path / "t.db"))
    assert result.err.splitlines()[0] == f"{file}:1234: Invalid or missing field: test_id"

"""The rejects / dead-letter file is always valid UTF-8 JSON, one object a line, whatever
the record or the input's name holds (a lone surrogate, NaN, an infinity), with the
source, line and reason of each entry kept."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from patientkit.rejects import UNWRITABLE, Rejects, entry_line
from tests.helpers import examples, run_cli

DEVICE = "55555555-5555-4555-8555-555555555555"


def strict_lines(path: Path) -> list[dict]:
    """Each line as strict JSON from UTF-8: no NaN, no Infinity, no invalid byte."""

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    text = path.read_bytes().decode("utf-8")  # raises on anything but UTF-8
    assert text.endswith("\n")
    return [json.loads(line, parse_constant=refuse) for line in text.splitlines()]


def test_an_input_named_with_a_byte_that_is_not_utf8_is_written_to_rejects(tmp_path):
    name = os.fsdecode(b"bad\xffname.ndjson")  # as Python gives it: with a surrogate
    source = tmp_path / name
    source.write_text(
        '{"test_id":"S1","patient_id":"p","clinic_id":"C","test_type":"t","result":""}\n'
        '{"test_id":"S2","patient_id":"p","clinic_id":"C","test_type":"t","result":"ok"}\n',
        encoding="utf-8",
    )
    rejects = tmp_path / "rejects.ndjson"
    done = run_cli(
        "records", "submit", str(source), "--db", str(tmp_path / "r.db"), "--rejects", str(rejects)
    )
    assert done.code == 1, done.err
    assert "internal error" not in done.err and "Traceback" not in done.err
    assert done.json()["created"] == 1 and done.json()["invalid"] == 1
    (entry,) = strict_lines(rejects)
    assert os.fsencode(entry["source"]) == os.fsencode(str(source))  # the same name, exactly
    assert entry["line"] == 1
    assert entry["reason"] == "Invalid or missing field: result"
    assert entry["record"]["test_id"] == "S1"


def test_a_readings_input_so_named_is_written_to_the_dead_letter_file(tmp_path):
    source = tmp_path / os.fsdecode(b"r\xe9.ndjson")
    source.write_text(
        f'{{"id":"{DEVICE}","count":0,"timestamp":"2021-09-29T16:09:15+01:00"}}\n'
        f'{{"id":"{DEVICE}","count":5,"timestamp":"2021-09-29T16:09:16+01:00"}}\n',
        encoding="utf-8",
    )
    dead = tmp_path / "dead.ndjson"
    db = str(tmp_path / "d.db")
    done = run_cli("readings", "replay", str(source), "--db", db, "--dead-letter", str(dead))
    assert done.code == 1, done.err
    assert "internal error" not in done.err
    assert done.json()["delivered"] == 1 and done.json()["invalid"] == 1
    (entry,) = strict_lines(dead)
    assert os.fsencode(entry["source"]) == os.fsencode(str(source))
    assert entry["line"] == 1
    assert "count" in entry["reason"]
    assert entry["record"]["count"] == 0


def test_a_record_holding_nan_or_infinity_is_kept_as_strict_json(tmp_path):
    source = tmp_path / "nan.ndjson"
    source.write_text(
        '{"test_id":"S1","patient_id":"p","clinic_id":"C","test_type":"t","result":NaN}\n'
        '{"test_id":"S2","patient_id":"p","clinic_id":"C","test_type":"t","result":1e999}\n'
        '{"test_id":"S3","patient_id":"p","clinic_id":"C","test_type":"t","result":"ok"}\n',
        encoding="utf-8",
    )
    rejects = tmp_path / "rejects.ndjson"
    done = run_cli(
        "records", "submit", str(source), "--db", str(tmp_path / "r.db"), "--rejects", str(rejects)
    )
    assert done.code == 1, done.err
    assert done.json()["created"] == 1 and done.json()["invalid"] == 2
    entries = strict_lines(rejects)
    assert [(e["line"], e["reason"]) for e in entries] == [
        (1, "Invalid or missing field: result"),
        (2, "Invalid or missing field: result"),
    ]
    assert all(e["record"] is None and e["record_error"] == UNWRITABLE for e in entries)


json_ish = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


def _has_nonfinite(value: object) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, list):
        return any(map(_has_nonfinite, value))
    if isinstance(value, dict):
        return any(map(_has_nonfinite, value.values()))
    return False


@settings(max_examples=examples(150), deadline=None)
@given(source=st.text(), reason=st.text(), record=json_ish)
def test_every_entry_is_one_line_of_strict_utf8_json_that_reads_back(source, reason, record):
    line = entry_line({"source": source, "line": 3, "reason": reason}, record)
    assert line.endswith("\n") and "\n" not in line[:-1]
    raw = line.encode("utf-8")  # never UnicodeEncodeError
    back = json.loads(raw.decode("utf-8"), parse_constant=lambda c: 1 / 0)
    assert (back["source"], back["line"], back["reason"]) == (source, 3, reason)
    if _has_nonfinite(record):
        assert back["record"] is None and back["record_error"] == UNWRITABLE
    else:
        assert back["record"] == record or record != record  # NaN-free: equal


def test_the_rejects_file_takes_such_an_entry(tmp_path):
    path = tmp_path / "rejects.ndjson"
    with Rejects(path) as rejects:
        rejects.write(os.fsdecode(b"in\xff.csv"), 2, "not valid UTF-8", {"a": "\udcff"})
        rejects.write("in.csv", 3, "bad", {"a": float("nan")})
    first, second = strict_lines(path)
    assert first == {
        "source": "in\udcff.csv",
        "line": 2,
        "reason": "not valid UTF-8",
        "record": {"a": "\udcff"},
    }
    assert second["record"] is None and second["reason"] == "bad"
    assert rejects.count == 2


@settings(max_examples=examples(100), deadline=None)
@given(source=st.text(), reason=st.text(), line=st.integers(min_value=1), count=st.integers(1))
def test_the_leftover_lines_of_a_replay_read_as_entry_line_writes_them(source, reason, line, count):
    """replay writes the readings handed back after Ctrl-C by formatting (fast); each line
    is the same JSON entry as `entry_line` makes, and valid UTF-8."""
    from patientkit.workflows.replay import _leftover_lines, record_of

    reading = ("55555555-5555-4555-8555-555555555555", count, "2021-09-29T16:09:15+01:00", 0)
    (made,) = _leftover_lines([(reading, source, line)], reason)
    want = entry_line({"source": source, "line": line, "reason": reason}, record_of(reading))
    assert json.loads(made.encode("utf-8")) == json.loads(want)
    assert made.endswith("\n") and "\n" not in made[:-1]

"""Help and messages for people: examples in every group's help, whole-sentence summaries,
the one-line summary that ends `readings replay` and `records submit`, and --to's help."""

from __future__ import annotations

import json
import re

import pytest

from tests.helpers import run_cli

GROUPS = [(), ("export",), ("readings",), ("records",), ("serve",)]
DEVICE = "063c5957-8905-45f9-bfe3-960713788919"


@pytest.mark.parametrize("group", GROUPS)
def test_every_group_help_shows_examples(group):
    result = run_cli(*group, "--help")
    assert result.code == 0
    assert "Examples:" in result.out
    assert re.search(r"^\s*patientkit \S+", result.out, re.MULTILINE)


@pytest.mark.parametrize("group", GROUPS[:4])
def test_no_summary_in_a_listing_is_cut_mid_sentence(group):
    """Each command's row in a listing is one whole sentence (it ends with a full stop,
    on its own row at 200 columns)."""
    result = run_cli(*group, "--help")
    panel = result.out.split("─ Commands ─", 1)[1].split("╰", 1)[0]
    rows = [line.strip("│ ").rstrip() for line in panel.splitlines()[1:] if line.strip("│ ")]
    assert rows
    for row in rows:
        name, _, summary = row.partition(" ")
        assert re.fullmatch(r"[a-z]+", name), row  # no continuation lines
        summary = summary.strip()
        assert summary.endswith("."), row
        assert summary.count(". ") == 0, row  # one sentence


@pytest.mark.parametrize(
    ("command", "words"),
    [
        (("readings", "latest", "--help"), "API to read from"),
        (("readings", "total", "--help"), "API to read from"),
        (("records", "list", "--help"), "API to read from"),
        (("readings", "replay", "--help"), "API to deliver to"),
        (("records", "submit", "--help"), "API to deliver to"),
    ],
)
def test_to_says_whether_it_reads_or_delivers(command, words):
    result = run_cli(*command)
    assert result.code == 0
    assert words in " ".join(result.out.split())


def readings(path, *lines):
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_replay_ends_with_one_line_for_people(tmp_path):
    good = {"id": DEVICE, "count": 3, "timestamp": "2024-01-01T00:00:00+00:00"}
    later = {**good, "timestamp": "2024-01-01T00:01:00+00:00"}
    source = readings(tmp_path / "r.ndjson", good, later, good)
    result = run_cli("readings", "replay", str(source), "--db", str(tmp_path / "s.db"))
    assert result.code == 0
    summary = result.json()
    assert (summary["read"], summary["devices"]) == (3, 1)
    said = (
        f"replayed 3 readings: {summary['delivered']} delivered, {summary['duplicates']} "
        r"duplicates, 1 devices in \d+\.\d\ds\n"
    )
    assert re.fullmatch(said, result.err), result.err
    quiet = run_cli("readings", "replay", str(source), "--db", str(tmp_path / "s.db"), "-q")
    assert (quiet.code, quiet.err) == (0, "")


def test_replay_with_invalid_readings_ends_with_the_error_line(tmp_path):
    good = {"id": DEVICE, "count": 3, "timestamp": "2024-01-01T00:00:00+00:00"}
    bad = {**good, "count": "x"}
    source = readings(tmp_path / "r.ndjson", good, bad)
    dead = tmp_path / "dead.ndjson"
    result = run_cli(
        "readings",
        "replay",
        str(source),
        "--db",
        str(tmp_path / "s.db"),
        "--dead-letter",
        str(dead),
    )
    assert result.code == 1
    assert result.err.splitlines()[-1] == f"error: 1 invalid of 2 readings (see {dead})"


def test_submit_ends_with_one_line_for_people(tmp_path):
    record = {"test_id": "T1", "patient_id": "P", "clinic_id": "C", "test_type": "x", "result": "r"}
    source = tmp_path / "t.ndjson"
    source.write_text(json.dumps(record) + "\n" + json.dumps({**record, "test_id": "T2"}) + "\n")
    db = str(tmp_path / "s.db")
    first = run_cli("records", "submit", str(source), "--db", db)
    again = run_cli("records", "submit", str(source), "--db", db)
    assert first.code == again.code == 0
    line = r"submitted 2 records: {} created, {} duplicates in \d+\.\d\ds\n"
    assert re.fullmatch(line.format(2, 0), first.err), first.err
    assert re.fullmatch(line.format(0, 2), again.err), again.err

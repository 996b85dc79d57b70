"""--format on export aggregate / count (json|table|csv) and records list (ndjson|csv|table):
exact text on stdout, the same text in -o FILE, JSON still the default."""

from __future__ import annotations

import csv
import io
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from patientkit.cli.formats import report_csv, report_json, report_table
from tests.helpers import examples, run_cli

CSV = (
    "patient_id,event_time,event_type,value\n"
    "P2,2025-01-01T00:00:00Z,bp_sys,120\n"
    "P1,2025-01-01T00:00:01Z,hr,60\n"
    "P2,2025-01-01T00:00:02Z,bp_sys,121\n"
    "P1,2025-01-01T00:00:03Z,bp_sys,119\n"
    "P10,2025-01-01T00:00:04Z,hr,1000\n"
)

EXPECTED_CSV = "patient_id,event_type,count\nP1,bp_sys,1\nP1,hr,1\nP10,hr,1\nP2,bp_sys,2\n"

EXPECTED_TABLE = """\
┏━━━━━━━━━━━━┳━━━━━━━━┳━━━━┓
┃ patient_id ┃ bp_sys ┃ hr ┃
┡━━━━━━━━━━━━╇━━━━━━━━╇━━━━┩
│ P1         │      1 │  1 │
│ P10        │      0 │  1 │
│ P2         │      2 │  0 │
├────────────┼────────┼────┤
│ total      │      3 │  2 │
└────────────┴────────┴────┘
"""

EXPECTED_JSON = {
    "patients": {"P1": {"bp_sys": 1, "hr": 1}, "P10": {"hr": 1}, "P2": {"bp_sys": 2}},
    "totals": {"bp_sys": 3, "hr": 2},
}


@pytest.fixture
def events(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text(CSV)
    return path


def test_count_csv_is_exact(events):
    result = run_cli("export", "count", str(events), "--format", "csv", "-q")
    assert (result.code, result.out, result.err) == (0, EXPECTED_CSV, "")


def test_count_table_has_a_row_a_patient_a_column_an_event_type_and_totals(events):
    result = run_cli("export", "count", str(events), "--format", "table", "-q")
    assert (result.code, result.out, result.err) == (0, EXPECTED_TABLE, "")


def test_count_json_is_the_default_and_unchanged(events):
    default = run_cli("export", "count", str(events), "-q")
    named = run_cli("export", "count", str(events), "--format", "json", "-q")
    assert default.code == named.code == 0
    assert default.out == named.out == json.dumps(EXPECTED_JSON, indent=2, sort_keys=True) + "\n"


@pytest.mark.parametrize("fmt", ["json", "table", "csv"])
def test_output_file_holds_what_stdout_shows_in_every_format(events, tmp_path, fmt):
    out = tmp_path / f"out.{fmt}"
    result = run_cli("export", "count", str(events), "--format", fmt, "-o", str(out), "-q")
    assert result.code == 0
    assert out.read_text() == result.out
    assert result.out == {"json": None, "table": EXPECTED_TABLE, "csv": EXPECTED_CSV}[fmt] or (
        json.loads(result.out) == EXPECTED_JSON
    )


def test_an_unknown_format_is_a_usage_error(events):
    result = run_cli("export", "count", str(events), "--format", "xml")
    assert (result.code, result.out) == (2, "")
    assert "'xml' is not one of 'json', 'table', 'csv'" in result.err


def test_an_empty_count_in_csv_is_the_header_and_in_a_table_a_zero_totals_row(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("patient_id,event_time,event_type,value\n")
    assert run_cli("export", "count", str(path), "-f", "csv", "-q").out == (
        "patient_id,event_type,count\n"
    )
    table = run_cli("export", "count", str(path), "-f", "table", "-q").out
    assert "│ total      │" in table


def test_aggregate_formats_match_count_over_the_same_export(demo_server, exports_dir, tmp_path):
    for fmt in ("csv", "table"):
        out = tmp_path / f"agg.{fmt}"
        aggregated = run_cli(
            "export", "aggregate", "demo", "--server", demo_server.url, "-f", fmt, "-o", str(out)
        )
        counted = run_cli("export", "count", str(exports_dir / "demo"), "-f", fmt, "-q")
        assert aggregated.code == counted.code == 0, aggregated.err
        assert aggregated.out == counted.out == out.read_text()
    lines = aggregated.out.splitlines()
    assert lines[1].split() == ["┃", "patient_id", "┃", "bp_dia", "┃", "bp_sys", "┃"]
    assert lines[-2].split()[:2] == ["│", "total"]


# --- records list ----------------------------------------------------------------------------


def rec(test_id: str, **fields: str) -> dict[str, str]:
    base = {"test_id": test_id, "patient_id": "P1", "clinic_id": "C1", "test_type": "blood"}
    return {**base, "result": "normal", **fields}


@pytest.fixture
def store(tmp_path):
    db = tmp_path / "s.db"
    source = tmp_path / "in.ndjson"
    records = [rec("A"), rec("B", result='has, a comma and "quotes"'), rec("C", clinic_id="C2")]
    source.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert run_cli("records", "submit", str(source), "--db", str(db), "-q").code == 0
    return db


def test_records_list_csv_has_the_header_and_quoted_fields(store):
    result = run_cli("records", "list", "--clinic", "C1", "--db", str(store), "--format", "csv")
    assert (result.code, result.err) == (0, "")
    lines = result.out.splitlines()
    assert lines[0] == "test_id,patient_id,clinic_id,test_type,result,created_at"
    rows = list(csv.DictReader(io.StringIO(result.out)))
    assert [{k: v for k, v in r.items() if k != "created_at"} for r in rows] == [
        rec("A"),
        rec("B", result='has, a comma and "quotes"'),
    ]
    assert lines[2].startswith('B,P1,C1,blood,"has, a comma and ""quotes""",')
    ndjson = run_cli("records", "list", "--clinic", "C1", "--db", str(store))
    assert [r["created_at"] for r in rows] == [
        json.loads(line)["created_at"] for line in ndjson.out.splitlines()
    ]


def test_records_list_table_and_the_same_from_the_api(store, serve):
    local = run_cli("records", "list", "--clinic", "C1", "--db", str(store), "-f", "table")
    assert (local.code, local.err) == (0, "")
    lines = local.out.splitlines()
    assert lines[1].split("┃")[1:-1] == [
        f" {name:<{len(part) - 2}} "
        for name, part in zip(
            ("test_id", "patient_id", "clinic_id", "test_type", "result", "created_at"),
            lines[1].split("┃")[1:-1],
            strict=True,
        )
    ]
    assert len(lines) == 3 + 2 + 1  # top, header, rule; two records; bottom
    assert lines[3].split("│")[1].strip() == "A"
    server = serve("--db", str(store))
    for fmt in ("table", "csv", "ndjson"):
        remote = run_cli("records", "list", "--clinic", "C1", "--to", server.url, "-f", fmt)
        mine = run_cli("records", "list", "--clinic", "C1", "--db", str(store), "-f", fmt)
        assert (remote.code, remote.out) == (0, mine.out)


def test_records_list_of_an_empty_clinic_in_csv_is_the_header(store):
    result = run_cli("records", "list", "--clinic", "none", "--db", str(store), "-f", "csv")
    assert (result.code, result.out) == (
        0,
        "test_id,patient_id,clinic_id,test_type,result,created_at\n",
    )


# --- the renderers agree with each other, whatever the counts ---------------------------------

names = st.text(alphabet="ABCxyz019_-", min_size=1, max_size=6)
reports = st.dictionaries(
    names,
    st.dictionaries(names, st.integers(min_value=1, max_value=10**20), min_size=1),
    max_size=6,
)


def as_report(patients: dict[str, dict[str, int]]) -> dict:
    totals: dict[str, int] = {}
    for events in patients.values():
        for event, n in events.items():
            totals[event] = totals.get(event, 0) + n
    return {"patients": patients, "totals": totals}


@settings(max_examples=examples(100), deadline=None)
@given(reports)
def test_csv_and_table_say_what_json_says(patients):
    report = as_report(patients)
    rows = list(csv.reader(io.StringIO(report_csv(report))))
    assert rows[0] == ["patient_id", "event_type", "count"]
    assert [(p, e, int(n)) for p, e, n in rows[1:]] == sorted(
        (p, e, n) for p, events in patients.items() for e, n in events.items()
    )
    assert json.loads(report_json(report)) == report
    table = report_table(report).splitlines()
    body = [line for line in table if line.startswith("│")]
    assert len(body) == len(patients) + 1
    total_cells = [cell.strip() for cell in body[-1].split("│")[1:-1]]
    assert total_cells[0] == "total"
    assert total_cells[1:] == [f"{report['totals'][e]:,}" for e in sorted(report["totals"])]

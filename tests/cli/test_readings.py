"""`patientkit readings …` end to end: real files, real SQLite, a real server."""

import contextlib
import gzip
import json
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from patientkit.samples.inputs import generate_readings
from tests.helpers import Server, run_cli, start_holding_back, stop_fed, web

pytestmark = pytest.mark.slow  # long waits: scheduled first (tests/conftest.py)

A = "063c5957-8905-45f9-bfe3-960713788919"
B = "f728b4fa-4248-4e3a-8a5d-2f346baa9455"


def dump(db, devices: tuple[str, ...] | None = None) -> tuple[list, list]:
    """Everything a store holds about readings (of `devices` only, when given: a test's
    own, in a shared server's store), in a fixed order."""
    where, args = (
        ("", ())
        if devices is None
        else (
            f" WHERE device_id IN ({', '.join('?' * len(devices))})",
            devices,
        )
    )
    with sqlite3.connect(db) as conn:
        readings = conn.execute(
            f"SELECT * FROM readings{where} ORDER BY device_id, instant", args
        ).fetchall()
        known = conn.execute(f"SELECT * FROM devices{where} ORDER BY device_id", args).fetchall()
    return readings, known


def wait_for_rows(db, rows: int, process: subprocess.Popen) -> int:
    """Poll the store of a running replay until it holds `rows` readings."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        if db.exists():
            try:
                with sqlite3.connect(db) as conn:
                    stored = conn.execute("SELECT count(*) FROM readings").fetchone()[0]
            except sqlite3.OperationalError:
                stored = 0
            if stored >= rows:
                return stored
        time.sleep(0.02)
    raise AssertionError("the replay ended (or stalled) before it stored enough")


@pytest.fixture
def mixed(tmp_path):
    """Valid readings in every input shape, and invalid ones of every kind."""
    ndjson = tmp_path / "mixed.ndjson"
    lines = [
        {"id": A, "count": 5, "timestamp": "2021-09-29T16:09:15+01:00"},  # 1
        {"id": A, "count": 7, "timestamp": "2021-09-29T15:09:15+0000"},  # 2 duplicate instant
        {
            "id": B,
            "readings": [
                {"count": 2, "timestamp": "2021-09-29T17:00:00+0100"},
                {"count": 0, "timestamp": "2021-09-29T17:01:00+0100"},
                {"count": 4, "timestamp": "2021-09-29T17:02:00+0100"},
            ],
        },  # 3
        {"count": 1, "timestamp": "2021-09-29T16:09:15+01:00"},  # 4 no id
        {"id": "nope", "count": 1, "timestamp": "2021-09-29T16:09:15+01:00"},  # 5 bad id
        {"id": A, "count": True, "timestamp": "2021-09-29T16:10:15+01:00"},  # 6 bool count
        {"id": A, "count": 3, "timestamp": "2021-09-29 16:10:15"},  # 7 bad timestamp
        {"id": B, "readings": []},  # 8 no readings
    ]
    text = "\n".join(json.dumps(line) for line in lines) + "\n{broken json\n[1, 2]\n"
    ndjson.write_text(text)
    csv_file = tmp_path / "more.csv"
    csv_file.write_text(
        "id,count,timestamp\n"
        f"{A},10,2021-09-29T18:00:00+01:00\n"
        f"{A},x,2021-09-29T18:01:00+01:00\n"
        f"{B},1\n"
    )
    return ndjson, csv_file


def test_replay_into_the_store_gives_exact_numbers_and_dead_letters(mixed, tmp_path):
    ndjson, csv_file = mixed
    db, dead = tmp_path / "r.db", tmp_path / "dead.ndjson"
    result = run_cli(
        "readings",
        "replay",
        str(ndjson),
        str(csv_file),
        "--db",
        str(db),
        "--dead-letter",
        str(dead),
    )
    assert result.code == 1, result.err
    summary = json.loads(result.out)
    assert {k: v for k, v in summary.items() if k != "seconds"} == {
        "read": 15,
        "delivered": 5,
        "duplicates": 1,
        "invalid": 10,
        "dead_lettered": 10,
        "retries": 0,
        "devices": 2,
    }
    reasons = {
        (d["source"].rsplit("/", 1)[-1], d["line"], d["reason"])
        for d in map(json.loads, dead.read_text().splitlines())
    }
    count_msg = "Field 'readings' contains invalid 'count' value. Must be positive integer."
    assert reasons == {
        ("mixed.ndjson", 3, count_msg),
        ("mixed.ndjson", 4, "Field 'id' is required."),
        ("mixed.ndjson", 5, "Device ID must be valid UUID string."),
        ("mixed.ndjson", 6, count_msg),
        (
            "mixed.ndjson",
            7,
            "Field 'readings' contains invalid 'timestamp' value. "
            "Must be ISO-8061 timestamp string.",
        ),
        ("mixed.ndjson", 8, "Field 'readings' is required."),
        ("mixed.ndjson", 9, "invalid JSON: Expecting property name enclosed in double quotes"),
        ("mixed.ndjson", 10, "Request body must be a JSON object."),
        ("more.csv", 3, count_msg),
        ("more.csv", 4, "expected 3 fields, found 2"),
    }
    bad_count = next(d for d in map(json.loads, dead.read_text().splitlines()) if d["line"] == 3)
    assert bad_count["record"] == {"id": B, "count": 0, "timestamp": "2021-09-29T17:01:00+0100"}
    assert f"{ndjson}:5: Device ID must be valid UUID string." in result.err
    assert "nope" not in result.err.replace(str(tmp_path), "")  # no record contents on stderr
    totals = run_cli("readings", "total", A, "--db", str(db))
    assert json.loads(totals.out) == {"device_id": A, "cumulative_count": 15}
    latest = run_cli("readings", "latest", B, "--db", str(db))
    assert json.loads(latest.out) == {"device_id": B, "timestamp": "2021-09-29T17:02:00+0100"}


def test_gzip_and_stdin_inputs(tmp_path):
    plain = tmp_path / "r.ndjson"
    generate_readings(plain, 300, devices=3)
    zipped = tmp_path / "r.json.gz"
    zipped.write_bytes(gzip.compress(plain.read_bytes()))
    from_gz = run_cli("readings", "replay", str(zipped), "--db", str(tmp_path / "a.db"))
    from_stdin = run_cli(
        "readings",
        "replay",
        "-",
        "--db",
        str(tmp_path / "b.db"),
        input=gzip.compress(plain.read_bytes()),
    )
    assert from_gz.code == from_stdin.code == 0, from_gz.err + from_stdin.err
    assert json.loads(from_gz.out)["delivered"] == 300
    assert dump(tmp_path / "a.db") == dump(tmp_path / "b.db")


def test_latest_and_total_errors(tmp_path):
    db = tmp_path / "r.db"
    (tmp_path / "one.ndjson").write_text(
        json.dumps({"id": A, "count": 1, "timestamp": "2021-09-29T16:09:15+01:00"}) + "\n"
    )
    run_cli("readings", "replay", str(tmp_path / "one.ndjson"), "--db", str(db))
    missing = run_cli("readings", "latest", B, "--db", str(db))
    assert (missing.code, missing.out, missing.err) == (
        1,
        "",
        f"error: no readings for device {B}\n",
    )
    total = run_cli("readings", "total", B, "--db", str(db))
    assert (total.code, total.out, total.err) == (1, "", f"error: no readings for device {B}\n")
    bad = run_cli("readings", "total", "nope", "--db", str(db))
    assert (bad.code, bad.err.strip()) == (2, "error: Device ID must be valid UUID string.")
    both = run_cli("readings", "total", A, "--db", str(db), "--to", "http://127.0.0.1:9")
    assert (both.code, both.err.strip()) == (2, "error: give --db or --to, not both")


def test_replay_to_the_api_matches_the_store(shared_server, mixed, tmp_path):
    """Through the module's server (devices A and B are this test's own there)."""
    ndjson, csv_file = mixed
    server = shared_server
    over_http = run_cli("readings", "replay", str(ndjson), str(csv_file), "--to", server.url)
    local = run_cli(
        "readings", "replay", str(ndjson), str(csv_file), "--db", str(tmp_path / "local.db")
    )
    assert over_http.code == local.code == 1
    summary = json.loads(over_http.out)
    assert summary["duplicates"] is None  # an API does not say
    assert (summary["delivered"], summary["invalid"], summary["devices"]) == (5, 10, 2)
    local_dump = dump(tmp_path / "local.db")
    assert dump(server.db, (A, B)) == local_dump
    assert {row[0] for row in local_dump[1]} == {A, B}  # what the filter leaves out: no other
    via_api = run_cli("readings", "total", A, "--to", server.url)
    assert json.loads(via_api.out) == {"device_id": A, "cumulative_count": 15}
    unknown = "6f1f1c55-0000-4000-8000-000000000000"
    for command in ("latest", "total"):
        missing = run_cli("readings", command, unknown, "--to", server.url)
        assert (missing.code, missing.out, missing.err) == (
            1,
            "",
            f"error: no readings for device {unknown}\n",
        )


def test_replay_under_chaos_stores_what_a_clean_run_stores(serve, tmp_path):
    source = tmp_path / "r.ndjson"
    generate_readings(source, 1000, devices=40, duplicates=0.05)
    clean = run_cli("readings", "replay", str(source), "--db", str(tmp_path / "clean.db"))
    assert clean.code == 0, clean.err
    server = serve("--db", str(tmp_path / "chaos.db"), "--chaos", "0.3", "--chaos-seed", "3")
    chaotic = run_cli(
        "readings",
        "replay",
        str(source),
        "--to",
        server.url,
        "--batch-size",
        "20",
        "--flush-interval",
        "0.05",
    )
    assert chaotic.code == 0, chaotic.err
    assert json.loads(chaotic.out)["retries"] > 0
    assert dump(tmp_path / "chaos.db") == dump(tmp_path / "clean.db")


def test_oversize_requests_are_split_and_a_reading_too_large_is_dead_lettered(serve, tmp_path):
    source = tmp_path / "r.ndjson"
    generate_readings(source, 200, devices=2)
    split = serve("--db", str(tmp_path / "split.db"), "--max-body", "1500")
    result = run_cli("readings", "replay", str(source), "--to", split.url, "--batch-size", "100")
    assert result.code == 0, result.err
    run_cli("readings", "replay", str(source), "--db", str(tmp_path / "local.db"))
    assert dump(tmp_path / "split.db") == dump(tmp_path / "local.db")
    few = tmp_path / "few.ndjson"  # each one split down to itself and refused: 40 do
    generate_readings(few, 40, devices=2)
    tiny = serve("--db", str(tmp_path / "tiny.db"), "--max-body", "40")
    dead = tmp_path / "dead.ndjson"
    refused = run_cli("readings", "replay", str(few), "--to", tiny.url, "--dead-letter", str(dead))
    assert refused.code == 1
    assert json.loads(refused.out)["dead_lettered"] == 40
    letters = [json.loads(line) for line in dead.read_text().splitlines()]
    assert len(letters) == 40
    assert {d["reason"] for d in letters} == {
        "refused by the server (413): payload too large (413)"
    }


def test_unreachable_api_is_exit_2(tmp_path):
    (tmp_path / "r.ndjson").write_text("")
    result = run_cli("readings", "replay", str(tmp_path / "r.ndjson"), "--to", "http://127.0.0.1:9")
    assert (result.code, result.out) == (2, "")
    assert result.err == (
        "error: cannot connect to http://127.0.0.1:9 (connection refused): is the server "
        "running? Start one with `patientkit serve`\n"
    )


def test_speed_keeps_the_recorded_spacing(tmp_path):
    source = tmp_path / "r.ndjson"
    source.write_text(
        "".join(
            json.dumps({"id": A, "count": 1, "timestamp": f"2021-09-29T16:00:{s:02d}+01:00"}) + "\n"
            for s in (0, 10, 20)
        )
    )
    result = run_cli(
        "readings",
        "replay",
        str(source),
        "--db",
        str(tmp_path / "r.db"),
        "--speed",
        "50",
        "--flush-interval",
        "0.05",
    )
    assert result.code == 0
    assert json.loads(result.out)["seconds"] >= 0.4  # 20 recorded seconds / 50


def start_replay(
    source: Path, db: Path, output: int, held_back: int
) -> tuple[subprocess.Popen[bytes], threading.Thread]:
    """`readings replay - --db DB` in small transactions, as a process of its own, from a
    pipe that holds back the last `held_back` lines (tests.helpers.start_holding_back):
    mid-way whenever it is killed or interrupted."""
    args = ("readings", "replay", "-", "--db", str(db), "--batch-size", "500")
    return start_holding_back(
        source, held_back, *args, output=output, env={"PYTHONUNBUFFERED": "1"}
    )


def processes_using(path: Path, within: float = 10.0) -> list[int]:
    """Processes (Linux /proc) whose command line names `path`, once they had `within`
    seconds to exit."""
    deadline = time.monotonic() + within
    while True:
        found = []
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            with contextlib.suppress(OSError):
                if str(path).encode() in cmdline.read_bytes():
                    found.append(int(cmdline.parent.name))
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


MID_RUN = 10_000  # readings of the mid-run tests: their pipe holds back the last 5,000


def test_killed_mid_run_then_run_again_equals_one_clean_run(tmp_path):
    source = tmp_path / "r.ndjson"
    generate_readings(source, MID_RUN, devices=500, duplicates=0.02)
    clean = run_cli("readings", "replay", str(source), "--db", str(tmp_path / "clean.db"))
    assert clean.code == 0, clean.err
    db = tmp_path / "killed.db"
    process, feeder = start_replay(source, db, subprocess.DEVNULL, held_back=5_000)
    try:
        stored = wait_for_rows(db, 3_000, process)
    finally:
        stop_fed(process, feeder)  # SIGKILL mid-run
    assert 0 < stored < MID_RUN
    assert processes_using(db) == [], "the store process outlived the killed replay"
    again = run_cli("readings", "replay", str(source), "--db", str(db))
    assert again.code == 0, again.err
    assert json.loads(again.out)["duplicates"] >= stored
    assert dump(db) == dump(tmp_path / "clean.db")


def test_ctrl_c_delivers_what_it_read_prints_the_summary_and_exits_130(tmp_path):
    source = tmp_path / "r.ndjson"
    generate_readings(source, MID_RUN, devices=300)
    db = tmp_path / "r.db"
    process, feeder = start_replay(source, db, subprocess.PIPE, held_back=5_000)
    try:
        wait_for_rows(db, 3_000, process)
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)  # stdin stays open: an end of input must not race the Ctrl-C
        out, err = process.communicate(timeout=60)
    finally:
        stop_fed(process, feeder)
    assert process.returncode == 130, err.decode()
    summary = json.loads(out)
    assert 0 < summary["read"] < MID_RUN
    assert summary["delivered"] == summary["read"]  # what was read was delivered, not dropped
    assert "interrupted; run the same command again to finish" in err.decode()
    readings, _ = dump(db)
    assert len(readings) == summary["delivered"] - summary["duplicates"]
    again = run_cli("readings", "replay", str(source), "--db", str(db))
    assert again.code == 0
    assert json.loads(again.out)["duplicates"] >= len(readings)


# --- numbers beyond the store, records that cannot be parsed (issue 9) ------------------

MAX = 2**63 - 1
E = "55555555-5555-4555-8555-555555555555"
F = "66666666-6666-4666-8666-666666666666"
G = "77777777-7777-4777-8777-777777777777"
BAD_COUNT = "Field 'readings' contains invalid 'count' value. Must be positive integer."
TOO_DEEP = "nesting too deep (more than 100 levels of arrays and objects)"
TOO_LARGE = "count: number too large for the store (at most 9223372036854775807)"


def line(device: str, count, second: int) -> str:
    return json.dumps(
        {"id": device, "count": count, "timestamp": f"2021-09-29T16:09:{second:02d}+01:00"}
    )


def total(device: str, *where: str) -> object:
    result = run_cli("readings", "total", device, *where)
    assert result.code == 0, result.err
    return json.loads(result.out)["cumulative_count"]


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory) -> Iterator[Server]:
    """One server for the tests that each write only devices of their own (A and B; E
    and F; G); `shared_server.db` is its store."""
    folder = tmp_path_factory.mktemp("shared")
    server = Server(folder / "serve.log", "--db", str(folder / "api.db"))
    server.db = folder / "api.db"  # type: ignore[attr-defined]
    yield server
    server.stop()


def test_totals_past_int64_are_exact_in_the_store_over_http_and_in_the_cli(shared_server, tmp_path):
    """Case 03: two readings of 2^63 - 1 sum to 18446744073709551614, and counts added
    after a total passed 2^63 - 1 are not lost."""
    max2 = tmp_path / "max2.ndjson"
    max2.write_text(line(E, MAX, 15) + "\n" + line(E, MAX, 16) + "\n")
    plus = tmp_path / "plus.ndjson"
    plus.write_text(
        "".join(line(F, c, s) + "\n" for c, s in [(MAX, 15), (1, 16), (1, 17), (1000, 18)])
    )
    db = tmp_path / "m.db"
    server = shared_server
    for source in (max2, plus):
        assert run_cli("readings", "replay", str(source), "--db", str(db)).code == 0
        assert run_cli("readings", "replay", str(source), "--to", server.url).code == 0
    for where in (("--db", str(db)), ("--to", server.url)):
        assert total(E, *where) == 18446744073709551614
        assert total(F, *where) == 9223372036854776809
    answer = web.get(f"{server.url}/api/device-readings/{E}/cumulative-count")
    assert answer.text == '{"cumulative_count":18446744073709551614}'  # an integer, not 1.8e19
    with sqlite3.connect(db) as conn:  # SQLite holds it exactly, in two integers
        assert conn.execute(
            "SELECT typeof(count_high), typeof(count_low) FROM devices"
        ).fetchall() == [
            ("integer", "integer"),
            ("integer", "integer"),
        ]


def test_a_count_the_store_cannot_hold_is_invalid_never_an_error(shared_server, tmp_path):
    source = tmp_path / "big.ndjson"
    source.write_text(line(G, MAX + 1, 15) + "\n" + line(G, MAX, 16) + "\n")
    server = shared_server
    for where in (("--db", str(tmp_path / "s.db")), ("--to", server.url)):
        result = run_cli("readings", "replay", str(source), *where)
        assert result.code == 1
        # the CLI's reason is true of it ("Must be positive integer" would not be)
        assert result.err == f"warning: {source}:1: {TOO_LARGE}\nerror: 1 invalid of 2 readings\n"
        assert {k: result.json()[k] for k in ("read", "delivered", "invalid")} == {
            "read": 2,
            "delivered": 1,
            "invalid": 1,
        }
        assert total(G, *where) == MAX
    answer = web.post(
        f"{server.url}/api/device-readings/create",
        json={"id": G, "readings": [{"count": MAX + 1, "timestamp": "2021-09-29T16:09:15+01:00"}]},
    )
    assert (answer.status_code, answer.json()["error_message"]) == (400, BAD_COUNT)


GOOD_LINE = line(E, 4, 16)
HUGE = "9" * 5000
N30, N19 = "1" * 30, "9" * 19  # past the store by a little
CREATE_PAST = (
    f'{{"id":"{E}","readings":[{{"count":{MAX + 1},"timestamp":"2021-09-29T16:09:15+01:00"}}]}}'
)


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        # case 04: a number with 5,000 digits
        (
            "big.ndjson",
            f'{{"id":"{E}","count":{HUGE},"timestamp":"2021-09-29T16:09:15+01:00"}}\n{GOOD_LINE}\n',
            "count: number too large (5000 digits)",
        ),
        (
            "big.json",
            f'[{{"id":"{E}","count":{HUGE},"timestamp":"2021-09-29T16:09:15+01:00"}},\n{GOOD_LINE}]',
            "count: number too large (5000 digits)",
        ),
        (
            "big.csv",
            f"id,count,timestamp\n{E},{HUGE},2021-09-29T16:09:15+01:00\n{E},4,2021-09-29T16:09:16+01:00\n",
            TOO_LARGE,
        ),
        # neighbours: past the store by a little, in CSV and in the API's create shape
        (
            "c30.csv",
            f"id,count,timestamp\n{E},{N30},2021-09-29T16:09:15+01:00\n{E},4,2021-09-29T16:09:16+01:00\n",
            TOO_LARGE,
        ),
        (
            "c19.csv",
            f"id,count,timestamp\n{E},{N19},2021-09-29T16:09:15+01:00\n{E},4,2021-09-29T16:09:16+01:00\n",
            TOO_LARGE,
        ),
        (
            "create.ndjson",
            f"{CREATE_PAST}\n{GOOD_LINE}\n",
            TOO_LARGE,
        ),
        # case 05: nested 100,000 levels deep
        ("deep.ndjson", "[" * 100_000 + f"\n{GOOD_LINE}\n", TOO_DEEP),
        ("deep.json", "[" + "[" * 100_000 + "]" * 100_000 + f",\n{GOOD_LINE}]", TOO_DEEP),
        # a lone surrogate escape
        (
            "lone.ndjson",
            f'{{"id":"{E}","count":1,"timestamp":"2021-09-29T16:09:15+01:00","note":"\\ud800"}}\n{GOOD_LINE}\n',
            "note: lone surrogate escape (\\ud800-\\udfff without its pair), not valid in UTF-8",
        ),
        # invalid UTF-8, in every format, plain and gzip
        (
            "latin1.ndjson",
            f'{{"id":"{E}","count":1,"timestamp":"2021-09-29T16:09:15+01:00","note":"Jos\xe9"}}\n{GOOD_LINE}\n',
            "not valid UTF-8",
        ),
        (
            "latin1.json.gz",
            f'[{{"id":"{E}","count":1,"timestamp":"2021-09-29T16:09:15+01:00","note":"Jos\xe9"}},\n{GOOD_LINE}]',
            "not valid UTF-8",
        ),
        (
            "latin1.csv.gz",
            f"id,count,timestamp\n{E},1,2021-09-29T16:09:15+01:00\xe9\n{E},4,2021-09-29T16:09:16+01:00\n",
            "not valid UTF-8",
        ),
    ],
)
def test_a_record_that_cannot_be_parsed_is_invalid_and_the_rest_is_stored(
    tmp_path, name, data, reason
):
    """Cases 04 and 05 and their neighbours: that record is invalid with file:line and a
    true reason, the valid one after it is stored, the summary is printed, exit 1."""
    raw = data.encode("latin-1" if "latin1" in name else "utf-8")
    source = tmp_path / name
    source.write_bytes(gzip.compress(raw) if name.endswith(".gz") else raw)
    db = tmp_path / "d.db"
    result = run_cli("readings", "replay", str(source), "--db", str(db))
    assert result.code == 1
    first = 2 if ".csv" in name else 1  # a CSV's first record is on the line after its header
    assert result.err == f"warning: {source}:{first}: {reason}\nerror: 1 invalid of 2 readings\n"
    assert {k: result.json()[k] for k in ("read", "delivered", "invalid")} == {
        "read": 2,
        "delivered": 1,
        "invalid": 1,
    }
    assert total(E, "--db", str(db)) == 4


def test_a_broken_string_is_named_whole_in_every_json_reader(tmp_path):
    """The json module's messages that end "... at <offset>" are reasons that end
    there, not mid-sentence, line by line (NDJSON) and element by element (an array)."""
    good = json.dumps({"id": A, "count": 1, "timestamp": "2021-09-29T16:09:15+01:00"})
    control = '{"id": "' + A + '\t", "count": 1, "timestamp": "2021-09-29T16:10:15+01:00"}'
    ndjson = tmp_path / "r.ndjson"
    ndjson.write_text(f"{good}\n{control}\n" + '{"id": "abc')  # no line end: unterminated
    result = run_cli("readings", "replay", str(ndjson), "--db", str(tmp_path / "a.db"))
    assert result.code == 1
    assert result.err.splitlines()[:2] == [
        f"warning: {ndjson}:2: invalid JSON: Invalid control character",
        f"warning: {ndjson}:3: invalid JSON: Unterminated string",
    ]
    array = tmp_path / "r.json"
    array.write_text(f"[{good},\n{control}]\n")
    result = run_cli("readings", "replay", str(array), "--db", str(tmp_path / "b.db"))
    assert result.code == 1
    unread = "invalid JSON: Invalid control character; the rest of the array is unread"
    assert result.err.splitlines()[0] == f"warning: {array}:2: {unread}"


@pytest.mark.parametrize("name", ["r.ndjson", "r.csv"])
def test_replay_tells_its_progress_as_it_reads(tmp_path, name):
    """The progress bar of `readings replay` moves: valid readings (the fast path) are
    told as they are read, every 4,096 lines, not only invalid ones."""
    from patientkit.workflows.replay import run_replay

    source = tmp_path / name
    generate_readings(source, 8_500, devices=20, duplicates=0.0)  # two 4,096s (was 12,500)
    told: list[int] = []
    run = run_replay([str(source)], db=str(tmp_path / "p.db"), on_progress=told.append)
    assert run.tally.read == run.tally.delivered == 8_500
    header = 1 if name.endswith(".csv") else 0  # told before the line: what came before it
    assert told == [n * 4096 - 1 - header for n in (1, 2)]

"""`patientkit records submit` and `records list`, run as users run them, against real
SQLite files and a real `patientkit serve`."""

import array
import fcntl
import gzip
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import termios
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import (
    Result,
    Server,
    cli_env,
    run_cli,
    run_forked_at_once,
    wait_until_reading,
)

pytestmark = pytest.mark.slow  # long waits: scheduled first (tests/conftest.py)

SUMMARY_KEYS = {
    "read",
    "created",
    "duplicates",
    "invalid",
    "rejected",
    "failed",
    "retries",
    "seconds",
}


def rec(test_id, clinic="C1", result="5.1", patient="P1", test_type="glucose"):
    return {
        "test_id": test_id,
        "patient_id": patient,
        "clinic_id": clinic,
        "test_type": test_type,
        "result": result,
    }


def ndjson(records):
    return "".join(json.dumps(r) + "\n" for r in records)


def stored(db: Path) -> list[tuple]:
    """Every record in a store, without created_at, by test_id."""
    with sqlite3.connect(db) as connection:
        return connection.execute(
            "SELECT test_id, patient_id, clinic_id, test_type, result FROM test_records "
            "ORDER BY test_id"
        ).fetchall()


def counts(result):
    summary = result.json()
    assert set(summary) == SUMMARY_KEYS
    return {k: v for k, v in summary.items() if k not in ("seconds", "retries")}


def verdicts(read, created=0, duplicates=0, invalid=0, rejected=0, failed=0):
    """What counts() should give."""
    return {
        "read": read,
        "created": created,
        "duplicates": duplicates,
        "invalid": invalid,
        "rejected": rejected,
        "failed": failed,
    }


def rejects_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- one mixed file: exact numbers, exact rejects ---------------------------------------


def prior(p=""):
    """The records stored before the mixed file; `p` prefixes their test_ids and clinics
    (a test's own, on a shared server)."""
    return [rec(f"{p}S1", clinic=f"{p}C1", result="stored first"), rec(f"{p}S2", clinic=f"{p}C1")]


def mixed_lines(p=""):
    """The mixed file: 16 records of every verdict (`p` as in `prior`)."""
    c1, c2 = f"{p}C1", f"{p}C2"
    return [
        json.dumps(rec(f"{p}V1", clinic=c1, result="first wins")),  # 1 created
        json.dumps(rec(f"{p}V2", clinic=c1)),  # 2 created
        "",  # 3 blank: no record
        "not json",  # 4
        "[1, 2]",  # 5
        '"just a string"',  # 6
        json.dumps({k: v for k, v in rec("x", clinic=c1).items() if k != "test_id"}),  # 7
        json.dumps(rec(f"{p}V6", clinic=c1, patient=17)),  # 8
        json.dumps(rec(f"{p}V7", clinic="")),  # 9
        json.dumps(rec(f"{p}V8", clinic=c1, test_type=None)),  # 10
        json.dumps(rec(f"{p}V9", clinic=c1, result="   ")),  # 11
        json.dumps(rec(f"{p}V1", clinic=c1, result="second loses")),  # 12 duplicate in the file
        json.dumps(rec(f"{p}S1", clinic=c1, result="again")),  # 13 duplicate of the store
        json.dumps(rec(f"{p}V3", clinic=c2)),  # 14 created
        f'{{"test_id": "{p}V4", "patient_id": ',  # 15 cut short
        json.dumps({**rec(f"{p}V5", clinic=c1), "note": "extra fields are not sent"}),  # 16
        json.dumps(rec(f"{p}V2", clinic=c1)),  # 17 duplicate inside the file
    ]


MIXED_COUNTS = verdicts(16, created=4, duplicates=3, invalid=9)


def mixed_rejects(p=""):
    c1 = f"{p}C1"
    return [
        (4, "invalid JSON: Expecting value", None),
        (5, "Invalid JSON", [1, 2]),
        (6, "Invalid JSON", "just a string"),
        (7, "Invalid or missing field: test_id", json.loads(mixed_lines(p)[6])),
        (8, "Invalid or missing field: patient_id", rec(f"{p}V6", clinic=c1, patient=17)),
        (9, "Invalid or missing field: clinic_id", rec(f"{p}V7", clinic="")),
        (10, "Invalid or missing field: test_type", rec(f"{p}V8", clinic=c1, test_type=None)),
        (11, "Invalid or missing field: result", rec(f"{p}V9", clinic=c1, result="   ")),
        (15, "invalid JSON: Expecting value", None),
    ]


def mixed_stored(p=""):
    """What the store holds of `p` after the prior records and the mixed file."""
    c1, c2 = f"{p}C1", f"{p}C2"
    return sorted(
        tuple(r.values())
        for r in [
            rec(f"{p}S1", clinic=c1, result="stored first"),
            rec(f"{p}S2", clinic=c1),
            rec(f"{p}V1", clinic=c1, result="first wins"),
            rec(f"{p}V2", clinic=c1),
            rec(f"{p}V3", clinic=c2),
            rec(f"{p}V5", clinic=c1),
        ]
    )


def check_mixed(result, rejects: Path, source: str, p=""):
    assert counts(result) == MIXED_COUNTS
    assert result.code == 1
    expected = [
        {"source": source, "line": line, "reason": reason, "record": record}
        for line, reason, record in mixed_rejects(p)
    ]
    assert rejects_lines(rejects) == expected
    problem_lines = [line for line in result.err.splitlines() if not line.startswith("error:")]
    assert problem_lines == [f"{source}:{line}: {reason}" for line, reason, _ in mixed_rejects(p)]
    assert result.err.splitlines()[-1] == f"error: 9 invalid of 16 records (see {rejects})"
    for secret in ("first wins", "second loses", "P1"):
        assert secret not in result.err


def test_mixed_file_into_the_store(tmp_path):
    db = tmp_path / "s.db"
    (tmp_path / "prior.ndjson").write_text(ndjson(prior()))
    first = run_cli("records", "submit", str(tmp_path / "prior.ndjson"), "--db", str(db))
    assert (first.code, counts(first)["created"]) == (0, 2)
    source = tmp_path / "mixed.ndjson"
    source.write_text("\n".join(mixed_lines()) + "\n")
    rejects = tmp_path / "rejects.ndjson"
    result = run_cli("records", "submit", str(source), "--db", str(db), "--rejects", str(rejects))
    check_mixed(result, rejects, str(source))
    assert stored(db) == mixed_stored()


MIXED_PREFIXES = {"batches": "MB-", "--no-batch": "MN-", "server without bulk": "MF-"}


@pytest.mark.parametrize("mode", ["batches", "--no-batch", "server without bulk"])
def test_mixed_file_to_the_api(listed, no_bulk, tmp_path, mode):
    """The same verdicts, rejects, stderr and store in batches (the default), one POST per
    record (--no-batch), and against a server without POST /tests/batch (fallback). The
    servers are the module's (`listed`; `no_bulk`): each mode's test_ids and clinics are
    its own (MIXED_PREFIXES), its requests those logged after its mark."""
    p = MIXED_PREFIXES[mode]
    db, server = no_bulk if mode == "server without bulk" else listed
    mark = server.mark()
    args = ["--no-batch"] if mode == "--no-batch" else []
    (tmp_path / "prior.ndjson").write_text(ndjson(prior(p)))
    first = run_cli("records", "submit", str(tmp_path / "prior.ndjson"), "--to", server.url, *args)
    assert first.code == 0
    source = tmp_path / "mixed.ndjson"
    source.write_text("\n".join(mixed_lines(p)) + "\n")
    rejects = tmp_path / "rejects.ndjson"
    result = run_cli(
        "records", "submit", str(source), "--to", server.url, "--rejects", str(rejects), *args
    )
    check_mixed(result, rejects, str(source), p)
    assert [row for row in stored(db) if row[0].startswith(p)] == mixed_stored(p)
    end = server.mark()  # every request of the two runs logged: the last may be answered first
    requests = [line for line in server.log_lines()[mark:end] if line["event"] == "request"]
    posts = [line for line in requests if line["route"] == "/tests" and line["method"] == "POST"]
    # a server without bulk logs its 404s under no route ("unmatched": never a raw path)
    batches = [line for line in requests if line["route"] in ("/tests/batch", "unmatched")]
    if mode == "batches":
        assert posts == []
        # the probe of each run (an empty batch, no id of ours), then the two files' batches
        assert [line["status"] for line in batches] == [200] * len(batches)
        assert len(batches) >= 4
        return
    assert (
        sorted(line["status"] for line in posts if line["event"] == "request")
        == [200] * 6 + [409] * 3
    )
    assert all(str(uuid.UUID(line["request_id"])) == line["request_id"] for line in posts)
    expected = [404, 404] if mode == "server without bulk" else []  # each run's probe
    assert [line["status"] for line in batches] == expected


def test_csv_json_array_gzip_and_stdin_give_the_same_records(tmp_path):
    records = [rec(f"T{n}", clinic=f"C{n % 2}", result=f"{n}, with a comma") for n in range(5)]
    csv_text = "clinic_id,result,test_id,patient_id,test_type,extra\n" + "".join(
        f'{r["clinic_id"]},"{r["result"]}",{r["test_id"]},{r["patient_id"]},{r["test_type"]},x\n'
        for r in records
    )
    inputs = {
        "a.csv": csv_text.encode(),
        "b.json": json.dumps(records, indent=2).encode(),
        "c.ndjson.gz": gzip.compress(ndjson(records).encode()),
    }
    expected = sorted(tuple(r.values()) for r in records)
    for name, data in inputs.items():
        (tmp_path / name).write_bytes(data)
        db = tmp_path / f"{name}.db"
        result = run_cli("records", "submit", str(tmp_path / name), "--db", str(db))
        assert (result.code, counts(result)["created"]) == (0, 5), name
        assert stored(db) == expected, name
    db = tmp_path / "stdin.db"
    result = run_cli("records", "submit", "-", "--db", str(db), input=ndjson(records))
    assert (result.code, counts(result)) == (0, verdicts(5, created=5))
    assert stored(db) == expected


def test_csv_rows_are_checked_like_json(tmp_path):
    source = tmp_path / "in.csv"
    source.write_text(
        "test_id,patient_id,clinic_id,test_type,result\n"
        "T1,P1,C1,glucose,5.1\n"
        "T2,P1,C1,glucose,\n"
        "T3,P1,C1\n"
        "T4,P1,C1,glucose,6\n"
    )
    rejects = tmp_path / "rejects.ndjson"
    result = run_cli(
        "records", "submit", str(source), "--db", str(tmp_path / "s.db"), "--rejects", str(rejects)
    )
    assert result.code == 1
    assert counts(result) == verdicts(4, created=2, invalid=2)
    assert [(r["line"], r["reason"]) for r in rejects_lines(rejects)] == [
        (3, "Invalid or missing field: result"),
        (4, "expected 5 fields, found 3"),
    ]


# --- verdicts from a server ----------------------------------------------------------------


def test_server_side_rejections_carry_their_request_id(serve, tmp_path):
    server = serve("--db", str(tmp_path / "api.db"), "--max-body", "300")
    source = tmp_path / "in.ndjson"
    source.write_text(ndjson([rec("OK1"), rec("BIG", result="x" * 400), rec("OK2")]))
    rejects = tmp_path / "rejects.ndjson"
    result = run_cli(
        "records", "submit", str(source), "--to", server.url, "--rejects", str(rejects)
    )
    assert result.code == 1
    assert counts(result) == verdicts(3, created=2, rejected=1)
    (line,) = rejects_lines(rejects)
    reason = "rejected by the server (413): Request body is larger than 300 bytes."
    assert {k: v for k, v in line.items() if k != "request_id"} == {
        "source": str(source),
        "line": 2,
        "reason": reason,
        "record": rec("BIG", result="x" * 400),
    }
    assert f"{source}:2: {reason}" in result.err.splitlines()
    logged = [
        entry
        for entry in server.answered()  # the 413 among them
        if entry.get("request_id") == line["request_id"]
    ]
    assert [entry["status"] for entry in logged if entry["event"] == "request"] == [413]


def test_any_other_4xx_is_a_rejection_with_the_servers_message(listed, tmp_path):
    _, server = listed  # nothing is stored: each record's 404 is before any store
    source = tmp_path / "in.ndjson"
    source.write_text(ndjson([rec("A"), rec("B")]))
    result = run_cli("records", "submit", str(source), "--to", f"{server.url}/no/such/prefix")
    assert result.code == 1
    assert counts(result)["rejected"] == 2
    assert f"{source}:1: rejected by the server (404): Not Found" in result.err.splitlines()


def test_records_fail_after_their_attempts_and_land_in_the_rejects(serve, tmp_path):
    server = serve("--db", str(tmp_path / "api.db"), "--chaos", "1", "--chaos-seed", "1")
    source = tmp_path / "in.ndjson"
    source.write_text(ndjson([rec(f"T{n}") for n in range(6)]))
    rejects = tmp_path / "rejects.ndjson"
    result = run_cli(
        "records",
        "submit",
        str(source),
        "--to",
        server.url,
        "--attempts",
        "2",
        "--rejects",
        str(rejects),
    )
    assert result.code == 1
    summary = result.json()
    assert (summary["read"], summary["failed"], summary["retries"]) == (6, 6, 6)
    lines = rejects_lines(rejects)
    assert sorted(line["line"] for line in lines) == [1, 2, 3, 4, 5, 6]
    for line in lines:
        assert line["reason"] in (
            "failed after 2 attempts: status 503",
            "failed after 2 attempts: connection dropped mid-answer",
        )
        assert str(uuid.UUID(line["request_id"])) == line["request_id"]


def test_an_unreachable_server_is_exit_2_before_reading(tmp_path):
    result = run_cli("records", "submit", "-", "--to", "http://127.0.0.1:9", input="not read")
    assert result.code == 2
    assert result.err == (
        "error: cannot connect to http://127.0.0.1:9 (connection refused): is the server "
        "running? Start one with `patientkit serve`\n"
    )
    assert result.out == ""


def test_usage_errors(tmp_path):
    both = run_cli("records", "submit", "x", "--db", "a.db", "--to", "http://127.0.0.1:9")
    assert (both.code, both.err) == (
        2,
        "error: --db and --to cannot be used together: give the store or the API\n",
    )
    missing = run_cli("records", "submit", str(tmp_path / "nope.ndjson"), "--db", "a.db")
    assert (missing.code, missing.err) == (2, f"error: {tmp_path / 'nope.ndjson'}: no such file\n")
    folder = run_cli("records", "submit", str(tmp_path), "--db", str(tmp_path / "a.db"))
    assert (folder.code, folder.err) == (2, f"error: {tmp_path}: is a folder, not a file\n")


def test_duplicates_alone_pass_unless_strict(tmp_path):
    db = tmp_path / "s.db"
    source = tmp_path / "in.ndjson"
    source.write_text(ndjson([rec("A"), rec("B")]))
    assert run_cli("records", "submit", str(source), "--db", str(db)).code == 0
    again = run_cli("records", "submit", str(source), "--db", str(db))
    assert (again.code, counts(again)["duplicates"]) == (0, 2)
    strict = run_cli("records", "submit", str(source), "--db", str(db), "--strict")
    assert strict.code == 1
    assert strict.err == "error: 2 duplicates (--strict) of 2 records\n"


# --- chaos: the same result as a clean run ------------------------------------------------


def chaos_inputs(tmp_path, prefix):
    """The prior and main files, every test_id starting with `prefix` (the test's own)."""
    prior = [rec(f"{prefix}P{n:03d}", result=f"prior {n}") for n in range(20)]
    main = [rec(f"{prefix}M{n:03d}", clinic=f"C{n % 7}", result=f"main {n}") for n in range(110)]
    main += [rec(f"{prefix}P{n:03d}", result="changed") for n in range(0, 20, 3)]  # the store's
    main += [rec(f"{prefix}M{n:03d}", result="second") for n in range(0, 110, 11)]  # the file's
    main.insert(50, {"test_id": "bad"})
    (tmp_path / "prior.ndjson").write_text(ndjson(prior))
    (tmp_path / "main.ndjson").write_text(ndjson(main))
    return tmp_path / "prior.ndjson", tmp_path / "main.ndjson"


@pytest.fixture(scope="module")
def chaos_server(tmp_path_factory) -> Iterator[Server]:
    """One `serve --chaos 0.3` for both modes (each sends test_ids of its own and its own
    route: /tests/batch or /tests); `chaos_server.db` is its store."""
    folder = tmp_path_factory.mktemp("chaos")
    server = Server(
        folder / "serve.log", "--db", str(folder / "chaos.db"), "--chaos", "0.3",
        "--chaos-seed", "11",
    )  # fmt: skip
    server.db = folder / "chaos.db"  # type: ignore[attr-defined]
    yield server
    server.stop()


@pytest.mark.parametrize("mode", ["batches", "--no-batch"])
def test_chaos_ends_like_a_clean_run(chaos_server, tmp_path, mode):
    """Through `serve --chaos 0.3` the verdicts and the store are exactly those of a clean
    run: an answer lost after the work was done is asked again with the same request id
    and the original answer comes back (a batch's whole answer, or a record's)."""
    prefix = f"{mode.strip('-')}-"
    prior, main = chaos_inputs(tmp_path, prefix)
    clean_db = tmp_path / "clean.db"
    assert run_cli("records", "submit", str(prior), "--db", str(clean_db)).code == 0
    clean = run_cli("records", "submit", str(main), "--db", str(clean_db))

    server = chaos_server
    args = ["--to", server.url, "--attempts", "30"]
    args += ["--batch-size", "5"] if mode == "batches" else ["--no-batch"]
    assert run_cli("records", "submit", str(prior), *args).code == 0
    chaotic = run_cli("records", "submit", str(main), *args)

    assert counts(clean) == counts(chaotic) == verdicts(128, created=110, duplicates=17, invalid=1)
    assert chaotic.code == clean.code == 1  # the one invalid record
    assert chaotic.json()["retries"] > 0
    ours = [row for row in stored(server.db) if row[0].startswith(prefix)]
    assert ours == stored(clean_db)
    lines = server.answered()
    path = "/tests/batch" if mode == "batches" else "/tests"
    cut = {
        line["request_id"] for line in lines if line.get("chaos") == "cut" and line["route"] == path
    }
    assert cut  # answers were lost, and retried
    if mode == "batches":  # a lost batch's retry got the original answer
        repeated = {line["request_id"] for line in lines if line["event"] == "batch repeated"}
        assert cut & repeated


# --- many writers --------------------------------------------------------------------------


CLI = "from patientkit.cli.app import main\nmain()"  # python -m patientkit's
SUBMIT_MODULES = ("patientkit.cli.app", "patientkit.workflows.submit", "patientkit.core.storage")


def test_eight_processes_into_one_file_lose_and_double_nothing(tmp_path):
    db = tmp_path / "shared.db"
    files = []
    for n in range(8):
        ids = [(n * 750 + i) % 7500 for i in range(3000)]
        path = tmp_path / f"part{n}.ndjson"
        path.write_text(ndjson(rec(f"T{i:05d}", clinic=f"C{i % 13}", result=str(i)) for i in ids))
        files.append(path)
    # eight processes, forked once the CLI is imported (one start-up, not eight: 0.8
    # CPU-s), all starting their submits together
    outcomes = run_forked_at_once(
        CLI,
        [["records", "submit", str(path), "--db", str(db)] for path in files],
        imports=SUBMIT_MODULES,
        env=cli_env(),
    )
    results = [Result(code, out.decode(), err.decode()) for code, out, err in outcomes]
    assert [r.code for r in results] == [0] * 8, [r.err for r in results]
    unique = {(n * 750 + i) % 7500 for n in range(8) for i in range(3000)}
    assert sum(r.json()["created"] for r in results) == len(unique) == 7500
    assert sum(r.json()["duplicates"] for r in results) == 8 * 3000 - len(unique)
    assert stored(db) == [
        (f"T{i:05d}", "P1", f"C{i % 13}", "glucose", str(i)) for i in sorted(unique)
    ]


# --- Ctrl-C ----------------------------------------------------------------------------------


def start_submit(*args):
    return subprocess.Popen(
        [sys.executable, "-m", "patientkit", "records", "submit", "-", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(),
    )


def wait_for(condition, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def read_all_written(process):
    """Until the job has read everything written to its stdin (the pipe holds nothing)
    and waits for more: every record written is taken by the job (it reads and hands
    records on in one thread)."""

    def unread() -> int:
        size = array.array("i", [0])
        fcntl.ioctl(process.stdin.fileno(), termios.FIONREAD, size)
        return size[0]

    wait_for(lambda: unread() == 0)
    wait_until_reading(process.pid)


# /proc/PID/task/TID/syscall's numbers: futex(2) (a lock or condition), select(2) and
# pselect6(2) (glibc's select)
_FUTEX = {"x86_64": 202, "aarch64": 98}
_SELECT = {"x86_64": (23, 270), "aarch64": (72,)}


def idle(pid, looks=3):
    """Process `pid` waits with nothing to do, at `looks` looks 0.05 s apart (Linux /proc):
    each of its threads asleep, on a lock or condition (futex) or in select (the main
    thread's wait for stdin), none waiting for an answer or running. (Rows in the store
    are not yet answers the job has: it settles a record once it has read its answer.)"""
    machine = os.uname().machine
    waits = (_FUTEX[machine], *_SELECT[machine])
    for look in range(looks):
        if look:
            time.sleep(0.05)
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                stat = (task / "stat").read_text()
                call = (task / "syscall").read_text().split()[0]
            except OSError:
                return False  # a thread ended as we looked
            if stat[stat.rindex(")") + 2] != "S" or not call.isdigit() or int(call) not in waits:
                return False
    return True


def count_rows(db, clinic=None):
    """The records in a store (of `clinic` only, when given)."""
    where, args = ("", ()) if clinic is None else (" WHERE clinic_id = ?", (clinic,))
    try:
        with sqlite3.connect(db) as connection:
            query = "SELECT count(*) FROM test_records" + where
            return connection.execute(query, args).fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


def test_ctrl_c_settles_requests_in_flight_and_a_rerun_finishes(listed):
    db, server = listed  # the records of a clinic of this test's own: CTRL
    records = [rec(f"CTRL{n:03d}", clinic="CTRL") for n in range(30)]
    process = start_submit("--to", server.url, "--concurrency", "4")
    try:
        process.stdin.write(ndjson(records[:20]).encode())
        process.stdin.flush()
        wait_for(lambda: count_rows(db, "CTRL") == 20)
        wait_for(lambda: idle(process.pid))  # and it has the answers: none of the 20 in flight
        blocker = sqlite3.connect(db, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # the server's writes now wait for this lock
        process.stdin.write(ndjson(records[20:24]).encode())
        process.stdin.flush()
        read_all_written(process)  # the four taken: they wait on the lock in the server
        process.send_signal(signal.SIGINT)
        time.sleep(0.5)
        assert process.poll() is None  # still settling the four
        blocker.execute("COMMIT")
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, err
    settling = re.search(rb"warning: interrupted: settling (\d) records in flight", err)
    in_flight = int(settling.group(1))
    assert in_flight >= 1  # normally all 4; a slow machine may not have sent them all yet
    summary = json.loads(out)
    assert {k: summary[k] for k in ("read", "created", "duplicates", "failed")} == {
        "read": 20 + in_flight,
        "created": 20 + in_flight,  # the ones in flight were waited for, and landed
        "duplicates": 0,
        "failed": 0,
    }
    assert err.endswith(b"error: interrupted: run the same command again to finish the job\n")
    assert count_rows(db, "CTRL") == 20 + in_flight
    rerun = run_cli("records", "submit", "-", "--to", server.url, input=ndjson(records))
    assert rerun.code == 0
    assert (rerun.json()["created"], rerun.json()["duplicates"]) == (10 - in_flight, 20 + in_flight)
    assert count_rows(db, "CTRL") == 30


def test_ctrl_c_into_the_store_keeps_what_was_read_and_a_rerun_finishes(tmp_path):
    db = tmp_path / "s.db"
    records = [rec(f"T{n:03d}") for n in range(50)]
    process = start_submit("--db", str(db))
    try:
        process.stdin.write(ndjson(records[:35]).encode())
        process.stdin.flush()
        wait_for(lambda: count_rows(db) == 35)  # read and flushed: the job is running
        process.stdin.write(ndjson(records[35:40]).encode())
        process.stdin.flush()
        time.sleep(0.2)  # these may be read and still in the buffer: stored on Ctrl-C
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, err
    summary = json.loads(out)
    assert 35 <= summary["read"] <= 40
    assert summary["read"] == summary["created"] == count_rows(db)
    rerun = run_cli("records", "submit", "-", "--db", str(db), input=ndjson(records))
    assert rerun.code == 0
    assert (rerun.json()["created"], rerun.json()["duplicates"]) == (
        50 - summary["created"],
        summary["created"],
    )
    assert count_rows(db) == 50


# --- records list ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def listed(tmp_path_factory) -> Iterator[tuple[Path, Server]]:
    """A store of three records and a server of it, shared by the tests that only read
    and by one that writes records of a clinic of its own (CTRL)."""
    folder = tmp_path_factory.mktemp("listed")
    db = folder / "s.db"
    source = folder / "in.ndjson"
    source.write_text(ndjson([rec("A", clinic="C1"), rec("B", clinic="C2"), rec("C", clinic="C1")]))
    assert run_cli("records", "submit", str(source), "--db", str(db)).code == 0
    server = Server(folder / "serve.log", "--db", str(db))
    yield db, server
    server.stop()


@pytest.fixture(scope="module")
def no_bulk(tmp_path_factory) -> Iterator[tuple[Path, Server]]:
    """A store and a `serve --no-bulk` of it (no POST /tests/batch: the clients' fallback
    to one POST a record), shared by the tests that send records of their own."""
    folder = tmp_path_factory.mktemp("no-bulk")
    db = folder / "s.db"
    server = Server(folder / "serve.log", "--db", str(db), "--no-bulk")
    yield db, server
    server.stop()


def test_list_from_the_store_and_from_the_api(listed):
    listed_store, server = listed
    from_store = run_cli("records", "list", "--clinic", "C1", "--db", str(listed_store))
    assert from_store.code == 0
    lines = [json.loads(line) for line in from_store.out.splitlines()]
    assert [{k: v for k, v in r.items() if k != "created_at"} for r in lines] == [
        rec("A", clinic="C1"),
        rec("C", clinic="C1"),
    ]
    assert all(r["created_at"].endswith("Z") for r in lines)
    from_api = run_cli("records", "list", "--clinic", "C1", "--to", server.url)
    assert (from_api.code, from_api.out) == (0, from_store.out)


def test_list_of_an_empty_clinic_prints_nothing(listed):
    listed_store, server = listed
    assert run_cli("records", "list", "--clinic", "none", "--db", str(listed_store)).out == ""
    result = run_cli("records", "list", "--clinic", "none", "--to", server.url)
    assert (result.code, result.out, result.err) == (0, "", "")


def test_list_through_chaos_prints_each_record_once(serve, tmp_path):
    db = tmp_path / "s.db"
    source = tmp_path / "in.ndjson"
    source.write_text(ndjson(rec(f"T{n:04d}", clinic="BIG") for n in range(3000)))
    assert run_cli("records", "submit", str(source), "--db", str(db)).code == 0
    server = serve("--db", str(db), "--chaos", "0.5", "--chaos-seed", "5")
    for _ in range(3):
        result = run_cli("records", "list", "--clinic", "BIG", "--to", server.url, "-q")
        assert result.code == 0, result.err
        assert [json.loads(line)["test_id"] for line in result.out.splitlines()] == [
            f"T{n:04d}" for n in range(3000)
        ]


def test_list_usage_errors(tmp_path):
    missing = run_cli("records", "list", "--clinic", "C1", "--db", str(tmp_path / "no.db"))
    assert (missing.code, missing.err) == (
        2,
        f"error: {tmp_path / 'no.db'}: no such store\n",
    )
    assert not (tmp_path / "no.db").exists()
    empty = run_cli("records", "list", "--clinic", " ", "--db", str(tmp_path / "no.db"))
    assert (empty.code, empty.err) == (2, "error: --clinic must not be empty\n")
    both = run_cli("records", "list", "--clinic", "C", "--db", "x.db", "--to", "http://127.0.0.1:9")
    assert (both.code, both.err) == (
        2,
        "error: --db and --to cannot be used together: give the store or the API\n",
    )


# --- records that cannot be parsed (issue 9, cases 04, 05, 06) ----------------------------

LATIN1_CSV = (
    b"test_id,patient_id,clinic_id,test_type,result\nL1,Jos\xe9,CL,cbc,ok\nL2,P,CL,cbc,ok\n"
)
GOOD_RECORD = json.dumps(rec("T2", clinic="CL"))
LONE_SURROGATE = "lone surrogate escape (\\ud800-\\udfff without its pair), not valid in UTF-8"


@pytest.mark.parametrize(
    ("name", "data", "line", "reason"),
    [
        (
            "bigrec.json",
            b'[{"test_id":"T1","patient_id":"P","clinic_id":"CL","test_type":"cbc","result":'
            + b"9" * 5000
            + b"},\n"
            + GOOD_RECORD.encode()
            + b"]",
            1,
            "result: number too large (5000 digits)",
        ),
        (
            "deeprec.ndjson",
            b"[" * 100_000 + b"\n" + GOOD_RECORD.encode() + b"\n",
            1,
            "nesting too deep (more than 100 levels of arrays and objects)",
        ),
        ("latin1rec.csv", LATIN1_CSV, 2, "not valid UTF-8"),
        ("latin1rec.csv.gz", LATIN1_CSV, 2, "not valid UTF-8"),
        (
            "lone.ndjson",
            json.dumps(rec("T1", clinic="CL", patient="\ud800")).encode()
            + b"\n"
            + GOOD_RECORD.encode(),
            1,
            f"patient_id: {LONE_SURROGATE}",
        ),
        (
            "latin1.ndjson",
            b'{"test_id":"T1","patient_id":"Jos\xe9","clinic_id":"CL","test_type":"cbc","result":"ok"}\n'
            + GOOD_RECORD.encode(),
            1,
            "not valid UTF-8",
        ),
    ],
)
def test_a_record_that_cannot_be_parsed_is_invalid_nothing_of_it_stored(
    tmp_path, name, data, line, reason
):
    """That record is invalid with file:line and a true reason (never replaced by U+FFFD,
    never an internal error); the other is stored; the summary is printed; exit 1."""
    source = tmp_path / name
    source.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    db, rejects = tmp_path / "r.db", tmp_path / "rejects.ndjson"
    result = run_cli("records", "submit", str(source), "--db", str(db), "--rejects", str(rejects))
    assert result.code == 1
    assert f"{source}:{line}: {reason}" in result.err.splitlines()
    assert "internal error" not in result.err
    assert counts(result) == verdicts(2, created=1, invalid=1)
    assert rejects_lines(rejects) == [
        {"source": str(source), "line": line, "reason": reason, "record": None}
    ]
    listed = run_cli("records", "list", "--clinic", "CL", "--db", str(db))
    assert listed.code == 0
    assert [json.loads(row)["test_id"] for row in listed.out.splitlines()] == [
        "L2" if "latin1rec" in name else "T2"
    ]
    assert "\ufffd" not in listed.out


def listed_by_others(row: tuple) -> bool:
    """A record the other tests put in the `listed` and `no_bulk` stores: A, B, C, CTRL's
    and the mixed files' (MIXED_PREFIXES)."""
    return (
        row[0] in ("A", "B", "C")
        or row[2] == "CTRL"
        or row[0].startswith(tuple(MIXED_PREFIXES.values()))
    )


def test_batches_and_one_post_per_record_end_alike(listed, no_bulk, tmp_path):
    """A generated file with invalid and repeated records: in batches (several in flight,
    small ones so that there are many: ten of ten; to the module's server, whose other records
    are not of this file), against a server without bulk (the fallback: the module's
    `no_bulk`, whose other records are the mixed file's), and into the store, the same
    summary, the same rejects (but for request ids) and the same records of the file
    stored."""
    source = tmp_path / "tests.ndjson"
    made = run_cli(
        "records", "generate", str(source), "--records", "100", "--invalid", "0.05",
        "--duplicates", "0.05", "--seed", "7",
    )  # fmt: skip
    assert made.code == 0, made.err
    runs = {}
    for name in ("batches", "fallback", "store"):
        db, rejects = tmp_path / f"{name}.db", tmp_path / f"{name}-rejects.ndjson"
        if name == "batches":
            db = listed[0]
            where = ["--to", listed[1].url, "--concurrency", "3", "--batch-size", "10"]
        elif name == "fallback":
            db = no_bulk[0]
            where = ["--to", no_bulk[1].url]
        else:
            where = ["--db", str(db)]
        result = run_cli("records", "submit", str(source), *where, "--rejects", str(rejects))
        lines = [
            {k: v for k, v in line.items() if k != "request_id"} for line in rejects_lines(rejects)
        ]
        problems = sorted(line for line in result.err.splitlines() if not line.startswith("error"))
        runs[name] = (result.code, counts(result), sorted(map(json.dumps, lines)), problems)
        runs[name] += ([row for row in stored(db) if not listed_by_others(row)],)
    assert runs["batches"] == runs["fallback"] == runs["store"]
    code, summary, *_ = runs["batches"]
    assert code == 1
    assert summary["invalid"] > 0 and summary["duplicates"] > 0
    assert summary["read"] == 100

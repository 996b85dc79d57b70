"""SPEC.md "The server", Processes: `--workers N` serves from N processes on one
listening socket (SQLite in WAL mode) with exact verdicts and metrics summed over the
workers; SIGTERM stops accepting, lets requests in flight finish (up to --grace) and
exits 0, with nothing half-stored."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import cli_env, default_tls, run_cli, run_cli_process, web

pytestmark = pytest.mark.slow  # long waits: scheduled first (tests/conftest.py)


def write_records(path, count, prefix="W"):
    with path.open("w") as out:
        for n in range(count):
            record = {
                "test_id": f"{prefix}-{n}",
                "patient_id": "P",
                "clinic_id": f"C-{n % 7}",
                "test_type": "t",
                "result": "r",
            }
            out.write(json.dumps(record) + "\n")


def test_two_workers_give_exact_verdicts_to_concurrent_submitters(serve, tmp_path):
    server = serve("--db", str(tmp_path / "w.db"), "--workers", "2")
    serving = [line for line in server.log_lines() if line["event"] == "serving"]
    assert [line["workers"] for line in serving] == [2]
    records = tmp_path / "r.ndjson"
    write_records(records, 400)
    results = []
    args = ["records", "submit", str(records), "--to", server.url, "--concurrency", "4"]

    def submit():
        results.append(run_cli_process(*args))

    threads = [threading.Thread(target=submit) for _ in range(2)]
    for thread in threads:
        thread.start()
    results.append(run_cli(*args))  # at once: two processes and this one
    for thread in threads:
        thread.join()
    assert len(results) == 3
    summaries = [result.json() for result in results]
    assert all(result.code in (0, 1) for result in results), [r.err for r in results]
    assert sum(s["created"] for s in summaries) == 400
    assert sum(s["duplicates"] for s in summaries) == 800
    with sqlite3.connect(tmp_path / "w.db") as db:
        assert db.execute("select count(*) from test_records").fetchone()[0] == 400
    answer = web.get(f"{server.url}/metrics")
    found = {
        sample.name: sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
        if not sample.labels
    }
    assert found["patientkit_records_created_total"] == 400  # summed over both workers
    assert found["patientkit_records_duplicates_refused_total"] == 800
    started = [line for line in server.log_lines() if line["event"].startswith("Started server")]
    assert len(started) == 2  # one a worker


def start(tmp_path, *args):
    log = tmp_path / "serve.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "patientkit", "serve", "--port", "0", *args],
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
        env=cli_env(),
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if line.startswith("{") and json.loads(line)["event"] == "serving":
                return process, json.loads(line)["url"], log
        time.sleep(0.05)
    raise AssertionError(log.read_text())


def big_export(folder, megabytes):
    """One download of about `megabytes` MB, far more than the sockets between server and
    reader buffer, with its metadata (which the server would otherwise scan all rows for
    after each download, for its metrics)."""
    download = str(uuid.uuid4())
    (folder / "big").mkdir(parents=True)
    row = b"P001,2025-08-26T00:00:02.760570Z,spo2,97\n"
    path = folder / "big" / f"{download}.csv"
    rows = megabytes * 1_000_000 // len(row)
    with path.open("wb") as out:
        out.write(b"patient_id,event_time,event_type,value\n")
        out.write(row * rows)
    meta = {
        "id": download,
        "rows": rows,
        "event_types": ["spo2"],
        "patients": ["P001"],
        "start_time": "2025-08-26T00:00:02.760570Z",
        "end_time": "2025-08-26T00:00:02.760570Z",
    }
    (folder / "big" / f"{download}.meta.json").write_text(json.dumps(meta))
    return download, path.stat().st_size


def submit_batches(url: str, lines: list[str]) -> None:
    """POST `lines` to /tests/batch 500 at a time, one after another, until done or the
    server refuses (it stopped): a submitter that keeps requests in flight, without a
    `records submit` process to start (which would retry a server that is gone)."""
    ndjson = {"content-type": "application/x-ndjson"}
    with httpx.Client(verify=default_tls(), base_url=url, timeout=30) as http:
        for start in range(0, len(lines), 500):
            try:
                http.post(
                    "/tests/batch", content="".join(lines[start : start + 500]), headers=ndjson
                )
            except httpx.TransportError:  # stopped: refused, or cut after --grace
                return


def stored_rows(db) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute("select count(*) from test_records").fetchone()[0]


@pytest.mark.parametrize(
    ("stop", "workers"),
    [(signal.SIGTERM, "2"), (signal.SIGINT, "1")],  # each signal, each kind of server
    ids=["SIGTERM-2", "Ctrl-C-1"],
)
def test_a_signal_during_a_download_and_a_submit_lets_them_finish_and_halves_nothing(
    tmp_path, stop, workers
):
    """A signal and a server of N workers, each value of each run once: SIGTERM to the
    master of two workers (which must stop its workers' accepting as well), Ctrl-C to a
    server of one process. In flight when it comes: a long download, which finishes, and
    two submitters' batches (each may have one in flight: with two workers, at once);
    it exits 0, and the store holds whole records only, none by halves. (One server for
    both: a download test and a submit test each stopped one of its own.)"""
    exports = tmp_path / f"exports-{workers}"
    download, size = big_export(exports, 16)
    db = tmp_path / "d.db"
    records = tmp_path / "r.ndjson"
    write_records(records, 30_000, prefix=f"S{workers}")
    lines = records.read_text().splitlines(keepends=True)
    process, url, log = start(
        tmp_path, "--exports", str(exports), "--db", str(db), "--workers", workers
    )
    submitters = [
        threading.Thread(target=submit_batches, args=(url, lines[half::2])) for half in range(2)
    ]
    try:
        with web.stream("GET", f"{url}/api/export/big/{download}/data", timeout=30) as answer:
            chunks = answer.iter_raw()
            received = len(next(chunks))
            for submitter in submitters:
                submitter.start()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and stored_rows(db) == 0:  # mid-job: some stored
                time.sleep(0.02)
            process.send_signal(stop)
            with_new = None
            deadline = time.monotonic() + 10
            # a new connection a request (one client: not a TLS set-up a ping)
            fresh = httpx.Limits(max_keepalive_connections=0)
            with httpx.Client(verify=default_tls(), timeout=2, limits=fresh) as pings:
                while with_new is None and time.monotonic() < deadline:
                    try:  # until the signal is seen: then refused (or cut) at once
                        pings.get(f"{url}/api/ping")
                    except httpx.TransportError as exc:
                        with_new = exc
                    time.sleep(0.05)
            assert with_new is not None  # no longer accepting
            # and not taken in and left unanswered (a listening socket kept open)
            assert not isinstance(with_new, httpx.TimeoutException), repr(with_new)
            for chunk in chunks:
                received += len(chunk)
                time.sleep(0.0005)
        assert received == size  # the request in flight finished
        assert process.wait(timeout=30) == 0
    finally:
        process.kill()
        for submitter in submitters:
            submitter.join(timeout=60)
    text = log.read_text()
    assert "Traceback" not in text and '"level": "error"' not in text
    assert json.loads(text.splitlines()[-1])["event"] == "stopped"
    with sqlite3.connect(db) as conn:
        assert conn.execute("pragma integrity_check").fetchone() == ("ok",)
        rows = conn.execute(
            "select test_id, patient_id, clinic_id, test_type, result from test_records"
        ).fetchall()
    assert 0 < len(rows) <= 30_000
    assert all(all(field for field in row) for row in rows)


def test_grace_bounds_the_wait_for_requests_in_flight(tmp_path):
    exports = tmp_path / "exports"
    download, _size = big_export(exports, 16)
    process, url, _log = start(
        tmp_path, "--exports", str(exports), "--db", str(tmp_path / "g.db"), "--grace", "1"
    )
    try:
        with web.stream("GET", f"{url}/api/export/big/{download}/data", timeout=30) as answer:
            chunks = answer.iter_raw()
            next(chunks)
            stopped = time.monotonic()
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=15) == 0  # the reader stalls: cut after --grace
            assert 0.9 < time.monotonic() - stopped < 8
    finally:
        process.kill()

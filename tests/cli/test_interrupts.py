"""Ctrl-C at different moments of `readings replay` and `records submit` (case 10's kind):
one or two SIGINTs end the job within about two seconds, exit 130, one error line, no
traceback, no process left behind (the replay's store process); a rerun completes it."""

import contextlib
import ctypes
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from patientkit.samples.inputs import generate_readings
from tests.cli.test_read_errors import records_lines
from tests.cli.test_readings import dump, processes_using, wait_for_rows
from tests.helpers import (
    QuietHandler,
    Server,
    cli_env,
    run_cli,
    stand_in_server,
    start_holding_back,
    wait_until_reading,
)

pytestmark = pytest.mark.slow  # long waits: scheduled first (tests/conftest.py)

REPLAY_LINE = "error: interrupted; run the same command again to finish"
PROMPT = 3.5  # seconds from the first SIGINT to the exit: "about 2 s", with room for load


def readings_and_clean_store(
    folder: Path, readings: int, devices: int = 400, seed: int = 0
) -> tuple[Path, Path]:
    """`readings` readings of `devices` devices in folder/r.ndjson (generate_readings's
    `seed`), and the store one clean replay of them makes."""
    source, clean = folder / "r.ndjson", folder / "clean.db"
    generate_readings(source, readings, devices=devices, seed=seed)
    done = run_cli("readings", "replay", str(source), "--db", str(clean))
    assert done.code == 0, done.err
    return source, clean


READINGS = 10_000  # in readings_file
API_READINGS = 10_000  # in api_readings_file


@pytest.fixture(scope="module")
def readings_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """10,000 readings and the store one clean replay of them makes. The interrupted run
    reads them from a pipe that holds back the last 2,000 (start_holding_back), so it is
    mid-way whenever its Ctrl-C comes (as its store opens, or at 4,000 stored: with `--batch-size
    500` it holds at most 2,000 read ahead of the store, of the 8,000 it can read); the
    file need not outlast the wait, and the rerun that completes the store is short."""
    return readings_and_clean_store(tmp_path_factory.mktemp("interrupts"), READINGS)


@pytest.fixture(scope="module")
def api_readings_file(
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[[int], tuple[Path, Path]]:
    """10,000 readings of `devices` devices and their clean store, made once a count of
    devices. With `--batch-size 50` a replay --to holds up to 6,400 read ahead of what
    is delivered (batches of 1,600 readings, four pending, each batch a request per
    device of its few readings there). Its pipe holds back the last 1,000, so at 400
    stored the buffer is full and the reader waits on the rest. With 400 devices, some
    400 requests a batch, more requests are pending than the second a Ctrl-C gives to
    deliver them (what one Ctrl-C must show); two Ctrl-Cs need only a job mid-way, and
    100 devices do: a rerun over HTTP is a request a device (400 of them were 0.5 CPU-s
    more). Each count is its own seed: no device of one is a device of another
    (they share api_server)."""
    made: dict[int, tuple[Path, Path]] = {}

    def of(devices: int) -> tuple[Path, Path]:
        if devices not in made:
            folder = tmp_path_factory.mktemp("api-interrupts")
            made[devices] = readings_and_clean_store(folder, API_READINGS, devices, seed=devices)
        return made[devices]

    return of


@pytest.fixture(scope="module")
def api_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    """One `patientkit serve` and its store for the replay --to tests (a start-up each
    was 0.3 CPU-s): each replays devices of its own and checks only those."""
    folder = tmp_path_factory.mktemp("api-server")
    db = folder / "api.db"
    server = Server(folder / "serve.log", "--db", str(db))
    on_one_core(server.process.pid)
    yield server, db
    server.stop()


ONE_CORE = {min(os.sched_getaffinity(0))}


def on_one_core(pid: int) -> None:
    """Run every thread of process `pid` (and those it starts) on ONE_CORE: the replay
    --to and its server take turns there, not a core each."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that ended
            os.sched_setaffinity(int(task.name), ONE_CORE)


def stored(db: Path) -> int:
    """The readings a store holds (0 before it is made)."""
    if not db.exists():
        return 0
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return conn.execute("SELECT count(*) FROM readings").fetchone()[0]


def dump_of(db: Path, devices: set[str]) -> tuple[list, list]:
    """`dump(db)` of these devices alone."""
    readings, rows = dump(db)
    return [r for r in readings if r[0] in devices], [r for r in rows if r[0] in devices]


def start(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "patientkit", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(),
    )


def interrupt(
    process: subprocess.Popen[bytes], times: int, stdin_open: bool = False
) -> tuple[float, str, str]:
    """Send `times` SIGINTs 0.1 s apart; seconds until it exited, stdout, stderr.
    With `stdin_open`, the process's stdin stays open until it has exited (an end of
    input must not race the interrupt)."""
    first = time.monotonic()
    for n in range(times):
        if n:
            time.sleep(0.1)
        process.send_signal(signal.SIGINT)
    try:
        if stdin_open:
            process.wait(timeout=30)
        out, err = process.communicate(timeout=30)
    finally:
        process.kill()
    return time.monotonic() - first, out.decode(), err.decode()


def wait_for_file(path: Path, process: subprocess.Popen[bytes]) -> None:
    """Poll until `path` exists (not a fixed time: start-up varies)."""
    deadline = time.monotonic() + 60
    while not path.exists():
        assert process.poll() is None, "the command ended before it made " + str(path)
        assert time.monotonic() < deadline, f"{path} was not made within 60 s"
        time.sleep(0.005)


def wait_for_records(db: Path, process: subprocess.Popen[bytes]) -> None:
    """Poll the store of a running `records submit` until it holds a record."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        with (
            contextlib.suppress(sqlite3.OperationalError),  # not made yet, or locked
            contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn,
        ):
            if conn.execute("SELECT count(*) FROM test_records").fetchone()[0]:
                return
        time.sleep(0.02)
    raise AssertionError("the submit ended (or stalled) before it stored a record")


def assert_ended_cleanly(seconds: float, err: str, last_line: str) -> None:
    assert seconds < PROMPT, f"took {seconds:.1f}s to stop\n{err}"
    assert "Traceback" not in err and "Aborted" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert errors == [last_line], err


@pytest.mark.parametrize(
    ("moment", "times"),
    # each moment and each count of Ctrl-Cs runs; (starting, 1) went: its checks are
    # those of (starting, 2), and one Ctrl-C mid-job is (storing, 1)
    [("starting", 2), ("storing", 1), ("storing", 2)],
    ids=["starting-2", "storing-1", "storing-2"],
)
def test_replay_ends_promptly_leaves_no_process_and_a_rerun_completes(
    readings_file, tmp_path, times, moment
):
    source, clean = readings_file
    db = tmp_path / "r.db"
    args = ("readings", "replay", "-", "--db", str(db), "--batch-size", "500")
    process, feeder = start_holding_back(source, 2_000, *args)
    if moment == "starting":  # start-up done, its store process opening the store (not a
        wait_for_file(db, process)  # fixed 0.6 s: by then 6,000-8,000 were stored here)
    else:
        wait_for_rows(db, 4_000, process)
    seconds, out, err = interrupt(process, times, stdin_open=True)
    feeder.join()
    assert process.returncode == 130, err
    if moment == "starting" and not out:  # stopped before the job began: the generic line
        assert_ended_cleanly(seconds, err, "error: interrupted")
    else:
        assert_ended_cleanly(seconds, err, REPLAY_LINE)
        assert json.loads(out)["read"] < READINGS
    assert processes_using(db, within=2.0) == [], "the store process outlived the replay"
    again = run_cli("readings", "replay", str(source), "--db", str(db))
    assert again.code == 0, again.err
    assert dump(db) == dump(clean)


RECORDS = 30_000  # of the submit test (was 50,000, holding back 10,000: 0.2 CPU-s more)


@pytest.mark.parametrize("times", [1, 2])
def test_submit_into_the_store_ends_promptly_and_a_rerun_completes(tmp_path, times):
    """The first run reads the records from a pipe that holds back the last 5,000: it is
    mid-job (storing, or waiting for the rest) whenever the Ctrl-C comes. The 25,000 it
    gets are more than a store batch (20,000): a batch is in flight or pending then."""
    lines = records_lines(RECORDS)
    source = tmp_path / "t.ndjson"
    source.write_bytes(lines)
    db = tmp_path / "s.db"
    process, feeder = start_holding_back(source, 5_000, "records", "submit", "-", "--db", str(db))
    wait_for_records(db, process)  # the job began (not a fixed time: start-up varies)
    seconds, out, err = interrupt(process, times, stdin_open=True)
    feeder.join()
    assert process.returncode == 130, err
    in_flight = re.search(r"; (\d+) were still in flight", err)
    lost = in_flight.group(0) if in_flight else ""
    line = f"error: interrupted{lost}: run the same command again to finish the job"
    assert_ended_cleanly(seconds, err, line)
    first = json.loads(out)
    assert first["read"] < RECORDS
    again = run_cli("records", "submit", str(source), "--db", str(db))
    assert again.code == 0, again.err
    summary = again.json()
    assert summary["created"] + summary["duplicates"] == summary["read"] == RECORDS
    # what the first run confirmed is a duplicate now; records it gave up on in flight
    # (counted failed) may have landed too
    assert first["created"] <= summary["duplicates"] <= first["created"] + first["failed"]


@pytest.mark.parametrize(
    ("times", "dead_letter", "devices"),
    # pairwise: each number of Ctrl-Cs and each of with and without --dead-letter runs
    # once (every check of a case without it is made by the case with it too); devices:
    # see api_readings_file
    [(1, True, 400), (2, False, 100)],
    ids=["1-True", "2-False"],
)
def test_replay_to_an_api_ends_promptly_with_one_line_and_a_rerun_completes(
    api_readings_file, api_server, tmp_path, times, dead_letter, devices
):
    """`readings replay --to`: after Ctrl-C no new request is started once the time to
    deliver is over (a batch of many devices never keeps it waiting), the readings handed
    back are counted (and written to --dead-letter) without a line of their own; stderr
    is the one error line. A rerun completes the store."""
    source, clean = api_readings_file(devices)
    server, db = api_server
    before = stored(db)  # the other test's
    extra = ("--dead-letter", str(tmp_path / "dead.ndjson")) if dead_letter else ()
    small = ("--batch-size", "50")
    args = ("readings", "replay", "-", "--to", server.url, *small, *extra)
    process, feeder = start_holding_back(source, 1_000, *args)
    on_one_core(process.pid)
    wait_for_rows(db, before + 400, process)
    seconds, out, err = interrupt(process, times, stdin_open=True)
    feeder.join()
    assert process.returncode == 130, err
    assert_ended_cleanly(seconds, err, REPLAY_LINE)
    assert [line for line in err.splitlines() if line.strip()] == [REPLAY_LINE]
    summary = json.loads(out)
    assert summary["read"] < API_READINGS
    if dead_letter:
        lines = (tmp_path / "dead.ndjson").read_text(encoding="utf-8").splitlines()
        assert len(lines) == summary["dead_lettered"] > 0
        assert {json.loads(line)["reason"] for line in lines} == {"not delivered: interrupted"}
    again = run_cli("readings", "replay", str(source), "--to", server.url)
    assert again.code == 0, again.err
    readings, devices_of = dump(clean)
    assert dump_of(db, {row[0] for row in devices_of}) == (readings, devices_of)
    assert stored(db) == before + len(readings)  # and nothing under other devices


def fd_of(pid: int, path: Path, timeout: float = 30) -> int:
    """The descriptor under which process `pid` has `path` open (Linux /proc)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for link in Path(f"/proc/{pid}/fd").glob("*"):
            with contextlib.suppress(OSError):
                if str(link.readlink()) == str(path):
                    return int(link.name)
        assert Path(f"/proc/{pid}").exists(), f"process {pid} ended before it opened {path}"
        time.sleep(0.01)
    raise AssertionError(f"process {pid} did not open {path} within {timeout} s")


@pytest.mark.parametrize(
    ("command", "lines"),
    # pairwise: each command and each of before and after some lines runs once (a
    # command waiting on an idle pipe before its first line: test_..._on_idle_stdin)
    [("replay", 0), ("submit", 5)],
)
def test_one_ctrl_c_ends_a_command_waiting_on_an_idle_named_pipe(tmp_path, command, lines):
    """A named pipe held open with no data (or after some lines): Python retries a read
    a signal interrupted, so one Ctrl-C went unseen until more input came. Now it ends
    the read at once: what was read is delivered, the summary printed, exit 130."""
    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)
    writer = os.open(fifo, os.O_RDWR)  # held open: the reader never sees an end
    try:
        if command == "replay":
            generate_readings(tmp_path / "r.ndjson", 5, devices=2)
            data = (tmp_path / "r.ndjson").read_bytes()
        else:
            data = records_lines(5)
        os.write(writer, b"".join(data.splitlines(keepends=True)[:lines]))
        args = ["readings", "replay"] if command == "replay" else ["records", "submit"]
        process = start(*args, str(fifo), "--db", str(tmp_path / "s.db"))
        wait_until_reading(process.pid, fd_of(process.pid, fifo))
        if lines:  # the lines were read: now it waits for more
            time.sleep(0.3)
            wait_until_reading(process.pid, fd_of(process.pid, fifo))
        seconds, out, err = interrupt(process, 1)
    finally:
        os.close(writer)
    assert process.returncode == 130, err
    assert f"{fifo}:" not in err, err  # every record was valid
    line = (
        REPLAY_LINE
        if command == "replay"
        else "error: interrupted: run the same command again to finish the job"
    )
    assert_ended_cleanly(seconds, err, line)
    summary = json.loads(out)
    assert summary["read"] == lines
    delivered = summary["delivered"] if command == "replay" else summary["created"]
    assert delivered == lines


def reading_stdin(command: str, db: Path) -> list[str]:
    """The arguments of `command` (replay, submit, count) reading stdin, into `db`."""
    return {
        "replay": ["readings", "replay", "-", "--db", str(db)],
        "submit": ["records", "submit", "-", "--db", str(db)],
        "count": ["export", "count", "-"],
    }[command]


# What each of them says when a Ctrl-C ends it before it read anything.
IDLE_STDIN_LINES = {
    "replay": REPLAY_LINE,
    "submit": "error: interrupted: run the same command again to finish the job",
    "count": "error: interrupted: nothing was counted",
}


@pytest.mark.parametrize(
    ("command", "times"),
    # two Ctrl-Cs for the replay: it was test_a_command_waiting_on_stdin_ends_on_ctrl_c,
    # a process of its own (one Ctrl-C of a replay on an idle pipe: the named pipe's test)
    [("replay", 2), ("submit", 1), ("count", 1)],
)
def test_ctrl_c_ends_a_command_waiting_on_idle_stdin(tmp_path, command, times):
    args = reading_stdin(command, tmp_path / "i.db")
    process = subprocess.Popen(
        [sys.executable, "-m", "patientkit", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(),
    )
    wait_until_reading(process.pid)
    seconds, out, err = interrupt(process, times, stdin_open=True)
    assert process.returncode == 130, err
    line = IDLE_STDIN_LINES[command]
    assert_ended_cleanly(seconds, err, line)
    if command != "count":
        assert json.loads(out)["read"] == 0


# Runs the CLI with a thread of its own started first (it waits, and never reads): a
# signal can be made to land there rather than in the main thread.
WITH_A_BYSTANDER = (
    "import threading, time\n"
    "threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()\n"
    "from patientkit.cli.app import main\n"
    "main()\n"
)


def tgkill(pid: int, tid: int, sig: int) -> None:
    """Send `sig` to thread `tid` of process `pid` alone (Linux tgkill(2))."""
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.syscall(TGKILL[os.uname().machine], pid, tid, sig) == 0, ctypes.get_errno()


TGKILL = {"x86_64": 234, "aarch64": 131}  # the tgkill(2) system call's number


@pytest.mark.parametrize("command", ["replay", "submit", "count"])
def test_a_ctrl_c_handled_in_another_thread_ends_a_command_waiting_on_idle_stdin(tmp_path, command):
    """Python runs a signal's handler in the main thread, between two bytecodes: a
    Ctrl-C that did not interrupt the main thread's read of stdin (it landed in another
    thread, or came as the main thread was on its way into the read) waited for that
    read to return, for ever on a pipe kept open. Here it lands in another thread."""
    args = reading_stdin(command, tmp_path / "i.db")
    process = subprocess.Popen(
        [sys.executable, "-c", WITH_A_BYSTANDER, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(),
    )
    try:
        wait_until_reading(process.pid)
        other = min(int(task.name) for task in Path(f"/proc/{process.pid}/task").iterdir()
                    if int(task.name) != process.pid)  # fmt: skip
        first = time.monotonic()
        tgkill(process.pid, other, signal.SIGINT)
        process.wait(timeout=10)  # stdin stays open: only the Ctrl-C can end it
        seconds = time.monotonic() - first
        out, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 130, err
    line = IDLE_STDIN_LINES[command]
    assert_ended_cleanly(seconds, err.decode(), line)
    if command != "count":
        assert json.loads(out)["read"] == 0


@pytest.fixture
def refusing_server() -> Iterator[tuple[str, list[str]]]:
    """Answers its ping; every create request gets 503 (retryable, for ever). Yields its
    URL and the paths of the POSTs it answered, in order."""
    posts: list[str] = []

    class Handler(QuietHandler):
        def answer(self, status: int) -> None:
            length = int(self.headers.get("content-length") or 0)
            self.rfile.read(length)
            body = b"{}"
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            self.answer(200 if self.path == "/api/ping" else 404)

        def do_POST(self):
            self.answer(503)
            posts.append(self.path)

    with stand_in_server(Handler) as url:
        yield url, posts


def test_one_ctrl_c_ends_a_replay_waiting_to_deliver_the_rest(refusing_server, tmp_path):
    """The whole input was read; the replay waits for the API to take the rest (it
    answers 503, so the buffer retries). One Ctrl-C gives delivery INTERRUPTED_CLOSE
    seconds, then the readings not delivered are counted (dead letters), exit 130."""
    url, posts = refusing_server
    source = tmp_path / "r.ndjson"
    generate_readings(source, 20, devices=2)
    process = start("readings", "replay", str(source), "--to", url)
    deadline = time.monotonic() + 30
    while len(posts) < 2:  # read, sent, and retrying (not a fixed time: the machine varies)
        assert process.poll() is None and time.monotonic() < deadline, "no retry came"
        time.sleep(0.01)
    assert process.poll() is None
    seconds, out, err = interrupt(process, 1)
    assert process.returncode == 130, err
    assert_ended_cleanly(seconds, err, REPLAY_LINE)
    summary = json.loads(out)
    assert summary["read"] == summary["dead_lettered"] == 20
    assert summary["delivered"] == 0

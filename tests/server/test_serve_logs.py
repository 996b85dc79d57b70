"""`patientkit serve` talks to people on a terminal and to machines in a pipe:
--log-format text|json (text on a terminal, json otherwise), -q keeps warnings, errors
and the line that says where it serves; never a query value or a record's contents."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from patientkit.server.logs import serving_line
from tests.helpers import cli_env, web

SERVING = re.compile(
    r"^serving readings and records in (?P<db>\S+) on (?P<url>http://127\.0\.0\.1:\d+) "
    r"— Ctrl-C to stop$"
)
REQUEST = re.compile(
    r"^\d\d:\d\d:\d\d (?P<method>[A-Z]+) (?P<path>\S+) (?P<status>\d{3}) [\d,]+ B "
    r"[\d.]+ ms \[(?P<id>[^\]]+)\]$"
)


def start(log: Path, *args: str, stderr: object = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "patientkit", "serve", "--port", "0", *args],
        stdout=subprocess.DEVNULL,
        stderr=stderr if stderr is not None else log.open("wb"),
        env=cli_env(),
    )


def wait_for(log: Path, pattern: re.Pattern[str], timeout: float = 20) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            found = pattern.match(line)
            if found:
                return found
        time.sleep(0.05)
    raise AssertionError(f"no line matching {pattern.pattern}:\n{log.read_text()}")


def stop(process: subprocess.Popen) -> None:
    """SIGTERM: the server stops cleanly and exits 0."""
    process.terminate()
    assert process.wait(timeout=10) == 0


class Screen:
    """What a server started on a terminal (a pty's child side) wrote there."""

    def __init__(self, main: int) -> None:
        self.main, self.data, self.closed = main, b"", False

    def _read(self) -> None:
        if select.select([self.main], [], [], 0.2)[0]:
            try:
                chunk = os.read(self.main, 4096)
            except OSError:  # EIO: the child side is closed, everything read
                chunk = b""
            self.data += chunk
            self.closed = not chunk

    def wait_for(self, needle: bytes, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.data and not self.closed and time.monotonic() < deadline:
            self._read()
        assert needle in self.data, self.data

    def read_to_end(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not self.closed and time.monotonic() < deadline:
            self._read()

    def lines(self) -> list[str]:
        return self.data.decode().splitlines()  # the terminal's \r\n too


def on_a_terminal(tmp_path: Path, *args: str) -> tuple[subprocess.Popen, Screen]:
    main, child = pty.openpty()
    process = start(tmp_path / "unused.log", *args, stderr=child)
    os.close(child)
    return process, Screen(main)


def test_on_a_terminal_the_default_is_a_sentence_then_one_line_a_request(tmp_path):
    """Text, the default on a terminal: the sentence that says what it serves where (the
    one without exports: test_the_sentence_without_exports), a line a request, the
    stopped line; never a query value or a record's contents."""
    db = tmp_path / "s.db"
    exports = tmp_path / "exports"
    exports.mkdir()
    process, screen = on_a_terminal(tmp_path, "--db", str(db), "--exports", str(exports))
    try:
        screen.wait_for(b"Ctrl-C to stop")
        first = screen.lines()[0]
        url = re.match(r"^serving exports from \S+, readings and records in \S+ on (\S+) ", first)
        assert url, first
        url = url[1]
        assert first == (
            f"serving exports from {exports}, readings and records in {db} on {url} "
            "— Ctrl-C to stop"
        )
        web.get(f"{url}/tests", params={"clinic_id": "SECRET-CLINIC-Q"})
        web.post(
            f"{url}/tests",
            json={
                "test_id": "T1",
                "patient_id": "PATIENT-SECRET",
                "clinic_id": "C1",
                "test_type": "blood",
                "result": "RESULT-SECRET",
            },
            headers={"x-request-id": "req-1"},
        )
        screen.wait_for(b"[req-1]")
    finally:
        stop(process)
        screen.read_to_end()
        os.close(screen.main)
    lines = screen.lines()
    requests = [REQUEST.match(line) for line in lines[1:]]
    assert lines[-1].startswith("stopped serving on http://127.0.0.1:")
    requests = requests[:-1]
    assert all(requests), lines  # nothing but the sentence and the request lines
    assert [(r["method"], r["path"], r["status"]) for r in requests if r] == [
        ("GET", "/tests", "200"),
        ("POST", "/tests", "200"),
    ]
    assert requests[-1] and requests[-1].group(0).endswith("[req-1]")
    text = screen.data.decode()
    for secret in ("SECRET-CLINIC-Q", "PATIENT-SECRET", "RESULT-SECRET", "Started server"):
        assert secret not in text


def test_the_sentence_without_exports(tmp_path):
    """The sentence of a server without --exports (the formatter, in this process: the
    one with them is written by a real server above)."""
    db = tmp_path / "s.db"
    first = serving_line({"db": str(db), "url": "http://127.0.0.1:8123", "exports": None})
    assert SERVING.match(first), first
    assert SERVING.match(first)["db"] == str(db)


def test_json_is_the_default_in_a_pipe_and_quiet_keeps_no_request_lines(tmp_path):
    log = tmp_path / "serve.log"
    process = start(log, "--db", str(tmp_path / "s.db"), "-q")
    try:
        line = wait_for(log, re.compile(r'^\{.*"event": "serving"'))
        url = json.loads(line.string)["url"]
        for _ in range(3):
            assert web.get(f"{url}/tests", params={"clinic_id": "C"}).status_code == 200
        assert web.get(f"{url}/api/ping").status_code == 200
    finally:
        stop(process)  # it has exited: whatever it would log is in the file
    events = [json.loads(line)["event"] for line in log.read_text().splitlines()]
    assert events == ["serving"]  # no per-request line, no info at all


@pytest.mark.parametrize("workers", ["1", "2"])
def test_log_level_warning_keeps_the_serving_line_and_warnings_only(tmp_path, workers):
    """--log-level warning: no info line but those that say where it serves and that it
    stopped; a request chaos broke on purpose is a warning, kept, and no server error."""
    log = tmp_path / "serve.log"
    args = ["--db", str(tmp_path / "s.db"), "--log-level", "warning", "--workers", workers]
    process = start(log, *args, "--chaos", "1.0")
    try:
        line = wait_for(log, re.compile(r'^\{.*"event": "serving"'))
        url = json.loads(line.string)["url"]
        assert web.get(f"{url}/api/ping").status_code == 200  # ping is never broken
        with contextlib.suppress(httpx.TransportError):
            web.get(f"{url}/tests", params={"clinic_id": "C"})
        wait_for(log, re.compile(r'^\{.*"event": "request"'))
    finally:
        stop(process)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [line["event"] for line in lines if line["level"] == "info"] == ["serving", "stopped"]
    assert [line for line in lines if line["level"] == "error"] == []
    requests = [line for line in lines if line["event"] == "request"]
    assert [(r["level"], r["route"]) for r in requests] == [("warning", "/tests")]


def test_json_without_quiet_has_a_line_a_request(tmp_path):
    """--log-format json, on a terminal (where it overrides the default, text)."""
    process, screen = on_a_terminal(
        tmp_path, "--db", str(tmp_path / "s.db"), "--log-format", "json"
    )
    try:
        screen.wait_for(b'"event": "serving"')
        serving = [json.loads(line) for line in screen.lines() if '"event": "serving"' in line]
        url = serving[0]["url"]
        web.get(f"{url}/tests", params={"clinic_id": "C"})
        screen.wait_for(b'"event": "request"')
    finally:
        stop(process)
        screen.read_to_end()
        os.close(screen.main)
    requests = [
        json.loads(line) for line in screen.lines() if json.loads(line)["event"] == "request"
    ]
    assert [(r["method"], r["route"], r["status"]) for r in requests] == [("GET", "/tests", 200)]

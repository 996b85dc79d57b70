"""A BatchBuffer across os.fork() and at interpreter exit (cases 01 and 02 of issue 9).

Each scenario runs in a process of its own (`buffer_child.py`, forked by one python that
imported patientkit once: ZYGOTE): forking the pytest process, or making it exit, is not
something a test can do safely. The scenarios print JSON facts;
the sink writes "<pid> <event>" lines to a file, so deliveries can be counted per process.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from patientkit.core import lifecycle
from patientkit.core.spool import _recover

SRC = Path(__file__).resolve().parents[2] / "src"
CHILD = Path(__file__).with_name("buffer_child.py")

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


class Run:
    def __init__(self, proc: subprocess.CompletedProcess[str], seconds: float, folder: Path):
        self.returncode = proc.returncode
        self.stderr = proc.stderr
        self.facts = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
        self.seconds = seconds
        self.folder = folder

    def fact(self, **match: object) -> dict:
        found = [f for f in self.facts if all(f.get(k) == v for k, v in match.items())]
        assert len(found) == 1, (match, self.facts, self.stderr)
        return found[0]

    def delivered(self) -> list[tuple[int, str]]:
        path = self.folder / "delivered"
        if not path.exists():
            return []
        return [(int(p), e) for p, e in (x.split(" ", 1) for x in path.read_text().splitlines())]

    def warnings(self) -> list[str]:
        return [x for x in self.stderr.splitlines() if x.startswith("patientkit: warning:")]


# One python imports patientkit.core and forks a process for each scenario (`start`): the
# scenario runs as `python buffer_child.py SCENARIO DIR` would, in a process of its own
# whose stdout and stderr are its own (files) and whose exit, fork and exit handlers are
# its own, without an interpreter's start-up and imports each (~0.07 CPU-s a scenario).
# It tells the test each scenario's pid when started and exit code when ended (a pidfd
# each: no polling).
ZYGOTE = r"""
import gc, os, runpy, select, sys
import patientkit.core.buffer, patientkit.core.clock, patientkit.core.lifecycle
import patientkit.core.retry, patientkit.core.spool
import json, pathlib, signal, time  # the scenarios' own

script, running, pending, reading = sys.argv[1], {}, b"", True
while reading or running:
    ready, _, _ = select.select(([0] if reading else []) + list(running), [], [])
    for fd in ready:
        if fd != 0:
            n, pid = running.pop(fd)
            os.close(fd)
            code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
            os.write(1, f"ended {n} {code}\n".encode())
            continue
        data = os.read(0, 65536)
        reading, pending = bool(data), pending + data
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            n, scenario, folder, out, err = line.decode().split("\t")
            gc.freeze()  # out of the scenario's collections: its exit copies no page of ours
            pid = os.fork()
            if pid == 0:
                for each in running:
                    os.close(each)
                os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
                for fd, path in ((1, out), (2, err)):
                    os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), fd)
                sys.argv = [script, scenario, folder]
                scenario_globals = runpy.run_path(script, run_name="__main__")  # kept to exit
                sys.exit(0)  # the interpreter's own exit: the scenario's exit handlers run
            running[os.pidfd_open(pid)] = (n, pid)
            os.write(1, f"started {n} {pid}\n".encode())
"""


class Zygote:
    """The process that forks the scenarios (ZYGOTE), with a thread reading its news."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.errors = folder / "zygote.err"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", ZYGOTE, str(CHILD)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.errors.open("w"),
            env={**os.environ, "PYTHONPATH": str(SRC)},
        )
        self.count = 0
        self.pids: dict[int, int] = {}
        self.ended: dict[int, tuple[int, float]] = {}  # exit code, when
        self.news = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            what, n, value = line.split()
            with self.news:
                if what == b"started":
                    self.pids[int(n)] = int(value)
                else:
                    self.ended[int(n)] = (int(value), time.monotonic())
                self.news.notify_all()

    def start(self, scenario: str, folder: Path) -> int:
        with self.news:
            n, self.count = self.count, self.count + 1
        out, err = self.folder / f"{n}.out", self.folder / f"{n}.err"
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{n}\t{scenario}\t{folder}\t{out}\t{err}\n".encode())
        self.proc.stdin.flush()
        return n

    def wait(self, n: int, timeout: float) -> tuple[int, float] | None:
        """The scenario's exit code and when it ended; None if it has not within `timeout`."""
        with self.news:
            self.news.wait_for(lambda: n in self.ended, timeout)
            return self.ended.get(n)

    def stop(self) -> None:
        with self.news:
            hung = [pid for n, pid in self.pids.items() if n not in self.ended]
        for pid in hung:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(30)
        self.reader.join(10)
        assert self.errors.read_text() == "", self.errors.read_text()


ZYGOTES: list[Zygote] = []  # this module's, while its tests run (the `zygote` fixture)


@pytest.fixture(scope="module", autouse=True)
def zygote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Zygote]:
    ZYGOTES.append(Zygote(tmp_path_factory.mktemp("zygote")))
    yield ZYGOTES[-1]
    ZYGOTES.pop().stop()


class Started:
    """A scenario started (forked by the zygote); its Run's seconds are its own however
    late a test asks."""

    def __init__(self, scenario: str, folder: Path) -> None:
        self.folder = folder
        self.zygote = ZYGOTES[-1]
        self.started = time.monotonic()
        self.n = self.zygote.start(scenario, folder)

    def result(self, timeout: float = 60) -> Run:
        ended = self.zygote.wait(self.n, timeout)
        assert ended is not None, "the scenario hung"
        code, when = ended
        out = (self.zygote.folder / f"{self.n}.out").read_text()
        err = (self.zygote.folder / f"{self.n}.err").read_text()
        done = subprocess.CompletedProcess(["buffer_child.py"], code, out, err)
        return Run(done, when - self.started, self.folder)


def run(scenario: str, folder: Path, timeout: float = 60) -> Run:
    return Started(scenario, folder).result(timeout)


# the scenarios that wait out a close timeout at exit (half a second or more each)
WAITING = (
    "exit-failing",
    "exit-failing-spool",
    "exit-failing-dead-letter",
    "exit-failing-default-timeout",
    "exit-failing-stopped",
    "exit-failing-fake-clock",
    "exit-failing-dropped",
    "exit-hung-sink",
)


@pytest.fixture(scope="module")
def waiting(zygote: Zygote, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Started]:
    """WAITING, each in a folder of its own, all started together when the first of
    their tests runs: their waits overlap instead of adding up."""
    return {name: Started(name, tmp_path_factory.mktemp(name)) for name in WAITING}


# --- fork (case 01) -------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["timeout", "no-timeout", "with"])
def test_a_forked_child_delivers_its_own_events_and_close_returns_at_once(tmp_path, how):
    result = run(f"fork-child-{how}", tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.fact(child_exit=0)  # not "hung"
    child = result.fact(side="child")
    parent = result.fact(side="parent")
    assert child["left"] == 0
    assert child["seconds"] < 3.0  # promptly, not the 5 s deadline
    assert child["before"]["tracked"] == 0 and child["before"]["pending"] == 0  # empty queue
    assert (child["stats"]["tracked"], child["stats"]["delivered"]) == (100, 100)
    assert parent["left"] == 0 and parent["stats"]["delivered"] == 50
    delivered = result.delivered()
    by_event = Counter(event for _, event in delivered)
    assert len(by_event) == 150 and max(by_event.values()) == 1  # each exactly once
    assert {pid for pid, e in delivered if e.startswith("parent-")} == {parent["pid"]}
    assert {pid for pid, e in delivered if e.startswith("child-")} == {parent["child"]}
    assert result.warnings() == []


def test_the_parents_events_stay_the_parents(tmp_path):
    result = run("fork-parent-events", tmp_path)
    assert result.returncode == 0, result.stderr
    child = result.fact(side="child")
    assert child["left"] == 0 and child["seconds"] < 1.0  # nothing of the parent's handed back
    parent = result.fact(side="parent")
    assert parent["left"] == 0
    delivered = result.delivered()
    assert Counter(e for _, e in delivered) == Counter(f"parent-{i}" for i in range(50))
    assert {pid for pid, _ in delivered} == {parent["pid"]}


def test_a_forked_child_runs_without_the_spool_and_leaves_it_to_the_parent(tmp_path):
    result = run("fork-spool", tmp_path)
    assert result.returncode == 0, result.stderr
    child = result.fact(side="child")
    assert child["left"] == 0 and child["stats"]["delivered"] == 5
    assert child["parent_lock_held"] is True  # the child cannot take the parent's spool
    parent = result.fact(side="parent")
    # the parent reopened its spool while the child was alive: the child kept no lock,
    # wrote nothing to it, and the parent's 20 events are all there for the next buffer
    assert parent["left"] == 20 and parent["recovered"] == 20 and parent["again_left"] == 0
    delivered = Counter(e for _, e in result.delivered())
    expected = [f"parent-{i}" for i in range(20)] + [f"child-{i}" for i in range(5)]
    assert delivered == Counter(expected)
    assert _recover(tmp_path / "buffer.spool") == []


def test_a_child_forked_from_inside_the_sink_neither_hangs_nor_takes_the_batch(tmp_path):
    result = run("fork-in-sink", tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.fact(child_exit=0)
    child = result.fact(side="child")
    assert child["left"] == 0 and child["stats"]["tracked"] == 7
    assert child["stats"]["delivered"] == 7 and child["stats"]["dead_lettered"] == 0
    parent = result.fact(side="parent")
    assert parent["left"] == 0 and parent["stats"]["delivered"] == 30
    delivered = result.delivered()
    assert Counter(e for _, e in delivered) == Counter(
        [f"parent-{i}" for i in range(30)] + [f"child-{i}" for i in range(7)]
    )
    assert {pid for pid, e in delivered if e.startswith("parent-")} == {parent["pid"]}


# --- interpreter exit (case 02) ---------------------------------------------------------------


def test_a_buffer_left_open_is_delivered_at_exit(tmp_path):
    result = run("exit-noclose", tmp_path)
    assert result.returncode == 0
    assert [e for _, e in result.delivered()] == [str({"n": i}) for i in range(10)]
    assert result.stderr == ""


def test_a_buffer_left_open_with_a_spool_is_delivered_at_exit_and_the_spool_emptied(tmp_path):
    result = run("exit-noclose-spool", tmp_path)
    assert result.returncode == 0
    assert len(result.delivered()) == 10
    assert _recover(tmp_path / "buffer.spool") == []
    assert result.stderr == ""


def test_undeliverable_events_at_exit_without_a_destination_are_counted_on_stderr(waiting):
    result = waiting["exit-failing"].result()
    assert result.returncode == 0
    assert result.seconds < 20
    assert result.warnings() == [
        "patientkit: warning: 10 events were not delivered before exit and are lost: give "
        "the buffer a spool or a dead_letter callback, or close it"
    ]


def test_undeliverable_events_at_exit_stay_in_the_spool_for_the_next_run(waiting):
    result = waiting["exit-failing-spool"].result()
    assert result.returncode == 0
    spool = result.folder / "buffer.spool"
    assert result.warnings() == [
        f"patientkit: warning: 10 events were not delivered before exit; they are kept in "
        f"the spool {spool} and delivered by the next buffer on it"
    ]
    assert [json.loads(p) for _, p in _recover(spool)] == [{"n": i} for i in range(10)]
    again = run("exit-replay-spool", result.folder)
    assert again.fact(recovered=10) and again.fact(left=0)
    assert [e for _, e in again.delivered()] == [str({"n": i}) for i in range(10)]
    assert again.stderr == ""


def test_undeliverable_events_at_exit_go_to_the_dead_letter_callback(waiting):
    result = waiting["exit-failing-dead-letter"].result()
    assert result.returncode == 0
    letters = [json.loads(x) for x in (result.folder / "dead").read_text().splitlines()]
    assert letters == [[{"n": i}, lifecycle.EXIT_REASON] for i in range(10)]
    assert result.warnings() == [
        "patientkit: warning: 10 events were not delivered before exit; they went to the "
        "dead-letter destination"
    ]


def test_the_default_exit_timeout_bounds_the_wait(waiting):
    assert lifecycle.EXIT_CLOSE_TIMEOUT == 5.0  # as docs/buffer.md says
    result = waiting["exit-failing-default-timeout"].result()
    assert result.fact(script="ends")["default"] == 0.5
    assert result.seconds < 10
    assert len(result.warnings()) == 1 and "10 events" in result.warnings()[0]


@pytest.mark.parametrize(
    "scenario", ["exit-failing-stopped", "exit-failing-fake-clock", "exit-failing-dropped"]
)
def test_a_stopped_buffer_or_one_on_a_fake_clock_still_reports_at_exit(waiting, scenario):
    result = waiting[scenario].result()
    assert result.returncode == 0
    assert result.seconds < 20
    assert [w.split(" were ")[0] for w in result.warnings()] == ["patientkit: warning: 10 events"]


def test_a_hung_sink_does_not_hold_the_exit_past_the_close_timeout(waiting):
    result = waiting["exit-hung-sink"].result()
    assert result.returncode == 0
    assert result.seconds < 20
    # 4 events in flight in the hung sink, 6 waiting: all 10 are reported
    assert [w.split(" were ")[0] for w in result.warnings()] == ["patientkit: warning: 10 events"]

"""A BatchBuffer across os.fork() and at interpreter exit (cases 01 and 02 of issue 9).

Each scenario runs in a child python (`buffer_child.py`): forking the pytest process, or
making it exit, is not something a test can do safely. The scenarios print JSON facts;
the sink writes "<pid> <event>" lines to a file, so deliveries can be counted per process.
"""

from __future__ import annotations

import json
import os
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


def start(scenario: str, folder: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.Popen(
        [sys.executable, str(CHILD), scenario, str(folder)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def run(scenario: str, folder: Path, timeout: float = 60) -> Run:
    started = time.monotonic()
    proc = start(scenario, folder)
    out, err = proc.communicate(timeout=timeout)
    return Run(
        subprocess.CompletedProcess(proc.args, proc.returncode, out, err),
        time.monotonic() - started,
        folder,
    )


class Started:
    """A scenario started in the background; a thread reads its output and notes when it
    ended, so its Run's seconds are its own however late a test asks."""

    def __init__(self, scenario: str, folder: Path) -> None:
        self.folder = folder
        self.started = time.monotonic()
        self.proc = start(scenario, folder)
        self.waiter = threading.Thread(target=self._wait, daemon=True)
        self.waiter.start()

    def _wait(self) -> None:
        self.out, self.err = self.proc.communicate()
        self.seconds = time.monotonic() - self.started

    def result(self, timeout: float = 60) -> Run:
        self.waiter.join(timeout)
        assert not self.waiter.is_alive(), "the scenario hung"
        done = subprocess.CompletedProcess(self.proc.args, self.proc.returncode, self.out, self.err)
        return Run(done, self.seconds, self.folder)


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
def waiting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Started]]:
    """WAITING, each in a folder of its own, all started together when the first of
    their tests runs: their waits overlap instead of adding up."""
    started = {name: Started(name, tmp_path_factory.mktemp(name)) for name in WAITING}
    yield started
    for each in started.values():
        if each.proc.poll() is None:
            each.proc.kill()
        each.waiter.join(10)


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

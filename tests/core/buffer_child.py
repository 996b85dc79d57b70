"""Scenarios of a BatchBuffer across os.fork() and interpreter exit, run as a script in a
child python (never collected by pytest: forking the pytest process itself is unsafe).

argv: SCENARIO DIR. Each scenario writes what its sink delivered to DIR/delivered
("<pid> <event>" a line) and prints one JSON object per fact on stdout, which
test_buffer_fork_exit.py reads. A scenario that hangs is killed by the test's timeout.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

from patientkit.core import lifecycle
from patientkit.core.buffer import BatchBuffer
from patientkit.core.clock import FakeClock
from patientkit.core.retry import RetryableError
from patientkit.core.spool import SpoolLocked

DIR = Path(sys.argv[2])
DELIVERED = DIR / "delivered"


def say(**fact: object) -> None:
    sys.stdout.write(json.dumps(fact) + "\n")
    sys.stdout.flush()


def sink(batch: list[object]) -> None:
    with DELIVERED.open("a") as out:
        for event in batch:
            out.write(f"{os.getpid()} {event}\n")


def failing(batch: list[object]) -> None:
    raise RetryableError("the destination is down")


def wait_child(pid: int, seconds: float = 10.0) -> None:
    """Wait for the child; report whether it ended by itself (a hang is killed)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            say(child_exit=os.waitstatus_to_exitcode(status))
            return
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    say(child_exit="hung")


def child_closes(buf: BatchBuffer[object], how: str) -> None:
    """In the child: track 100 events and close the buffer `how`; report; _exit."""
    signal.alarm(20)
    started = time.monotonic()
    stats_before = buf.stats().as_dict()
    left: list[object] = []
    if how == "with":
        with buf:
            for i in range(100):
                buf.track(f"child-{i}")
    else:
        for i in range(100):
            buf.track(f"child-{i}")
        left = buf.close(timeout=5) if how == "timeout" else buf.close()
    say(
        side="child",
        left=len(left),
        seconds=time.monotonic() - started,
        before=stats_before,
        stats=buf.stats().as_dict(),
    )
    os._exit(0)


# --- fork ---------------------------------------------------------------------------------


def fork_child(how: str) -> None:
    buf: BatchBuffer[object] = BatchBuffer(sink, max_batch=10, flush_interval=0.2)
    for i in range(50):
        buf.track(f"parent-{i}")
    pid = os.fork()
    if pid == 0:
        child_closes(buf, how)
    wait_child(pid)
    left = buf.close(timeout=5)
    say(side="parent", left=len(left), stats=buf.stats().as_dict(), pid=os.getpid(), child=pid)


def fork_parent_events() -> None:
    """The parent's events wait (long interval); the child only closes its copy."""
    buf: BatchBuffer[object] = BatchBuffer(sink, max_batch=1000, flush_interval=60)
    for i in range(50):
        buf.track(f"parent-{i}")
    pid = os.fork()
    if pid == 0:
        signal.alarm(20)
        started = time.monotonic()
        left = buf.close(timeout=3)
        say(side="child", left=len(left), seconds=time.monotonic() - started)
        os._exit(0)
    wait_child(pid)
    left = buf.close(timeout=5)
    say(side="parent", left=len(left), pid=os.getpid())


def fork_spool() -> None:
    """A parent whose destination is down keeps its events in its spool; the child
    delivers its own without touching the spool, and keeps no lock on it."""
    spool = DIR / "buffer.spool"

    def sink_in_child_only(batch: list[object]) -> None:
        if os.getpid() == parent:
            raise RetryableError("the destination is down")
        sink(batch)

    parent = os.getpid()
    buf: BatchBuffer[object] = BatchBuffer(
        sink_in_child_only, max_batch=5, flush_interval=0.05, failure_limit=None, spool=spool
    )
    for i in range(20):
        buf.track(f"parent-{i}")
    buf.sync()
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        signal.alarm(20)
        os.close(ready_r)
        os.close(go_w)
        for i in range(5):
            buf.track(f"child-{i}")
        left = buf.close()
        try:
            BatchBuffer(sink, spool=spool).close()
            locked = False
        except SpoolLocked:
            locked = True
        say(side="child", left=len(left), stats=buf.stats().as_dict(), parent_lock_held=locked)
        os.write(ready_w, b"x")
        os.read(go_r, 1)  # stay alive until the parent has reopened the spool
        os._exit(0)
    os.close(ready_w)
    os.close(go_r)
    os.read(ready_r, 1)
    left = buf.close(timeout=0)
    again: BatchBuffer[object] = BatchBuffer(sink, max_batch=100, spool=spool)  # child alive
    recovered = again.stats().recovered
    again_left = again.close(timeout=5)
    os.write(go_w, b"x")
    wait_child(pid)
    say(side="parent", left=len(left), recovered=recovered, again_left=len(again_left))


def fork_in_sink() -> None:
    """The sink itself forks (a worker started from the flusher): the child goes on from
    inside the sink, uses the buffer, and must neither hang nor touch the parent's batch."""
    forked: list[int] = []

    def forking_sink(batch: list[object]) -> None:
        if not forked:
            pid = os.fork()
            if pid == 0:
                signal.alarm(20)
                for i in range(7):
                    buf.track(f"child-{i}")
                left = buf.close(timeout=5)
                say(side="child", left=len(left), stats=buf.stats().as_dict())
                os._exit(0)
            forked.append(pid)
        sink(batch)

    buf: BatchBuffer[object] = BatchBuffer(forking_sink, max_batch=10, flush_interval=0.05)
    for i in range(30):
        buf.track(f"parent-{i}")
    buf.flush(timeout=10)
    wait_child(forked[0])
    left = buf.close(timeout=5)
    say(side="parent", left=len(left), stats=buf.stats().as_dict(), pid=os.getpid())


# --- exit -----------------------------------------------------------------------------------


def exit_noclose(spool: bool) -> None:
    options: dict[str, object] = {"max_batch": 1000, "flush_interval": 60}
    if spool:
        options["spool"] = DIR / "buffer.spool"
    buf: BatchBuffer[object] = BatchBuffer(sink, **options)  # type: ignore[arg-type]
    for i in range(10):
        buf.track({"n": i})
    say(script="ends")


def exit_failing(where: str) -> None:
    """The destination is down: the buffer is open at exit, its events cannot go."""
    options: dict[str, object] = {"max_batch": 1000, "flush_interval": 60, "close_timeout": 0.5}
    if where == "spool":
        options["spool"] = DIR / "buffer.spool"
    elif where == "dead_letter":

        def letter(event: object, reason: str) -> None:
            with (DIR / "dead").open("a") as out:
                out.write(json.dumps([event, reason]) + "\n")

        options["dead_letter"] = letter
    elif where == "default_timeout":
        del options["close_timeout"]
        lifecycle.EXIT_CLOSE_TIMEOUT = 0.5  # the documented default is 5 s
    elif where in ("stopped", "dropped"):
        options["failure_limit"] = 1
        options["flush_interval"] = 0.01
    elif where == "fake_clock":
        options["clock"] = FakeClock()  # nobody advances it: exit must still end
    buf: BatchBuffer[object] = BatchBuffer(failing, **options)  # type: ignore[arg-type]
    for i in range(10):
        buf.track({"n": i})
    if where in ("stopped", "dropped"):
        while buf.stopped_reason is None:
            time.sleep(0.01)
    if where != "dropped":
        KEEP.append(buf)  # open at exit; "dropped" lets it go unclosed
    say(script="ends", default=lifecycle.EXIT_CLOSE_TIMEOUT)


KEEP: list[BatchBuffer[object]] = []


def exit_hung_sink() -> None:
    """The sink never answers: exit still ends after the close timeout."""

    def hang(batch: list[object]) -> None:
        time.sleep(3600)

    buf: BatchBuffer[object] = BatchBuffer(
        hang, max_batch=4, flush_interval=0.01, close_timeout=0.5
    )
    for i in range(10):
        buf.track(i)
    say(script="ends")


def exit_replay_spool() -> None:
    """The next run on the spool delivers what the last one could not."""
    buf: BatchBuffer[object] = BatchBuffer(sink, spool=DIR / "buffer.spool")
    say(recovered=buf.stats().recovered)
    say(left=len(buf.close(timeout=5)))


SCENARIOS = {
    "fork-child-timeout": lambda: fork_child("timeout"),
    "fork-child-no-timeout": lambda: fork_child("no-timeout"),
    "fork-child-with": lambda: fork_child("with"),
    "fork-parent-events": fork_parent_events,
    "fork-spool": fork_spool,
    "fork-in-sink": fork_in_sink,
    "exit-noclose": lambda: exit_noclose(spool=False),
    "exit-noclose-spool": lambda: exit_noclose(spool=True),
    "exit-failing": lambda: exit_failing("none"),
    "exit-failing-spool": lambda: exit_failing("spool"),
    "exit-failing-dead-letter": lambda: exit_failing("dead_letter"),
    "exit-failing-default-timeout": lambda: exit_failing("default_timeout"),
    "exit-failing-stopped": lambda: exit_failing("stopped"),
    "exit-failing-dropped": lambda: exit_failing("dropped"),
    "exit-failing-fake-clock": lambda: exit_failing("fake_clock"),
    "exit-hung-sink": exit_hung_sink,
    "exit-replay-spool": exit_replay_spool,
}

if __name__ == "__main__":
    SCENARIOS[sys.argv[1]]()

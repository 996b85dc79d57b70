"""A job asked to stop reports whole: once it has ended, a further Ctrl-C (one pressed
just as it ended) changes nothing until the command has written its summary and its
line. It used to land in the CLI with the raising handler back: a bare `error:
interrupted`, the summary lost (seen under load with two Ctrl-Cs 0.1 s apart)."""

import contextlib
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from patientkit.workflows.signals import caller_reports, stop_requests
from patientkit.workflows.submit import run_submit
from tests.cli.test_read_errors import records_lines
from tests.helpers import wait_until_reading


def _raise(signum, frame):
    raise KeyboardInterrupt


@pytest.fixture
def handlers():
    """As while the CLI's command runs: SIGINT and SIGTERM raise KeyboardInterrupt, and
    the caller reports after a stopped job. Their handlers are put back after the test."""
    kept = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise)
    caller_reports()
    yield
    caller_reports(False)
    for sig, handler in kept.items():
        signal.signal(sig, handler)


def reader_of(path: Path, other_than: int, timeout: float = 30) -> int:
    """The descriptor of this process, not `other_than`, that has `path` open."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for link in Path("/proc/self/fd").glob("*"):
            with contextlib.suppress(OSError):
                if int(link.name) != other_than and link.readlink() == path:
                    return int(link.name)
        time.sleep(0.01)
    raise AssertionError(f"{path} was not opened within {timeout} s")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_after_a_stopped_job_further_stops_change_nothing(handlers, sig):
    stops = []
    with stop_requests(lambda: stops.append(1)):
        os.kill(os.getpid(), sig)
    assert stops == [1]
    os.kill(os.getpid(), signal.SIGINT)  # raised KeyboardInterrupt here before
    os.kill(os.getpid(), signal.SIGTERM)  # likewise


def test_a_job_not_stopped_gives_the_handlers_back(handlers):
    with stop_requests(lambda: None):
        pass
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_program_calling_the_engines_gets_its_handlers_back_after_a_stop(handlers):
    """Absorbing is for a caller that reports (the CLI): a program of its own that
    calls the engines keeps its Ctrl-C after a stopped job."""
    caller_reports(False)
    with stop_requests(lambda: None):
        os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_an_interrupted_submit_is_not_cut_short_by_a_ctrl_c_after_it(handlers, tmp_path):
    """A submit reading a named pipe (held open, 5 records in it) gets a Ctrl-C while it
    waits for more; it returns interrupted with the 5 created. A Ctrl-C after that is
    absorbed: the caller writes its report."""
    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)
    writer = os.open(fifo, os.O_RDWR)
    os.write(writer, records_lines(5))

    def press_when_waiting() -> None:
        wait_until_reading(os.getpid(), reader_of(fifo, other_than=writer))
        # to the main thread, as a terminal's Ctrl-C: a signal a thread sends its own
        # process may be taken by that thread, and the main thread's read goes on
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    presser = threading.Thread(target=press_when_waiting)
    presser.start()
    try:
        result = run_submit([str(fifo)], db=tmp_path / "s.db")
    finally:
        presser.join()
        os.close(writer)
    assert result.interrupted
    assert (result.tally.read, result.tally.created) == (5, 5)
    os.kill(os.getpid(), signal.SIGINT)  # raised KeyboardInterrupt here before

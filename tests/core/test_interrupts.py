"""The interrupt machinery (core/interrupts.py; SPEC.md: one or two Ctrl-C end any
command within about two seconds, exit 130, one line, no traceback): an interrupt that
lands in a finalizer is never lost nor printed, a shut-down sink ends delivery at once."""

import gc
import io
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from patientkit.client.readings import ReadingsClient
from patientkit.core import interrupts
from patientkit.core.buffer import BatchBuffer
from patientkit.core.delivery import BufferStopped
from patientkit.core.sinks import SinkClosed, settle
from patientkit.core.workers import WorkerPool
from patientkit.workflows.replay import SINK_STOPPED, ApiSink
from patientkit.workflows.signals import stop_requests


class RaisesWhenCollected:
    """What a signal handler raising KeyboardInterrupt inside a `__del__` amounts to."""

    def __del__(self) -> None:
        raise KeyboardInterrupt


def swallow_an_interrupt() -> None:
    RaisesWhenCollected()  # collected at once: CPython swallows what __del__ raised
    gc.collect()


def slow(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def test_an_interrupt_swallowed_by_a_finalizer_is_noted_not_printed(capsys):
    with interrupts.catching_lost():
        swallow_an_interrupt()
        assert capsys.readouterr().err == ""  # no "Exception ignored …" traceback
        with pytest.raises(KeyboardInterrupt):
            interrupts.checkpoint()
        interrupts.checkpoint()  # raised once: it is delivered, not repeated


def test_other_unraisable_exceptions_still_reach_the_hook_before(monkeypatch):
    class Fails:
        def __del__(self) -> None:
            raise ValueError("from a finalizer")

    seen: list[BaseException | None] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(u.exc_value))
    with interrupts.catching_lost():
        Fails()
        gc.collect()
    assert [str(e) for e in seen] == ["from a finalizer"]
    assert not interrupts.lost()


def test_the_worker_pool_raises_an_interrupt_a_finalizer_swallowed():
    """The lost first Ctrl-C of `export …` (it landed in a __del__): before, the job ran
    to its end and exited 0; now the wait for the workers raises it within CHECK_EVERY."""
    with interrupts.catching_lost(), WorkerPool(2, on_message=None) as pool:
        started = time.monotonic()
        swallow_an_interrupt()
        with pytest.raises(KeyboardInterrupt):
            pool.map(slow, [3.0, 3.0])
        assert time.monotonic() - started < 1.5


def test_a_closed_sink_stops_the_buffer_at_once_and_hands_every_event_back():
    calls = []

    def sink(batch: list[int]) -> None:
        calls.append(list(batch))
        raise SinkClosed("interrupted")

    assert settle([1, 2], raised=SinkClosed("why")).closed == "why"
    buffer: BatchBuffer[int] = BatchBuffer(sink, max_batch=10, flush_interval=0.01)
    buffer.track_many(range(5))
    started = time.monotonic()
    with pytest.raises(BufferStopped) as stopped:
        buffer.close(timeout=5.0)
    assert time.monotonic() - started < 1.0  # never retried as a transient failure
    assert stopped.value.reason == "interrupted"
    assert calls == [[0, 1, 2, 3, 4]]
    assert buffer.drain_pending() == [0, 1, 2, 3, 4]
    assert buffer.stats().delivered == 0


@pytest.mark.parametrize("how", ["stopped", "shut down"])
def test_a_stopped_or_shut_down_api_sink_says_closed_never_a_retryable_error(how):
    sink = ApiSink(ReadingsClient("http://127.0.0.1:9"), batch_size=10)
    if how == "stopped":
        sink.stop()
    else:
        sink.close(wait=False)  # a second Ctrl-C: "cannot schedule new futures"
    event = (("dev-1", 1, "2024-01-01T00:00:00Z", 0), "r.ndjson", 1)
    with pytest.raises(SinkClosed) as closed:
        sink([event])  # type: ignore[list-item]
    assert closed.value.reason == SINK_STOPPED
    sink.close()


def asleep(tid: int) -> bool:
    """Thread `tid` of this process is blocked (Linux /proc: state S), not running."""
    stat = Path(f"/proc/self/task/{tid}/stat").read_text()
    return stat[stat.rindex(")") + 2] == "S"


def test_a_stop_whose_handler_waits_for_the_main_thread_ends_a_read_of_an_idle_pipe():
    """Python runs a signal's handler in the main thread, between two bytecodes. A Ctrl-C
    that came while the main thread was not in its read (landing in another thread, or
    while the main thread waited for the GIL on its way into the read) left its handler
    waiting for the read to return: on a pipe kept open and idle, never (a replay seen
    hanging past 60 s after its Ctrl-C, under load). Here the signal lands in another
    thread while the main thread is blocked reading: the read ends with StopReading
    within a slice (0.1 s), not when input comes 10 s later."""
    read_end, write_end = os.pipe()
    stream = io.BufferedReader(interrupts.Waiting(io.FileIO(read_end, "rb")), 16)
    main = threading.get_native_id()
    sent: list[float] = []
    done = threading.Event()

    def stop_from_another_thread() -> None:
        asleep_since = time.monotonic()
        while time.monotonic() - asleep_since < 0.3:  # blocked for 0.3 s: in its read
            if not asleep(main):
                asleep_since = time.monotonic()
            time.sleep(0.01)
        signal.pthread_kill(threading.get_ident(), signal.SIGINT)  # handled in this thread
        sent.append(time.monotonic())
        done.wait(10)
        os.write(write_end, b"late\n")  # ends a read that missed the stop

    other = threading.Thread(target=stop_from_another_thread)
    try:
        with stop_requests(lambda: None):
            other.start()
            with pytest.raises(interrupts.StopReading):
                stream.read1(16)
            ended = time.monotonic()
    finally:
        done.set()
        other.join()
        stream.close()
        os.close(write_end)
    assert ended - sent[0] < 2.0  # SPEC.md: a Ctrl-C ends any command within about 2 s

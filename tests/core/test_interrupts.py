"""The interrupt machinery (core/interrupts.py; SPEC.md: one or two Ctrl-C end any
command within about two seconds, exit 130, one line, no traceback): an interrupt that
lands in a finalizer is never lost nor printed, a shut-down sink ends delivery at once."""

import gc
import sys
import time

import pytest

from patientkit.client.readings import ReadingsClient
from patientkit.core import interrupts
from patientkit.core.buffer import BatchBuffer
from patientkit.core.delivery import BufferStopped
from patientkit.core.sinks import SinkClosed, settle
from patientkit.core.workers import WorkerPool
from patientkit.workflows.replay import SINK_STOPPED, ApiSink


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

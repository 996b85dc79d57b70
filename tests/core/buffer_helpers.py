"""Shared by the buffer and spool tests: a scripted sink, a dead-letter list, jitter at
its bounds, and waits on a FakeClock. The `make` fixture lives in tests/core/conftest.py."""

from __future__ import annotations

import random
import threading
from pathlib import Path

from patientkit.core.clock import FakeClock
from patientkit.core.sinks import SinkResult

SRC = Path(__file__).resolve().parents[2] / "src"
WAIT = 10.0  # real-time bound for waits that must succeed at once


class MaxRandom(random.Random):
    """Jitter always at its ceiling, so delays are exact."""

    def uniform(self, a: float, b: float) -> float:
        return b


class MinRandom(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return a


class Sink:
    """Records each batch; answers from a script (then accepts everything).

    An answer is None, a SinkResult, an exception to raise, or a callable(batch) -> answer.
    With `gate`, each call waits for the gate (real time, bounded) before answering.
    """

    def __init__(self, *answers, gate: threading.Event | None = None):
        self.answers = list(answers)
        self.gate = gate
        self.calls: list[list] = []
        self.delivered: list = []
        self.cond = threading.Condition()

    def __call__(self, batch):
        with self.cond:
            self.calls.append(list(batch))
            answer = self.answers.pop(0) if self.answers else None
            self.cond.notify_all()
        if self.gate is not None:
            assert self.gate.wait(WAIT), "test never opened the sink's gate"
        if callable(answer) and not isinstance(answer, BaseException):
            answer = answer(batch)
        if isinstance(answer, BaseException):
            raise answer
        skipped = set()
        if isinstance(answer, SinkResult):
            skipped = set(answer.rejected) | set(answer.retry)
        with self.cond:
            self.delivered.extend(e for i, e in enumerate(batch) if i not in skipped)
        return answer

    def wait_calls(self, count: int) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.calls) >= count, WAIT), (
                f"expected {count} sink calls, got {len(self.calls)}"
            )


class Letters:
    def __init__(self):
        self.items: list[tuple[object, str]] = []

    def __call__(self, event, reason):
        self.items.append((event, reason))


def advance_to_next_deadline(clock: FakeClock, waiters: int = 1) -> float:
    clock.wait_for_waiters(waiters)
    deadline = clock.next_deadline()
    assert deadline is not None
    step = deadline - clock.now()
    clock.advance(step)
    return step


def in_thread(target, *args):
    """Run target in a thread; return (thread, box) where box gets 'result' or 'error'."""
    box: dict = {}

    def run():
        try:
            box["result"] = target(*args)
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box

"""Fixtures of the core tests: `make` builds buffers on a FakeClock and closes them;
`watchdog` turns a hang into a failure (the buffer and spool modules use it)."""

from __future__ import annotations

import contextlib
import faulthandler
import random

import pytest

from patientkit.core.buffer import BatchBuffer
from patientkit.core.clock import FakeClock
from patientkit.errors import PatientkitError


@pytest.fixture
def watchdog():
    faulthandler.dump_traceback_later(120, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture
def make():
    """Build buffers on a FakeClock; close what is left at the end of the test."""
    made: list[BatchBuffer] = []

    def build(sink, **options):
        options.setdefault("clock", FakeClock())
        options.setdefault("max_batch", 3)
        options.setdefault("flush_interval", 10.0)
        options.setdefault("max_pending", 100)
        options.setdefault("rng", random.Random(0))
        buf = BatchBuffer(sink, **options)
        made.append(buf)
        return buf, options["clock"]

    yield build
    for buf in made:
        with contextlib.suppress(PatientkitError):
            buf.close(timeout=0)

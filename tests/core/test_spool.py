"""Tests of patientkit.core.spool: the journal file and the writer a buffer keeps it with.

A buffer with a spool keeps every tracked, unsettled event for the next buffer on the
same path, survives SIGKILL, refuses a second live owner, and compacts as it delivers.
Driven by a FakeClock, like the buffer's tests (tests/core/buffer_helpers.py).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest

from patientkit.core import spool as spool_module
from patientkit.core.buffer import BatchBuffer
from patientkit.core.clock import FakeClock
from patientkit.core.retry import RetryableError
from patientkit.core.spool import _RECORD, MAGIC, Journal, SpoolLocked, SpoolWriter, _recover
from patientkit.errors import PatientkitError, UsageError
from tests.core.buffer_helpers import SRC, WAIT, Sink

pytestmark = pytest.mark.usefixtures("watchdog")


# --- the writer, without a buffer --------------------------------------------------------


def test_the_writer_journals_what_it_can_encode_and_names_what_it_cannot(tmp_path):
    path = tmp_path / "buffer.spool"
    writer, recovered = SpoolWriter.open(path, json_bytes, json.loads)
    assert recovered == [] and writer.path == path and not writer.closed
    with writer.lock:
        unencodable = writer.append(0, [{"n": 0}, {1, 2}, {"n": 2}])
        writer.sync()
    assert unencodable == {
        1: "cannot be written to the spool: TypeError: Object of type set is not JSON serializable"
    }
    assert _recover(path) == [(0, b'{"n":0}'), (2, b'{"n":2}')]
    assert writer.live == 2
    writer.settle([0], live=lambda: [])
    assert _recover(path) == [(2, b'{"n":2}')]
    writer.close()
    again, recovered = SpoolWriter.open(path, json_bytes, json.loads)
    assert recovered == [(2, {"n": 2})] and again.live == 1
    again.settle([2], live=lambda: [])
    assert path.read_bytes() == MAGIC  # nothing live: truncated
    again.close()
    again.close()  # once


def test_the_writer_refuses_a_payload_it_cannot_decode(tmp_path):
    path = tmp_path / "buffer.spool"
    writer, _ = SpoolWriter.open(path, json_bytes, json.loads)
    with writer.lock:
        writer.append(0, ["a"])
    writer.close()

    def refuse(payload: bytes) -> object:
        raise ValueError("no")

    with pytest.raises(PatientkitError, match=r"cannot decode a recovered event \(ValueError\)"):
        SpoolWriter.open(path, json_bytes, refuse)
    SpoolWriter.open(path, json_bytes, json.loads)[0].close()  # the lock was let go


def json_bytes(event: object) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode()


# --- a buffer with a spool (moved from test_buffer.py) -----------------------------------


def test_spool_keeps_undelivered_events_for_the_next_buffer(make, tmp_path):
    spool = tmp_path / "buffer.spool"
    down = Sink(*[RetryableError("down")] * 100)
    first, _clock = make(down, max_batch=2, failure_limit=None, spool=spool)
    for i in range(5):
        first.track({"n": i})
    assert first.close(timeout=0) == [{"n": i} for i in range(5)]

    up = Sink()
    second, _clock = make(up, max_batch=2, spool=spool)
    assert second.stats().recovered == 5
    second.track({"n": 5})
    assert second.close() == []
    assert up.delivered == [{"n": i} for i in range(6)]  # recovered ones first
    assert spool.read_bytes() == MAGIC

    third, _clock = make(Sink(), spool=spool)
    assert third.stats().recovered == 0


def test_spool_journals_tracked_events_within_the_sync_interval(make, tmp_path):
    spool = tmp_path / "buffer.spool"
    sink = Sink()
    buf, clock = make(sink, max_batch=100, flush_interval=10.0, spool=spool)
    clock.wait_for_waiters(2)  # the flusher (until t=10) and the spool thread (t=0.2)
    buf.track("a")
    buf.track("b")  # wakes nobody: below max_batch
    assert _recover(spool) == []  # only in memory so far
    clock.advance(0.2)
    clock.wait_for_waiters(2)  # the spool thread synced and waits again
    assert _recover(spool) == [(0, b'"a"'), (1, b'"b"')]
    assert sink.calls == []
    assert buf.close() == [] and sink.delivered == ["a", "b"]


def test_spool_ignores_a_torn_last_record(make, tmp_path, caplog):
    spool = tmp_path / "buffer.spool"
    down = Sink(*[RetryableError("down")] * 100)
    first, _clock = make(down, max_batch=2, failure_limit=None, spool=spool)
    for i in range(3):
        first.track(i)
    first.close(timeout=0)
    with spool.open("ab") as out:
        out.write(_RECORD.pack(b"T", 100, 0) + b"x" * 10)  # killed mid-write
    with caplog.at_level(logging.WARNING, logger="patientkit.core.spool"):
        up = Sink()
        second, _clock = make(up, spool=spool)
    assert "torn record" in caplog.text
    assert second.close() == []
    assert up.delivered == [0, 1, 2]


def test_spool_refuses_a_file_that_is_not_a_spool(make, tmp_path):
    spool = tmp_path / "notes.txt"
    spool.write_text("hello, this is not a spool\n")
    with pytest.raises(PatientkitError, match="not a patientkit spool"):
        make(Sink(), spool=spool)


def test_only_one_live_buffer_per_spool(make, tmp_path):
    spool = tmp_path / "buffer.spool"
    first, _clock = make(Sink(), spool=spool)
    with pytest.raises(SpoolLocked, match="in use by another live buffer") as locked:
        make(Sink(), spool=spool)
    assert isinstance(locked.value, UsageError)
    first.close()
    second, _clock = make(Sink(), spool=spool)
    assert second.close() == []


def test_spool_is_compacted_as_deliveries_complete(make, tmp_path, monkeypatch):
    monkeypatch.setattr(spool_module, "_COMPACT_BYTES", 64)
    rewrites, truncates = [], []
    real_rewrite, real_truncate = Journal.rewrite, Journal.truncate

    def spy_rewrite(journal, items):
        rewrites.append([seq for seq, _ in items])
        real_rewrite(journal, items)

    def spy_truncate(journal):
        truncates.append(True)
        real_truncate(journal)

    monkeypatch.setattr(Journal, "rewrite", spy_rewrite)
    monkeypatch.setattr(Journal, "truncate", spy_truncate)
    spool = tmp_path / "buffer.spool"
    gate = threading.Event()
    sink = Sink(gate=gate)
    buf, _clock = make(sink, max_batch=1, max_pending=20, spool=spool)
    for i in range(10):
        buf.track(i)
    sink.wait_calls(1)
    buf.sync()  # all ten journaled, one in flight
    gate.set()
    assert buf.close() == []
    assert sink.delivered == list(range(10))
    # After six of ten settled, settled records dominate: rewritten with the four left.
    assert rewrites and rewrites[0] == [6, 7, 8, 9]
    assert truncates and spool.read_bytes() == MAGIC


def _read_lines(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line.strip())


def test_spool_survives_sigkill_and_redelivers_only_the_batch_in_flight(tmp_path):
    spool, log = tmp_path / "buffer.spool", tmp_path / "sink.log"
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    child = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("spool_child.py")), str(spool), str(log)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_read_lines, args=(child.stdout, lines), daemon=True).start()
    seen = set()
    try:
        while seen != {"synced 80", "tracked 90", "inflight"}:
            seen.add(lines.get(timeout=60))
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(WAIT)
    assert child.returncode == -signal.SIGKILL

    begun: list[list[int]] = []  # batches the first run started, and whether they ended
    ended: list[bool] = []
    for line in log.read_text().splitlines():
        if line.startswith("begin "):
            begun.append([int(n) for n in line.split()[1:]])
            ended.append(False)
        elif line == "end":
            ended[-1] = True
    in_flight = [batch for batch, done in zip(begun, ended, strict=True) if not done]
    assert len(in_flight) == 1 and in_flight[0][0] == 50
    first_run = [n for batch in begun for n in batch]
    assert sorted(n for batch, done in zip(begun, ended, strict=True) if done for n in batch) == (
        list(range(50))
    )

    sink = Sink()
    buf = BatchBuffer(sink, max_batch=10, spool=spool, clock=FakeClock())
    assert buf.close() == []
    second_run = sink.delivered
    assert second_run == sorted(second_run)  # recovered in tracking order
    assert set(range(80)) <= set(first_run) | set(second_run)  # all tracked before sync()
    assert set(second_run) <= set(range(90))
    counts = Counter(first_run + second_run)
    assert {n for n, c in counts.items() if c > 1} == set(in_flight[0])
    assert max(counts.values()) == 2


def test_json_is_the_default_spool_encoding(make, tmp_path):
    spool = tmp_path / "buffer.spool"
    down = Sink(*[RetryableError("down")] * 100)
    first, _clock = make(down, max_batch=5, failure_limit=None, spool=spool)
    first.track({"id": "d1", "count": 5})
    first.close(timeout=0)
    body = spool.read_bytes()
    assert json.dumps({"id": "d1", "count": 5}, separators=(",", ":")).encode() in body

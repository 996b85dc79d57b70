"""Poison events (issue 9, kind 3): an event the sink can never take is dead-lettered alone
with its reason, never retried to the failure limit, never taking its batch-mates down.

The buffer side runs on a FakeClock that is never advanced: a poison event must be
isolated without any backoff. The sinks of replay and submit run against a real store (in
its own process for replay), and the API sink against a real `patientkit serve`.
"""

from __future__ import annotations

import contextlib
import random
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from patientkit.core.buffer import BatchBuffer
from patientkit.core.clock import FakeClock
from patientkit.core.delivery import BufferStopped
from patientkit.core.sinks import PoisonError, RetryableError, SinkResult
from patientkit.core.spool import _recover
from patientkit.core.storage import SQLiteStore
from patientkit.errors import PatientkitError
from patientkit.inputs import Item
from patientkit.rejects import Rejects
from patientkit.workflows.store_process import StoreProcess, StoreRefused
from patientkit.workflows.submit import Report, StoreTarget, SubmitTally
from tests.helpers import examples

WAIT = 10.0


class PoisonSink:
    """Accepts a batch unless it holds a poison event; then raises PoisonError (or, with
    `by_index`, names the poison ones in a SinkResult, as a sink that knows can)."""

    def __init__(self, poison: set, by_index: bool = False) -> None:
        self.poison, self.by_index = poison, by_index
        self.calls: list[list] = []
        self.delivered: list = []

    def __call__(self, batch: list) -> SinkResult | None:
        self.calls.append(list(batch))
        bad = {i: f"cannot take {e!r}" for i, e in enumerate(batch) if e in self.poison}
        if bad and not self.by_index:
            raise PoisonError("the store refuses one of these")
        self.delivered.extend(e for i, e in enumerate(batch) if i not in bad)
        return SinkResult(rejected=bad) if bad else None


@pytest.fixture
def buffers():
    made: list[BatchBuffer] = []
    yield made
    for buf in made:
        with contextlib.suppress(PatientkitError):
            buf.close(timeout=0)


def make(buffers: list, sink, **options) -> BatchBuffer:
    options.setdefault("clock", FakeClock())  # never advanced: no backoff may be needed
    options.setdefault("flush_interval", 10.0)
    options.setdefault("failure_limit", 1)  # a single failed delivery would stop it
    buf = BatchBuffer(sink, **options)
    buffers.append(buf)
    return buf


def test_a_poison_error_is_bisected_down_to_the_poison_event(buffers):
    letters: list = []
    sink = PoisonSink({"e5"})
    buf = make(buffers, sink, max_batch=8, dead_letter=lambda e, r: letters.append((e, r)))
    events = [f"e{i}" for i in range(8)]
    buf.track_many(events)
    result = buf.flush(timeout=WAIT)
    assert result.complete and (result.delivered, result.dead_lettered) == (7, 1)
    assert (
        sink.calls
        == [
            events,
            events[:4],  # clean half: delivered at once
            events[4:],
            ["e4", "e5"],
            ["e4"],
            ["e5"],  # alone: dead-lettered, never retried
            ["e6", "e7"],
        ]
    )
    assert sink.delivered == [e for e in events if e != "e5"]  # tracking order kept
    assert letters == [("e5", "the store refuses one of these")]
    stats = buf.stats()
    assert (stats.consecutive_failures, stats.pending, buf.stopped_reason) == (0, 0, None)
    assert buf.close() == []


def test_a_single_poison_event_is_dead_lettered_on_the_first_answer(buffers):
    sink = PoisonSink({"x"})
    buf = make(buffers, sink, max_batch=1)
    buf.track("x")
    buf.track("y")
    assert buf.flush(timeout=WAIT).complete
    assert sink.calls == [["x"], ["y"]]
    assert buf.drain_dead_letters() == [("x", "the store refuses one of these")]


def test_poison_does_not_count_towards_the_failure_limit_but_real_failures_still_do(buffers):
    answers = [PoisonError("bad"), None, PoisonError("bad"), RetryableError("down")]

    def sink(batch):
        answer = answers.pop(0) if answers else None
        if isinstance(answer, Exception):
            raise answer

    buf = make(buffers, sink, max_batch=4, failure_limit=1)
    buf.track_many(["a", "b", "c", "d"])
    with pytest.raises(BufferStopped, match="1 consecutive failed deliveries"):
        buf.flush(timeout=WAIT)
    # [a b c d] poison -> [a b] ok -> [c d] poison -> [c] down: the failure limit is 1
    assert buf.stats().delivered == 2
    assert buf.drain_pending() == ["c", "d"]


def test_events_the_spool_cannot_encode_are_dead_lettered_alone(buffers, tmp_path):
    spool = tmp_path / "buffer.spool"
    letters: list = []
    called = threading.Event()
    calls: list = []

    def down(batch):
        calls.append(list(batch))
        called.set()
        raise RetryableError("down")

    buf = make(
        buffers,
        down,
        max_batch=4,
        spool=spool,
        failure_limit=None,
        dead_letter=lambda e, r: letters.append((e, r)),
    )
    huge = 10**5000  # json refuses to write an int this long
    events = [{"n": 0}, {"n": {1}}, {"n": 2}, {"n": huge}, {"n": 4}, {"bad": object()}]
    buf.track_many(events)
    assert called.wait(WAIT)
    # the first batch is cut: the two events it could not journal are dead-lettered at
    # once, without a sink call; the other two go to the sink (which is down)
    assert calls == [[{"n": 0}, {"n": 2}]]
    assert [e for e, _ in letters] == [{"n": {1}}, {"n": huge}]
    assert letters[0][1] == (
        "cannot be written to the spool: TypeError: Object of type set is not JSON serializable"
    )
    assert letters[1][1].startswith("cannot be written to the spool: ValueError: ")
    left = buf.close(timeout=0)
    assert left[:3] == [{"n": 0}, {"n": 2}, {"n": 4}] and len(left) == 4  # and the object
    stats = buf.stats()
    assert (stats.tracked, stats.dead_lettered, stats.handed_back) == (6, 2, 4)
    # the spool holds every event it could encode, and nothing else: the next run
    # delivers those three
    assert [p for _, p in _recover(spool)] == [b'{"n":0}', b'{"n":2}', b'{"n":4}']
    delivered: list = []
    again = make(buffers, delivered.extend, spool=spool)
    assert again.close(timeout=WAIT) == []
    assert delivered == [{"n": 0}, {"n": 2}, {"n": 4}]


@settings(
    max_examples=examples(120),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    size=st.integers(1, 60),
    max_batch=st.integers(1, 16),
    data=st.data(),
    by_index=st.booleans(),
)
def test_poison_events_are_isolated_and_the_rest_delivered(size, max_batch, data, by_index):
    events = list(range(size))
    poison = set(data.draw(st.sets(st.sampled_from(events), max_size=size)))
    sink = PoisonSink(poison, by_index=by_index)
    letters: list = []
    buf = BatchBuffer(
        sink,
        max_batch=max_batch,
        max_pending=64,
        flush_interval=10.0,
        clock=FakeClock(),  # never advanced: a retry would hang flush, and fail below
        failure_limit=1,  # one failed delivery would stop the buffer
        dead_letter=lambda e, r: letters.append((e, r)),
        rng=random.Random(0),
    )
    try:
        buf.track_many(events, timeout=WAIT)
        result = buf.flush(timeout=WAIT)
        assert result.complete
        assert buf.close() == []
    finally:
        with contextlib.suppress(PatientkitError):
            buf.close(timeout=0)
    assert sink.delivered == [e for e in events if e not in poison]  # all, once, in order
    assert sorted(e for e, _ in letters) == sorted(poison)  # each poison one, once
    expected_reason = (
        (lambda e: f"cannot take {e!r}")
        if by_index
        else (lambda e: "the store refuses one of these")
    )
    assert all(reason == expected_reason(e) for e, reason in letters)
    stats = buf.stats()
    assert (stats.delivered, stats.dead_lettered, stats.handed_back) == (
        size - len(poison),
        len(poison),
        0,
    )
    assert stats.consecutive_failures == 0 and buf.stopped_reason is None
    # bisection is bounded: each poison event costs at most ~2 log2(batch) extra calls
    assert (
        len(sink.calls) <= -(-size // max_batch) + 2 * len(poison) * max(1, max_batch).bit_length()
    )


# --- the sinks of replay and submit ------------------------------------------------------------


def reading(device: str, count: int, second: int) -> tuple:
    timestamp = f"2024-01-01T00:00:{second:02d}+00:00"
    return (device, count, timestamp, 1_704_067_200_000_000 + second * 1_000_000)


def test_the_store_process_refuses_a_value_it_can_never_hold(tmp_path):
    with StoreProcess(tmp_path / "s.db") as writer:
        with pytest.raises(StoreRefused, match="UnicodeEncodeError: surrogates not allowed"):
            writer.call("add_readings", [reading("dev-\ud800", 1, 0)])
        assert writer.call("add_readings", [reading("dev-1", 1, 0)]) == 1  # still serving


def test_replay_store_sink_dead_letters_the_refused_reading_and_stores_the_rest(tmp_path):
    from patientkit.workflows.replay import StoreSink

    good = "0a1b2c3d-0000-4000-8000-000000000001"
    events = [(reading(good, 1, s), "in.ndjson", s + 1) for s in range(10)]
    events[6] = (reading("dev-\ud800", 1, 6), "in.ndjson", 7)  # the store cannot bind it
    letters: list = []
    with StoreProcess(tmp_path / "s.db") as writer:
        sink = StoreSink(writer)
        buf = BatchBuffer(
            sink, max_batch=10, failure_limit=1, dead_letter=lambda e, r: letters.append((e, r))
        )
        buf.track_many(events)
        assert buf.close(timeout=WAIT) == []
    assert [(e[1], e[2]) for e, _ in letters] == [("in.ndjson", 7)]
    assert letters[0][1] == "refused by the store: UnicodeEncodeError: surrogates not allowed"
    assert buf.stats().delivered == 9 and buf.stats().consecutive_failures == 0
    with SQLiteStore(tmp_path / "s.db") as store:
        assert store.reading_totals() == (1, 9, 9)


def test_submit_store_target_rejects_the_refused_record_and_stores_the_rest(tmp_path):
    records = [
        {
            "test_id": f"t-{i}",
            "clinic_id": "c-1",
            "patient_id": "p-\ud800" if i == 3 else f"p-{i}",
            "test_type": "blood",
            "result": "ok",
        }
        for i in range(8)
    ]
    problems: list = []
    tally = SubmitTally()
    with Rejects(None) as rejects:
        report = Report(rejects, lambda source, line, reason: problems.append((line, reason)))
        target = StoreTarget(tmp_path / "r.db", tally, report, batch=8)
        for line, record in enumerate(records, start=1):
            target.buffer.track(Item("in.ndjson", line, record))
        target.finish()
    assert problems == [(4, "refused by the store: UnicodeEncodeError: surrogates not allowed")]
    assert (tally.created, tally.rejected, tally.failed, tally.read) == (7, 1, 0, 8)
    with SQLiteStore(tmp_path / "r.db") as store:
        assert sorted(r["test_id"] for r in store.records_for_clinic("c-1")) == [
            f"t-{i}" for i in range(8) if i != 3
        ]


def test_replay_api_sink_rejects_a_reading_it_cannot_encode_and_sends_the_rest(serve, tmp_path):
    from patientkit.client.readings import ReadingsClient
    from patientkit.workflows.replay import ApiSink

    server = serve("--db", str(tmp_path / "api.db"))
    device = "0a1b2c3d-0000-4000-8000-000000000002"
    events = [(reading(device, 2, s), "in.ndjson", s + 1) for s in range(6)]
    r = events[2][0]
    events[2] = ((r[0], r[1], object(), r[3]), "in.ndjson", 3)  # no JSON for it
    letters: list = []
    client = ReadingsClient(server.url)
    sink = ApiSink(client, batch_size=6, concurrency=1)
    try:
        buf = BatchBuffer(
            sink, max_batch=6, failure_limit=1, dead_letter=lambda e, r: letters.append((e, r))
        )
        buf.track_many(events)
        assert buf.close(timeout=WAIT) == []
        assert [(e[2], reason) for e, reason in letters] == [
            (3, "cannot be encoded as JSON (TypeError)")
        ]
        assert client.cumulative_count(device) == 10  # the five others, 2 each
    finally:
        sink.close()
        client.close()


def test_dead_lettering_runs_in_the_flusher_only(buffers):
    seen: list = []
    sink = PoisonSink({1})
    buf = make(
        buffers,
        sink,
        max_batch=4,
        dead_letter=lambda e, r: seen.append(threading.current_thread().name),
    )
    buf.track_many([0, 1, 2, 3])
    assert buf.flush(timeout=WAIT).complete
    assert seen == ["patientkit-buffer-flusher"]

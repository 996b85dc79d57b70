"""Tests of patientkit.core.sinks: `settle`, the one reading of a sink's answer.

Pure: a batch, what the sink returned or raised, and the Settlement that comes out. No
buffer, no thread, no clock (the buffer's own tests show what it does with each).
"""

from __future__ import annotations

import pytest

from patientkit.core.retry import RetryableError
from patientkit.core.sinks import (
    PAYLOAD_TOO_LARGE,
    PayloadTooLarge,
    PermanentError,
    PoisonError,
    Settlement,
    SinkError,
    SinkResult,
    settle,
)
from patientkit.errors import PatientkitError

BATCH = ["a", "b", "c", "d"]


def test_none_and_an_empty_result_accept_everything():
    for answer in (None, SinkResult()):
        settlement = settle(BATCH, answer)
        assert list(settlement.accepted) == [0, 1, 2, 3]
        assert (settlement.rejected, list(settlement.retry), settlement.split) == ([], [], False)
        assert (settlement.invalid, settlement.broken_order, settlement.failure) == ("", "", "")


def test_a_result_settles_each_index_once():
    answer = SinkResult(rejected={2: "bad date", 0: 17}, retry=[3, 3], retry_after=2.5)
    settlement = settle(BATCH, answer)
    assert list(settlement.accepted) == [1]
    assert settlement.rejected == [(0, "17"), (2, "bad date")]  # sorted, reasons as text
    assert list(settlement.retry) == [3]  # duplicates once
    assert settlement.retry_after == 2.5
    assert settlement.failure == "the sink asked to retry 1 of 4 events"
    assert settlement.failure_kind == "SinkResult.retry"


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("ok", "the sink returned str, not SinkResult or None"),
        (SinkResult(retry=[5]), "the sink asked to retry index 5 of 4"),
        (SinkResult(retry=[True]), "the sink asked to retry index True of 4"),
        (SinkResult(rejected={-1: "x"}), "the sink rejected index -1 of 4"),
        (SinkResult(rejected={0: "x"}, retry=[0]), "the sink both rejected and retried index 0"),
    ],
)
def test_an_unreadable_result_settles_nothing(answer, reason):
    assert settle(BATCH, answer) == Settlement(invalid=reason)


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (
            PermanentError("no such clinic"),
            Settlement(rejected=[(i, "no such clinic") for i in range(4)]),
        ),
        (PayloadTooLarge(), Settlement(split=True)),
        (PoisonError("cannot be encoded"), Settlement(split=True)),
    ],
)
def test_what_a_sink_raises_settles_the_whole_batch(raised, expected):
    assert settle(BATCH, raised=raised) == expected


def test_a_single_event_is_dead_lettered_where_a_batch_would_be_split():
    assert settle(["a"], raised=PayloadTooLarge("413")) == Settlement(
        rejected=[(0, PAYLOAD_TOO_LARGE)]
    )
    assert settle(["a"], raised=PoisonError("cannot be encoded")) == Settlement(
        rejected=[(0, "cannot be encoded")]
    )


def test_retryable_and_any_other_exception_retry_the_whole_batch():
    settlement = settle(BATCH, raised=RetryableError("HTTP 429", retry_after=5.0))
    assert list(settlement.retry) == [0, 1, 2, 3] and settlement.retry_after == 5.0
    assert settlement.failure == "RetryableError: HTTP 429"
    assert settlement.failure_kind == "RetryableError"
    other = settle(BATCH, raised=ConnectionResetError("reset by peer"))
    assert list(other.retry) == [0, 1, 2, 3] and other.retry_after is None
    assert other.failure == "ConnectionResetError: reset by peer"


def test_per_key_order_is_checked_only_with_a_key_and_retries():
    batch = [("dev1", 1), ("dev2", 1), ("dev1", 2), ("dev2", 2)]
    answer = SinkResult(retry=[0])  # dev1's first retried, its second accepted: broken
    broken = settle(batch, answer, key=lambda event: event[0])
    assert broken.broken_order == (
        "delivery stopped: the sink accepted event 2 of a batch after asking to retry "
        "event 0 of the same key, which breaks per-key order"
    )
    assert list(broken.accepted) == [1, 2, 3]  # applied as answered
    assert settle(batch, answer).broken_order == ""  # no key: fine
    fine = SinkResult(rejected={2: "x"}, retry=[0])  # a later one rejected: fine
    assert settle(batch, fine, key=lambda event: event[0]).broken_order == ""
    calls: list[object] = []
    settle(batch, SinkResult(rejected={0: "x"}), key=calls.append)
    assert calls == []  # no retries: the key is never asked


def test_the_sink_errors_are_patientkit_errors():
    for error in (PermanentError("x"), PoisonError("x"), PayloadTooLarge()):
        assert isinstance(error, SinkError) and isinstance(error, PatientkitError)
    assert str(PayloadTooLarge()) == PAYLOAD_TOO_LARGE

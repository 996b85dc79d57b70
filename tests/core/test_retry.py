"""Tests of patientkit.core.retry: the one retry policy, error, loop and Retry-After.

Pure and fast: no threads, no sleeping (`sleep` is a list that records the waits).
"""

from __future__ import annotations

import email.utils
import random

import pytest

from patientkit.core.retry import (
    Retries,
    RetryableError,
    RetryPolicy,
    parse_retry_after,
    with_retries,
)
from patientkit.errors import PatientkitError, UsageError
from tests.core.buffer_helpers import MaxRandom, MinRandom


class Script:
    """An attempt that answers from a script: an exception to raise, else a value."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.calls = 0

    def __call__(self):
        self.calls += 1
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer


# --- the policy (moved from test_buffer.py with RetryPolicy) ------------------------------


def test_retry_after_shorter_than_the_jitter_keeps_the_jitter():
    policy = RetryPolicy(initial=2.0)
    assert policy.delay(0, MaxRandom(), retry_after=0.5) == 2.0
    assert policy.delay(0, MinRandom(), retry_after=0.5) == 0.5


def test_backoff_ceiling_grows_exponentially_and_is_capped():
    policy = RetryPolicy(initial=0.1, multiplier=2.0, maximum=30.0)
    ceilings = [policy.ceiling(n) for n in range(11)]
    expected = [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30.0, 30.0]
    assert ceilings == pytest.approx(expected)
    assert policy.ceiling(100_000) == 30.0  # no OverflowError
    assert policy.delay(3, MaxRandom()) == pytest.approx(0.8)
    assert policy.delay(3, MinRandom()) == 0.0


def test_backoff_delays_are_full_jitter_within_bounds():
    policy = RetryPolicy(initial=0.1, multiplier=2.0, maximum=30.0)
    rng = random.Random(1234)
    for attempt in range(12):
        ceiling = policy.ceiling(attempt)
        delays = [policy.delay(attempt, rng) for _ in range(500)]
        assert all(0.0 <= d <= ceiling for d in delays)
        assert min(delays) < 0.05 * ceiling and max(delays) > 0.95 * ceiling


@pytest.mark.parametrize(
    "policy",
    [
        {"initial": 0.0},
        {"initial": 2.0, "maximum": 1.0},
        {"multiplier": 0.5},
        {"retry_after_limit": -1.0},
        {"attempts": 0},
    ],
)
def test_invalid_retry_policy_is_refused(policy):
    with pytest.raises(UsageError):
        RetryPolicy(**policy)


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [
        (None, 0.4),  # the jitter's ceiling
        (0.0, 0.4),  # not above 0: ignored
        (float("nan"), 0.4),  # ignored
        (7.0, 7.0),  # honoured
        (10_000.0, 60.0),  # capped at retry_after_limit
        (float("inf"), 60.0),
    ],
)
def test_retry_after_is_honoured_up_to_the_limit(retry_after, expected):
    policy = RetryPolicy(maximum=5.0, retry_after_limit=60.0)
    assert policy.delay(2, MaxRandom(), retry_after) == pytest.approx(expected)


def test_the_caps_bound_every_wait():
    policy = RetryPolicy(initial=0.1, maximum=5.0, retry_after_limit=60.0)
    rng = random.Random(7)
    assert max(policy.delay(n, rng) for n in range(200)) <= 5.0
    assert max(policy.delay(n, rng, retry_after=1e9) for n in range(200)) == 60.0


# --- Retry-After -------------------------------------------------------------------------

NOW = 1_700_000_000.0  # Unix seconds: 2023-11-14 22:13:20 UTC


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("120", 120.0),
        (" 3 ", 3.0),
        ("0", 0.0),
        ("1.5", 1.5),
        ("-4", 0.0),
        (email.utils.formatdate(NOW + 90, usegmt=True), 90.0),  # IMF-fixdate
        (email.utils.formatdate(NOW - 3600, usegmt=True), 0.0),  # in the past
        ("Tue, 14 Nov 2023 22:15:20 GMT", 120.0),
    ],
)
def test_retry_after_is_read_as_seconds_or_as_an_http_date(header, seconds):
    assert parse_retry_after(header, now=NOW) == pytest.approx(seconds)


@pytest.mark.parametrize("header", [None, "", "soon", "nan", "inf", "Tue, 99 Foo 2023"])
def test_an_unreadable_retry_after_is_none(header):
    assert parse_retry_after(header, now=NOW) is None


def test_an_http_date_is_counted_from_the_wall_clock_by_default():
    header = email.utils.formatdate(usegmt=True)  # now, to the second
    assert 0.0 <= parse_retry_after(header) <= 1.0


# --- the error ---------------------------------------------------------------------------


def test_the_retryable_error_is_a_patientkit_error_with_its_reason():
    error = RetryableError("status 503", retry_after=2.0)
    assert isinstance(error, PatientkitError)
    assert (str(error), error.reason, error.retry_after, error.attempts) == (
        "status 503",
        "status 503",
        2.0,
        None,
    )
    final = RetryableError("status 503", attempts=6)
    assert (str(final), final.reason, final.attempts) == (
        "status 503 (after 6 attempts)",
        "status 503",
        6,
    )


# --- with_retries ------------------------------------------------------------------------


def test_with_retries_returns_the_first_success_and_waits_between_failures():
    attempt = Script(RetryableError("status 503"), RetryableError("status 429", 3.0), "done")
    waits: list[float] = []
    told: list[tuple[int, str, float]] = []
    result = with_retries(
        attempt,
        RetryPolicy(attempts=5, initial=0.1, maximum=5.0),
        lambda n, why, wait: told.append((n, why, wait)),
        waits.append,
        rng=MaxRandom(),
    )
    assert result == "done" and attempt.calls == 3
    assert waits == pytest.approx([0.1, 3.0])
    assert told == [(1, "status 503", pytest.approx(0.1)), (2, "status 429", pytest.approx(3.0))]


def test_with_retries_gives_up_after_the_policys_attempts():
    attempt = Script(*[RetryableError("status 503")] * 3)
    waits: list[float] = []
    with pytest.raises(RetryableError) as caught:
        with_retries(attempt, RetryPolicy(attempts=3), None, waits.append, rng=MaxRandom())
    assert str(caught.value) == "status 503 (after 3 attempts)"
    assert caught.value.attempts == 3 and caught.value.reason == "status 503"
    assert isinstance(caught.value.__cause__, RetryableError)
    assert attempt.calls == 3 and waits == pytest.approx([0.1, 0.2])


def test_with_retries_raises_anything_else_at_once():
    attempt = Script(RetryableError("status 503"), KeyError("bug"))
    waits: list[float] = []
    with pytest.raises(KeyError):
        with_retries(attempt, RetryPolicy(), None, waits.append)
    assert attempt.calls == 2 and len(waits) == 1


def test_transient_names_other_failures_worth_retrying():
    attempt = Script(ConnectionResetError("reset"), ConnectionResetError("reset"), 42)
    told: list[str] = []

    def transient(exc: BaseException) -> str | None:
        return "connection reset" if isinstance(exc, ConnectionError) else None

    result = with_retries(
        attempt,
        RetryPolicy(attempts=3),
        lambda n, why, wait: told.append(why),
        lambda seconds: None,
        transient=transient,
    )
    assert result == 42 and told == ["connection reset", "connection reset"]
    with pytest.raises(RetryableError) as caught:
        with_retries(
            Script(OSError("x"), OSError("x")),
            RetryPolicy(attempts=2),
            sleep=lambda s: None,
            transient=lambda exc: "gone",
        )
    assert str(caught.value) == "gone (after 2 attempts)"
    assert isinstance(caught.value.__cause__, OSError)


def test_a_failure_after_progress_starts_the_count_again():
    """A streaming listing cut off after giving more items is never given up while it
    moves: only failures in a row without progress count towards the attempts."""
    listed = [0]

    def attempt():
        listed[0] += 10  # each attempt lists 10 more items, then is cut off
        if listed[0] < 100:
            raise RetryableError("connection dropped mid-answer")
        return listed[0]

    told: list[int] = []
    result = with_retries(
        attempt,
        RetryPolicy(attempts=2),
        lambda n, why, wait: told.append(n),
        lambda seconds: None,
        progress=lambda: listed[0],
    )
    assert result == 100 and told == [1] * 9

    stuck = Script(*[RetryableError("status 503")] * 3)
    with pytest.raises(RetryableError, match=r"after 2 attempts"):
        with_retries(stuck, RetryPolicy(attempts=2), None, lambda s: None, progress=lambda: 0)
    assert stuck.calls == 2


def test_retries_by_hand_count_waits_and_reset_like_with_retries():
    waits: list[float] = []
    retries = Retries(RetryPolicy(attempts=3), sleep=waits.append, rng=MaxRandom())
    retries.failed(RetryableError("a"))
    retries.failed(RetryableError("b"))
    assert retries.failures == 2
    retries.failed(RetryableError("c"), progressed=True)  # progress: counts as the first
    assert retries.failures == 1 and waits == pytest.approx([0.1, 0.2, 0.1])
    retries.failed(RetryableError("d"))
    with pytest.raises(RetryableError, match=r"^e \(after 3 attempts\)$"):
        retries.failed(RetryableError("e"))
    with pytest.raises(ValueError, match="not retryable"):
        retries.failed(ValueError("not retryable"))

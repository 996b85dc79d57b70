"""One retry vocabulary for every part of patientkit that tries again.

- `RetryPolicy`: how long to wait after the n-th consecutive failure (exponential, full
  jitter, capped; a server's `Retry-After` honoured up to a limit) and, for
  `with_retries`, how many attempts in all. The delivery buffer (`BatchBuffer`) and the
  HTTP clients use the same class with different numbers (`client.http.DEFAULT_RETRY`).
- `RetryableError`: the one error that means "this failed and may succeed if tried
  again" (transport errors, HTTP 408/425/429/5xx, a store that failed for now).
- `with_retries(attempt, policy)`: call `attempt()` until it succeeds, waiting between
  failures; with `progress`, a failed attempt that made progress (a streaming listing
  that gave more items than before) starts the count of failures again.
  `Retries` is the same loop for code that cannot be one callable (a generator).
- `parse_retry_after(value)`: an HTTP `Retry-After` header, delta-seconds or HTTP-date,
  as seconds to wait (RFC 9110 section 10.2.3).

Standard library only (see `patientkit.core`).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from patientkit.errors import PatientkitError, UsageError

__all__ = [
    "OnRetry",
    "Retries",
    "RetryPolicy",
    "RetryableError",
    "parse_retry_after",
    "with_retries",
]

T = TypeVar("T")

OnRetry = Callable[[int, str, float], None]
"""`on_retry(failures, reason, wait)`: called before each wait; failures counts from 1,
`wait` is in seconds."""


class RetryableError(PatientkitError):
    """A failure worth another attempt: a transport error, HTTP 408/425/429/5xx, a store
    that failed for now. `retry_after` (seconds, or None) is the least wait the other side
    asked for. Raised by sinks to `BatchBuffer` (the whole batch is retried), by HTTP
    attempts to `with_retries`, and by `with_retries` itself when the attempts are used up
    (then `attempts` says how many were made, and the message ends with them)."""

    def __init__(
        self,
        message: str = "retryable failure",
        retry_after: float | None = None,
        *,
        attempts: int | None = None,
    ) -> None:
        super().__init__(message if attempts is None else f"{message} (after {attempts} attempts)")
        self.reason = message  # without the attempts suffix
        self.retry_after = retry_after
        self.attempts = attempts


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, and how many attempts `with_retries` makes.

    The n-th consecutive failure (n from 0) waits `uniform(0, min(maximum,
    initial * multiplier**n))` seconds. When the other side gives a `retry_after`, the
    wait is `max(retry_after, jittered)`: never sooner than it asked, still spread by
    jitter, but capped at `retry_after_limit` seconds so one answer cannot stall us for
    hours (a server that still refuses then says so again).

    `attempts` (first one included) bounds `with_retries`; `BatchBuffer` ignores it and
    stops after its own `failure_limit`. Raises UsageError for inconsistent numbers.
    """

    attempts: int = 6
    initial: float = 0.1
    multiplier: float = 2.0
    maximum: float = 30.0
    retry_after_limit: float = 300.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise UsageError("RetryPolicy needs attempts >= 1")
        if not 0 < self.initial <= self.maximum:
            raise UsageError("RetryPolicy needs 0 < initial <= maximum")
        if self.multiplier < 1:
            raise UsageError("RetryPolicy needs multiplier >= 1")
        if self.retry_after_limit < 0:
            raise UsageError("RetryPolicy needs retry_after_limit >= 0")

    def ceiling(self, attempt: int) -> float:
        """The largest delay in seconds for the `attempt`-th consecutive failure (from 0)."""
        try:
            return min(self.maximum, self.initial * self.multiplier**attempt)
        except OverflowError:
            return self.maximum

    def delay(
        self, attempt: int, rng: random.Random | None = None, retry_after: float | None = None
    ) -> float:
        """Seconds to wait after the `attempt`-th consecutive failure (from 0); `rng`
        draws the jitter (the `random` module's when None). A `retry_after` that is not
        above 0 (NaN included) is ignored."""
        jittered = (rng or _RANDOM).uniform(0.0, self.ceiling(attempt))
        if retry_after is None or not retry_after > 0:  # also rejects NaN
            return jittered
        return min(max(retry_after, jittered), self.retry_after_limit)


_RANDOM = random.Random()


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """A `Retry-After` header as seconds to wait from `now` (Unix seconds, default the
    wall clock): delta-seconds (`120`; a decimal is taken too) or an HTTP-date
    (`Wed, 21 Oct 2015 07:28:00 GMT`; a date in the past is 0). None when absent or not
    readable as either (the caller's own backoff applies then)."""
    if value is None:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    import email.utils  # only here: it pulls in socket and datetime

    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 850 / asctime forms: HTTP-dates are always GMT
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


class Retries:
    """The counting and waiting of `with_retries`, for a loop written by hand (a
    generator that yields between attempts cannot be one callable).

    Call `failed(exc, progressed)` from the `except` of each failed attempt: it re-raises
    `exc` when it is not retryable, raises `RetryableError(attempts=n)` from it when the
    policy's attempts are used up, and otherwise calls `on_retry` and sleeps.
    `transient(exc)` names other failures worth retrying (a transport error of a library
    that core cannot import): it returns a short reason, or None for "not retryable".
    """

    def __init__(
        self,
        policy: RetryPolicy,
        on_retry: OnRetry | None = None,
        sleep: Callable[[float], None] = time.sleep,
        *,
        transient: Callable[[BaseException], str | None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.policy = policy
        self.on_retry = on_retry
        self.sleep = sleep
        self.transient = transient
        self.rng = rng
        self.failures = 0  # consecutive failures since the last progress

    def reason(self, exc: BaseException) -> str | None:
        """Why `exc` is worth another attempt, or None if it is not."""
        if isinstance(exc, RetryableError):
            return exc.reason
        return self.transient(exc) if self.transient is not None else None

    def failed(self, exc: BaseException, progressed: bool = False) -> None:
        """Count the failure `exc` (a progress starts the count again at 1), then raise
        or wait as the class docstring says."""
        reason = self.reason(exc)
        if reason is None:
            raise exc
        self.failures = 1 if progressed else self.failures + 1
        if self.failures >= self.policy.attempts:
            raise RetryableError(reason, attempts=self.failures) from exc
        wait = self.policy.delay(self.failures - 1, self.rng, getattr(exc, "retry_after", None))
        if self.on_retry is not None:
            self.on_retry(self.failures, reason, wait)
        self.sleep(wait)


def with_retries(
    attempt: Callable[[], T],
    policy: RetryPolicy,
    on_retry: OnRetry | None = None,
    sleep: Callable[[float], None] = time.sleep,
    *,
    transient: Callable[[BaseException], str | None] | None = None,
    progress: Callable[[], int] | None = None,
    rng: random.Random | None = None,
) -> T:
    """Run `attempt()` until it returns; on `RetryableError` (or what `transient` names,
    see `Retries`) wait as `policy` says and try again, up to `policy.attempts` attempts.

    `progress()`, when given, counts what the attempts achieved so far (items listed):
    a failed attempt that raised it starts the failure count again, so a long listing
    cut off now and then is never given up while it moves. Returns what `attempt`
    returned; raises `RetryableError(attempts=n)` from the last failure when the attempts
    are used up, and any other exception of `attempt` at once.
    """
    retries = Retries(policy, on_retry, sleep, transient=transient, rng=rng)
    while True:
        before = progress() if progress is not None else 0
        try:
            return attempt()
        except Exception as exc:
            retries.failed(exc, progressed=progress is not None and progress() > before)

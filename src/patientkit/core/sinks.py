"""The sink contract: what a `BatchBuffer` sink answers, and how that answer is read.

A sink is `sink(batch: list[E]) -> SinkResult | None`. `None`, or a `SinkResult` that
lists nothing, means every event was accepted. `SinkResult.rejected` maps an index in the
batch to a permanent reason; `SinkResult.retry` lists indices to send again;
`retry_after` asks for a minimum wait in seconds. Raise `RetryableError`
(`patientkit.core.retry`: transport errors, 408/425/429/5xx) to retry the whole batch,
`PermanentError` to dead-letter all of it, `PayloadTooLarge` to have it split,
`PoisonError` when some event of it can never be taken and the sink cannot say which
(the buffer bisects it, dead-letters the poison events alone and delivers the rest, with
no backoff and no step towards `failure_limit`), `SinkClosed` when it takes nothing any
more (it was stopped or shut down: the buffer stops at once, nothing of the batch
settled, and hands every undelivered event back; never retried). Any other exception is a retryable
failure; it never kills the flusher.

With a `key`, the sink must keep per-key order inside a batch: once it asks to retry an
event, it must not accept a later event of the same key in that batch (rejecting one is
fine). `settle` finds a sink that breaks this, and the buffer stops with that reason.

`settle(batch, result, raised=..., key=...)` is the one reading of an answer: a pure
function from (the batch, what the sink returned or raised) to a `Settlement` that says
what becomes of each event. It holds no lock and starts no thread, so every answer a sink
can give is tested without a buffer (tests/core/test_sinks.py).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from patientkit.core.retry import RetryableError
from patientkit.errors import PatientkitError

__all__ = [
    "PAYLOAD_TOO_LARGE",
    "PayloadTooLarge",
    "PermanentError",
    "PoisonError",
    "RetryableError",
    "Settlement",
    "SinkClosed",
    "SinkError",
    "SinkResult",
    "settle",
]

E = TypeVar("E")

PAYLOAD_TOO_LARGE = "payload too large"


class SinkError(PatientkitError):
    """Base of the exceptions a sink raises to say how a whole batch went (besides
    `RetryableError`, which the HTTP clients raise too)."""


class PermanentError(SinkError):
    """The whole batch is rejected for good; every event is dead-lettered with `reason`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PoisonError(SinkError):
    """Some event of the batch can never be taken, and the sink cannot say which.

    Raise it when the cause lies in the events themselves (one cannot be encoded, the
    store or server refuses it for good) and would come back however often the batch is
    sent. The buffer bisects the batch, settling each half before the next, until the
    events that still raise it are alone; each is dead-lettered with `reason`, the rest
    are delivered. It is not a failed delivery: no backoff, no step towards
    `failure_limit`. When the sink knows the index, `SinkResult(rejected=...)` says the
    same in one call.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SinkClosed(SinkError):
    """The sink takes nothing any more (stopped after Ctrl-C, its request pool shut
    down): delivery ends now; the batch is not settled but handed back (`reason` says
    why). Retrying could only fail again."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PayloadTooLarge(SinkError):
    """The batch is too large for the server: the buffer splits it in halves (a single
    event that is still too large is dead-lettered as `PAYLOAD_TOO_LARGE`)."""

    def __init__(self, message: str = PAYLOAD_TOO_LARGE) -> None:
        super().__init__(message)


@dataclass(frozen=True)
class SinkResult:
    """A sink's answer for one batch; indices refer to the list the sink received."""

    rejected: Mapping[int, str] = field(default_factory=dict)
    retry: Sequence[int] = ()
    retry_after: float | None = None


@dataclass
class Settlement:
    """What one attempt does to each event of its batch (indices into the batch).

    `accepted` are delivered; `rejected` are dead-lettered with their reason; `retry`
    are sent again after a backoff (at least `retry_after` seconds, when given), and
    `failure` / `failure_kind` say why for the log and the stop reason. `split` asks for
    the batch to be sent as two halves. `invalid` says the answer could not be read
    (nothing is settled, the buffer stops); `broken_order` says the sink broke per-key
    order (the answer is applied as given, then the buffer stops). `closed` says the sink
    takes nothing more (`SinkClosed`): nothing is settled and the buffer stops.
    """

    accepted: Sequence[int] = ()
    rejected: list[tuple[int, str]] = field(default_factory=list)
    retry: Sequence[int] = ()
    retry_after: float | None = None
    failure: str = ""
    failure_kind: str = ""
    split: bool = False
    invalid: str = ""
    broken_order: str = ""
    closed: str = ""


def settle(
    batch: Sequence[E],
    result: object = None,
    *,
    raised: Exception | None = None,
    key: Callable[[E], Hashable] | None = None,
) -> Settlement:
    """Read the sink's answer to `batch`: what it returned (`result`) or, when it raised,
    the exception (`raised`). With `key`, check per-key order (`key` is called only on
    events of an answer that asks for retries; an exception of it propagates). Pure:
    no I/O, no lock, no clock. Implements the contract in this module's docstring."""
    size = len(batch)
    if raised is not None:
        return _settle_raised(size, raised)
    if result is None:
        return Settlement(accepted=range(size))
    if not isinstance(result, SinkResult):
        return Settlement(
            invalid=f"the sink returned {type(result).__name__}, not SinkResult or None"
        )
    rejected: dict[int, str] = {}
    for index, reason in result.rejected.items():
        if not _is_index(index, size):
            return Settlement(invalid=f"the sink rejected index {index!r} of {size}")
        rejected[index] = str(reason)
    retry = sorted(set(result.retry))
    for index in retry:
        if not _is_index(index, size):
            return Settlement(invalid=f"the sink asked to retry index {index!r} of {size}")
        if index in rejected:
            return Settlement(invalid=f"the sink both rejected and retried index {index}")
    retry_set = set(retry)
    accepted = [i for i in range(size) if i not in rejected and i not in retry_set]
    settlement = Settlement(
        accepted=accepted,
        rejected=sorted(rejected.items()),
        retry=retry,
        retry_after=result.retry_after,
        failure=f"the sink asked to retry {len(retry)} of {size} events" if retry else "",
        failure_kind="SinkResult.retry",
    )
    if key is not None and retry:
        settlement.broken_order = _order_violation(batch, key, retry, accepted)
    return settlement


def _settle_raised(size: int, exc: Exception) -> Settlement:
    if isinstance(exc, PayloadTooLarge):
        if size == 1:
            return Settlement(rejected=[(0, PAYLOAD_TOO_LARGE)])
        return Settlement(split=True)
    if isinstance(exc, SinkClosed):
        return Settlement(closed=exc.reason)
    if isinstance(exc, PermanentError):
        return Settlement(rejected=[(i, exc.reason) for i in range(size)])
    if isinstance(exc, PoisonError):
        if size == 1:
            return Settlement(rejected=[(0, str(exc.reason))])
        return Settlement(split=True)  # bisect until the poison is alone
    return Settlement(
        retry=range(size),
        retry_after=exc.retry_after if isinstance(exc, RetryableError) else None,
        failure=f"{type(exc).__name__}: {exc}",
        failure_kind=type(exc).__name__,
    )


def _is_index(value: object, size: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < size


def _order_violation(
    batch: Sequence[E], key: Callable[[E], Hashable], retry: list[int], accepted: list[int]
) -> str:
    first_retry: dict[Hashable, int] = {}
    for index in retry:
        first_retry.setdefault(key(batch[index]), index)
    for index in accepted:
        earlier = first_retry.get(key(batch[index]))
        if earlier is not None and earlier < index:
            return (
                f"delivery stopped: the sink accepted event {index} of a batch after asking "
                f"to retry event {earlier} of the same key, which breaks per-key order"
            )
    return ""

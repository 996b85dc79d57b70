"""What a delivery buffer reports and raises: `FlushResult`, `BufferStats`, `BufferFull`,
`BufferStopped`.

Plain values and errors, without threads, so that callers (and `patientkit.__init__`)
can name them without the buffer's machinery. `BatchBuffer` (`patientkit.core.buffer`)
makes them; docs/buffer.md, "Interface", says when.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from patientkit.errors import DeliveryError

__all__ = ["BufferFull", "BufferStats", "BufferStopped", "FlushResult"]


class BufferFull(DeliveryError):
    """`track` waited `timeout` seconds for room and found none; the event was not tracked."""

    def __init__(self, message: str, *, accepted: int = 0) -> None:
        super().__init__(message)
        self.accepted = accepted  # for track_many: how many of its events were tracked


class BufferStopped(DeliveryError):
    """The buffer stopped (failure limit, broken sink, internal error) or was closed."""

    def __init__(self, message: str, *, reason: str, undelivered: int, accepted: int = 0) -> None:
        super().__init__(message)
        self.reason = reason
        self.undelivered = undelivered
        self.accepted = accepted  # for track_many: how many of its events were tracked

    @classmethod
    def refusal(
        cls, stop_reason: str | None, cause: BaseException | None, undelivered: int, accepted: int
    ) -> BufferStopped:
        """The error a call on a closed (`stop_reason` None) or stopped buffer raises."""
        if stop_reason is None:
            return cls(
                "the buffer is closed and takes no more events",
                reason="closed",
                undelivered=undelivered,
                accepted=accepted,
            )
        error = cls(
            f"{stop_reason}; drain_pending() returns the {undelivered} undelivered events",
            reason=stop_reason,
            undelivered=undelivered,
            accepted=accepted,
        )
        error.__cause__ = cause
        return error


@dataclass(frozen=True)
class FlushResult:
    """What happened while `flush()` waited.

    `delivered`, `dead_lettered` and `retried` count what the buffer did during the call
    (events of other threads included); `pending` is what is still unsettled at return;
    `complete` says whether every event tracked before the call was settled.
    """

    delivered: int
    dead_lettered: int
    retried: int
    pending: int
    complete: bool


@dataclass(frozen=True)
class BufferStats:
    """Counters since the buffer was made.

    recovered + tracked == delivered + dead_lettered + pending + in_flight + handed_back.
    `retried` counts attempts that re-sent events; `batches` counts sink calls.
    """

    tracked: int
    recovered: int
    delivered: int
    retried: int
    dead_lettered: int
    pending: int
    in_flight: int
    handed_back: int
    consecutive_failures: int
    batches: int

    def as_dict(self) -> dict[str, int]:
        """The counters by name (`tracked`, ...), e.g. for a JSON summary."""
        return asdict(self)

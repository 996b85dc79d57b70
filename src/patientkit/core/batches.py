"""The buffer's unit of work: a batch taken from the queue and not settled yet.

A `Unit` holds events with their sequence numbers (seqs: tracking order, as the spool
numbers them). The flusher keeps a short queue of units and always works on the first;
what the sink answers replaces it (docs/buffer.md, "Design"):

- `Unit.part(indices)`: the events to send again, after a backoff;
- `Unit.halves()`: the two halves of a batch the sink could not take whole
  (`PayloadTooLarge`, `PoisonError`), bisected down to single events, first half first;
- `split_unencodable`: the events the spool could not encode, cut out to be dead-lettered
  alone, without a sink call;
- `recovered_units`: the unsettled events a spool held at start, as units of `max_batch`.

Pure values and functions, no locks: `BatchBuffer` calls them with its lock held.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Generic, TypeVar

from patientkit.core.sinks import Settlement

__all__ = ["Unit", "recovered_units", "split_unencodable"]

E = TypeVar("E")


class Unit(Generic[E]):
    """Events taken from the deque and not settled yet, with their sequence numbers."""

    __slots__ = ("attempted", "events", "seqs")

    def __init__(self, seqs: Sequence[int], events: list[E], attempted: bool = False) -> None:
        self.seqs = seqs
        self.events = events
        self.attempted = attempted  # True for a part of a unit the sink already saw

    def __len__(self) -> int:
        return len(self.events)

    def part(self, indices: Iterable[int]) -> Unit[E]:
        """The events at `indices` (positions in this unit), as an attempted unit."""
        chosen = list(indices)
        return Unit(
            [self.seqs[i] for i in chosen], [self.events[i] for i in chosen], attempted=True
        )

    def halves(self) -> tuple[Unit[E], Unit[E]]:
        """The first and the second half (the first one shorter for an odd length)."""
        half = len(self) // 2
        return self.part(range(half)), self.part(range(half, len(self)))

    def pairs(self) -> Iterator[tuple[int, E]]:
        """(seq, event) of each event, in order."""
        return zip(self.seqs, self.events, strict=True)


def split_unencodable(
    unit: Unit[E], unencodable: dict[int, str]
) -> tuple[list[Unit[E]], Settlement] | None:
    """Cut the events the spool could not encode (their seq a key of `unencodable`, which
    maps seq -> why) out of `unit`; None when it has none.

    Returns the units that replace `unit`, the poisoned one first and the rest (if any)
    after it, and the settlement that dead-letters every poisoned event with its reason.
    The seqs found are removed from `unencodable`.
    """
    bad = [i for i, seq in enumerate(unit.seqs) if seq in unencodable]
    if not bad:
        return None
    reasons = [unencodable.pop(unit.seqs[i]) for i in bad]
    bad_set = set(bad)
    poisoned = Unit([unit.seqs[i] for i in bad], [unit.events[i] for i in bad])
    good = [i for i in range(len(unit)) if i not in bad_set]
    units = [poisoned]
    if good:
        units.append(Unit([unit.seqs[i] for i in good], [unit.events[i] for i in good]))
    return units, Settlement(rejected=list(enumerate(reasons)))


def recovered_units(items: Sequence[tuple[int, E]], max_batch: int) -> list[Unit[E]]:
    """The (seq, event) pairs a spool recovered, in order, as units of `max_batch`."""
    return [
        Unit([seq for seq, _ in part], [event for _, event in part])
        for part in (items[start : start + max_batch] for start in range(0, len(items), max_batch))
    ]

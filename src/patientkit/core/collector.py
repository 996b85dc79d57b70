"""The garbage collector during a bulk job: rare and cheap collections.

A bulk job (`records submit`) makes a container for every record it reads (an `Item`,
lists of them), none of them in a reference cycle, and frees each when it is stored. With
the collector's default thresholds (a collection every 700 new containers), reading
100,000 records runs over a hundred young collections and several full ones, each of
which walks every object the interpreter holds (the modules, classes and functions loaded
at start-up): timed alone, reading 100,000 records took 0.33-0.35 s with the default
thresholds and 0.23-0.26 s without collections (docs/records.md, "Decisions").
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

BULK_THRESHOLD = 100_000  # new containers between young collections, during a bulk job


_lock = threading.Lock()
_jobs: list[tuple[int, int, int]] = []  # the thresholds before the first job, per job running


@contextmanager
def few_collections(threshold: int = BULK_THRESHOLD) -> Iterator[None]:
    """Around a bulk job: the objects alive now are frozen (`gc.freeze`: full collections
    no longer walk them) and a young collection runs every `threshold` new containers
    instead of every 700. The collector stays on, so garbage in cycles is still freed and
    memory stays bounded. When the last job running in the process ends (jobs may overlap,
    in threads), the thresholds are restored and the frozen objects unfrozen (into the
    oldest generation), whatever happened inside."""
    with _lock:
        before = _jobs[0] if _jobs else gc.get_threshold()
        _jobs.append(before)
        gc.freeze()
        gc.set_threshold(max(threshold, before[0]), *before[1:])
    try:
        yield
    finally:
        with _lock:
            _jobs.pop()
            if not _jobs:
                gc.set_threshold(*before)
                gc.unfreeze()

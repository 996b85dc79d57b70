"""Child process of the SIGKILL spool test (run as a script, never collected by pytest).

argv: SPOOL_PATH LOG_PATH. Its sink appends "begin <ids>" to LOG_PATH before each batch
and "end" after it. It delivers events 0..49, tracks 50..79, syncs the spool and says
"synced 80"; the first batch with an id of 50 or more hangs in the sink ("inflight");
it tracks 80..89, says "tracked 90" and waits to be killed.
"""

import sys
import threading
from pathlib import Path

from patientkit.core.buffer import BatchBuffer

_say_lock = threading.Lock()


def say(line: str) -> None:
    with _say_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def main() -> None:
    spool, log_path = sys.argv[1], Path(sys.argv[2])
    log = log_path.open("a", buffering=1)
    never = threading.Event()

    def sink(batch: list[int]) -> None:
        log.write("begin " + " ".join(map(str, batch)) + "\n")
        log.flush()
        if max(batch) >= 50:
            say("inflight")
            never.wait()  # the parent kills us while this batch is in flight
        log.write("end\n")
        log.flush()

    # Long intervals: the spool is synced only by the flusher's own bookkeeping and the
    # explicit sync() below, so the test knows exactly what must survive.
    buf = BatchBuffer(
        sink, max_batch=10, flush_interval=3600, spool=spool, spool_sync_interval=3600
    )
    for i in range(50):
        buf.track(i)
    buf.flush()
    for i in range(50, 80):
        buf.track(i)
    buf.sync()
    say("synced 80")
    for i in range(80, 90):
        buf.track(i)
    say("tracked 90")
    never.wait()


if __name__ == "__main__":
    main()
